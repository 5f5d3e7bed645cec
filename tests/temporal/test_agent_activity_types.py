"""The Temporal agent interceptor parses an activity type once, not once per hook of each execution."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import chio_temporal._agent as temporal_agent
import workflows
from chio_kernel import LocalChioClient
from chio_temporal_kit import make_worker, outcome, plan, running, scope, start_plan, tool


def test_an_activity_type_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = temporal_agent.classify_activity

    def counting(activity_type: str, agent_name: str) -> Any:
        parsed.append(activity_type)
        return real(activity_type, agent_name)

    monkeypatch.setattr(temporal_agent, "classify_activity", counting)
    interceptor = temporal_agent.ChioAgentActivityInterceptor(
        LocalChioClient(tmp_path), agent_name="support", capability_id="cap-support"
    )
    info = dataclasses.replace(ActivityEnvironment().info, activity_type="agent__support__model_request")
    # governs, resolve_grant, resolve_capability_id, map_activity, on_allowed/on_denied each ask
    answers = [interceptor.agent_activity(info) for _ in range(5)]
    assert parsed == ["agent__support__model_request"]
    assert answers[0] is not None and answers[0].kind == "model" and all(a is answers[0] for a in answers)



WORKSPACE_CALLS: list[str] = []


@activity.defn(name="agent__ops__capability__workspace__call")
async def workspace_call(path: str) -> str:
    """Stands in for pydantic-ai's workspace capability operation of an agent named ``ops``."""
    WORKSPACE_CALLS.append(path)
    return f"wrote {path}"


@pytest.mark.temporal
async def test_unknown_agent_operation_is_governed_not_let_through(client: Client, chio, uid) -> None:
    from chio_temporal._agent import ChioAgentActivityInterceptor

    tq = uid("tq")
    token = await chio.create_capability(
        subject="agent:ops", scope=scope(tool("model", "*")), ttl_seconds=600, capability_id=uid("cap-ops")
    )
    ic = ChioAgentActivityInterceptor(chio, agent_name="ops", capability_id=token.id)
    WORKSPACE_CALLS.clear()
    worker = make_worker(client, tq, [ic], activities=[*workflows.ALL_ACTIVITIES, workspace_call])
    async with running(worker):
        wid = uid("ops-denied")
        err = await outcome(await start_plan(client, tq, wid, plan(("agent__ops__capability__workspace__call", ["/etc/x"]))))
        assert isinstance(err, ApplicationError) and err.type == "ChioCapabilityDenied"
        assert (err.details[0]["tool_server"], err.details[0]["tool_name"]) == ("ops", "capability__workspace__call")
        assert WORKSPACE_CALLS == []

        granted = await chio.create_capability(
            subject="agent:ops", scope=scope(tool("ops", "capability__workspace__call")), ttl_seconds=600
        )
        ic.capability_id = granted.id
        wid = uid("ops-allowed")
        result = await outcome(await start_plan(client, tq, wid, plan(("agent__ops__capability__workspace__call", ["/tmp/y"]))))
        assert result == ["wrote /tmp/y"] and WORKSPACE_CALLS == ["/tmp/y"]
    [step] = ic.get_workflow_receipt(wid).steps
    assert step.allowed and (step.tool_server, step.tool_name) == ("ops", "capability__workspace__call")
