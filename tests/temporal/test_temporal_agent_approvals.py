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
