"""ChioTemporalAgent + human approval (issue 10) on a real dev server: a pending tool call makes the
workflow wait; the update chio_approval wakes it; the tool activity re-runs under the approval and
runs only on the kernel's allow. The agents and workflows are test_agent.py's."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from chio_sdk.models import Constraint, Operation, ToolGrant
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from temporalio.worker import Replayer

    import test_agent_app as app
    from chio_temporal._approvals import APPROVAL_QUERY, APPROVAL_UPDATE
    from test_agent import DOCS_LIST, MODEL, WORKFLOWS, SupportWorkflow, chio, client, grant, issue, wid, worker

pytestmark = pytest.mark.temporal
__all__ = ["chio", "client"]  # the fixtures, used by name

REFUND_NEEDS_A_PERSON = ToolGrant(
    server_id="support", tool_name="refund", operations=[Operation.INVOKE],
    constraints=[Constraint(type="require_approval_above", value=0)],
)


async def _waiting(handle: Any) -> list[dict[str, Any]]:
    for _ in range(300):
        if (pending := await handle.query(APPROVAL_QUERY)):
            return list(pending)
        await asyncio.sleep(0.1)
    history = await handle.fetch_history()
    raise AssertionError([e.event_type for e in history.events][-8:], str(history.events[-1])[:1500])


async def test_agent_tool_waits_for_the_kernel_approval_then_runs_once(client: Any, chio: Any) -> None:
    await issue(chio, MODEL, grant("support", "lookup"), REFUND_NEEDS_A_PERSON, DOCS_LIST)
    before = app.CALLS.get("refund", 0)
    async with worker(client) as tq:
        handle = await client.start_workflow(SupportWorkflow.run, "refund:Z", id=wid("agent-approval"), task_queue=tq)
        (waiting,) = await _waiting(handle)
        assert app.CALLS.get("refund", 0) == before  # the tool did not run; nothing charged
        # a forged wake-up: re-evaluated, still pending, waits again; the tool does not run
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        (again,) = await _waiting(handle)
        assert again["approval_id"] == waiting["approval_id"] and app.CALLS.get("refund", 0) == before
        await chio.respond_approval(waiting["approval_id"], "approved", "refund ok")
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        out = await handle.result()
    assert out["output"] == "refunded Z"
    assert app.CALLS["refund"] - before == 1
    refund_receipt = [r for r in [await chio.get_receipt(i) for i in out["receipt_ids"]] if r.tool_name == "refund"]
    # the kernel's approval_id, and the run context (docs/temporal.md): this workflow
    assert [(r.metadata["approval_id"], r.metadata["workflow_id"]) for r in refund_receipt] == [
        (waiting["approval_id"], handle.id)
    ]
    replayer = Replayer(workflows=WORKFLOWS, plugins=[PydanticAIPlugin(), *(g.plugin for g in app.ALL_GOVERNED)])
    result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
    assert result.replay_failure is None, repr(result.replay_failure)


async def test_agent_tool_denied_in_the_kernel_tells_the_model(client: Any, chio: Any) -> None:
    await issue(chio, MODEL, grant("support", "lookup"), REFUND_NEEDS_A_PERSON, DOCS_LIST)
    before = app.CALLS.get("refund", 0)
    async with worker(client) as tq:
        handle = await client.start_workflow(SupportWorkflow.run, "refund:Y", id=wid("agent-deny"), task_queue=tq)
        (waiting,) = await _waiting(handle)
        await chio.respond_approval(waiting["approval_id"], "denied", "not eligible")
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        out = await handle.result()
    assert app.CALLS.get("refund", 0) == before
    assert "approval-denied" in out["output"]


async def _wake_registered(handle: Any) -> None:
    """Until the run's approval_wake activity has completed (the kernel knows how to wake it)."""
    from temporalio.api.enums.v1 import EventType

    for _ in range(300):
        history = await handle.fetch_history()
        scheduled = {
            e.event_id for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name.endswith("__capability__chio__approval_wake")
        }
        if any(
            e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
            for e in history.events
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the approval_wake activity never completed")


async def test_an_approval_answered_with_the_cli_alone_resumes_the_waiting_run_which_calls_the_tool_once(
    client: Any, chio: Any, chio_home: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    """`chio-durable approvals approve ID` in another process: the kernel calls the temporal waker
    (entry point chio.approval_wakers), which resolves the run's external-event wait. The run waits
    600 s between its own re-checks, so resuming within a minute is the wake's doing."""
    import os
    import subprocess
    import sys
    from importlib.metadata import entry_points
    from pathlib import Path

    from approval_wakers_site import approval_wakers_site

    monkeypatch.setattr(app.governed_support.governance, "approval_poll_seconds", 600.0)
    await issue(chio, MODEL, grant("support", "lookup"), REFUND_NEEDS_A_PERSON, DOCS_LIST)
    before = app.CALLS.get("refund", 0)
    async with worker(client) as tq:
        handle = await client.start_workflow(SupportWorkflow.run, "refund:W", id=wid("cli-wake"), task_queue=tq)
        (waiting,) = await _waiting(handle)
        await _wake_registered(handle)
        assert app.CALLS.get("refund", 0) == before

        paths = [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        if not any(ep.name == "temporal" for ep in entry_points(group="chio.approval_wakers")):
            paths.insert(1, str(approval_wakers_site(tmp_path / "site")))
        env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE"}}
        env.update(PYTHONPATH=os.pathsep.join(p for p in paths if p), COLUMNS="250")
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chio_kernel.cli", "approvals", "approve", waiting["approval_id"],
             "--reason", "refund ok", "--data-dir", str(chio_home)],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"woke Temporal workflow {handle.id}" in done.stdout, done.stdout + done.stderr
        out = await asyncio.wait_for(handle.result(), 60)
    assert out["output"] == "refunded W"
    assert app.CALLS["refund"] - before == 1  # exactly once, under the approval
    (refund,) = [r for r in [await chio.get_receipt(i) for i in out["receipt_ids"]] if r.tool_name == "refund"]
    assert refund.decision.is_allowed and refund.metadata["approval_id"] == waiting["approval_id"]
