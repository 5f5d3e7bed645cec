"""Human approval on Temporal (issue 10): a pending verdict makes the WORKFLOW wait, on a real dev server.

The activity fails with ChioApprovalPending (nothing runs, nothing is charged), the workflow waits for
the update ``chio_approval`` (validated: the id must be pending for this run), re-runs the activity
with the approval id, and the kernel's answer alone decides.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.worker import Replayer, Worker

import approval_workflows as aw
from chio_kernel import ApprovalConflictError, Kernel, LocalChioClient
from chio_temporal import ChioActivityInterceptor, WorkflowGrant
from chio_temporal._approvals import APPROVAL_QUERY, APPROVAL_UPDATE
from chio_temporal_kit import SANDBOX, outcome

pytestmark = pytest.mark.temporal


@pytest.fixture(autouse=True)
def _reset_refunds() -> None:
    aw.REFUNDS.clear()


def _scope() -> ChioScope:
    # threshold 0: every refund needs a person (a call that declares no cost counts as 0 units)
    return ChioScope(grants=[ToolGrant(
        server_id="shop", tool_name="refund", operations=[Operation.INVOKE],
        constraints=[Constraint(type="require_approval_above", value=0)],
    )])


async def _setup(chio: LocalChioClient, wid: str) -> tuple[ChioActivityInterceptor, Any]:
    token = await chio.create_capability(subject="agent:refunds", scope=_scope(), ttl_seconds=600)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="shop")
    ic.register_workflow_grant(WorkflowGrant(workflow_id=wid, token=token))
    return ic, token


def _worker(client: Client, tq: str, ic: ChioActivityInterceptor) -> Worker:
    return Worker(client, task_queue=tq, workflows=[aw.RefundWorkflow], activities=[aw.refund], interceptors=[ic],
                  workflow_runner=SANDBOX)


async def _pending(handle: WorkflowHandle, *, scheduled: int = 1) -> list[dict[str, Any]]:
    """Wait (no deadline of ours: pytest's timeout bounds it) until the run waits on an approval after
    ``scheduled`` activity executions."""
    while True:
        history = await handle.fetch_history()
        count = sum(1 for e in history.events if e.HasField("activity_task_scheduled_event_attributes"))
        pending = await handle.query(APPROVAL_QUERY)
        if count >= scheduled and pending:
            return list(pending)
        await asyncio.sleep(0.1)


async def _replays(handle: WorkflowHandle, ic: ChioActivityInterceptor) -> None:
    replayer = Replayer(workflows=[aw.RefundWorkflow], workflow_runner=SANDBOX, interceptors=[ic])
    result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
    assert result.replay_failure is None, repr(result.replay_failure)


async def test_pending_waits_a_forged_update_runs_nothing_approve_runs_once(
    client: Client, chio: LocalChioClient, uid: Any
) -> None:
    wid, tq = uid("refund"), uid("tq")
    ic, token = await _setup(chio, wid)
    async with _worker(client, tq, ic):
        handle = await client.start_workflow(aw.RefundWorkflow.run, args=["o-1", 120], id=wid, task_queue=tq)
        (waiting,) = await _pending(handle)
        approval_id = waiting["approval_id"]
        assert waiting["activity_type"] == "refund" and waiting["receipt_id"]
        # the pending receipt is signed, in the chain, and nothing ran or was charged
        receipts = await chio.list_receipts(token.id)
        assert [r.decision.verdict for r in receipts] == ["pending_approval"]
        pending_receipt = receipts[0]
        assert pending_receipt.id == waiting["receipt_id"] and pending_receipt.decision.guard == "approval"
        assert pending_receipt.metadata["pending_approval"]["approval_id"] == approval_id
        assert await chio.verify_receipt(pending_receipt)
        assert chio.kernel.verify_chain().ok
        assert aw.REFUNDS == []

        # the validator refuses an id that is not pending for this run
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(APPROVAL_UPDATE, "apr-not-this-one")

        # a forged update (no kernel resolution): the activity is re-evaluated, still pending, waits again
        await handle.execute_update(APPROVAL_UPDATE, approval_id)
        (again,) = await _pending(handle, scheduled=2)
        assert again["approval_id"] == approval_id
        assert aw.REFUNDS == []
        assert [r.decision.verdict for r in await chio.list_receipts(token.id)] == ["pending_approval"]

        # a person approves in the kernel, then wakes the workflow: the refund runs exactly once
        resolution = await chio.respond_approval(approval_id, "approved", "customer is right")
        assert resolution.metadata["approval_resolution"]["pending_receipt_id"] == pending_receipt.id
        with pytest.raises(ApprovalConflictError):  # a second answer (HTTP 409 on the sidecar)
            await chio.respond_approval(approval_id, "denied")
        await handle.execute_update(APPROVAL_UPDATE, approval_id)
        assert await handle.result() == "refunded 120 on o-1"
    assert len(aw.REFUNDS) == 1
    order, amount, receipt_id, used = aw.REFUNDS[0]
    assert (order, amount, used) == ("o-1", 120, approval_id)
    verdicts = [(r.id, r.decision.verdict) for r in await chio.list_receipts(token.id)]
    assert [v for _, v in verdicts] == ["pending_approval", "approval_resolution", "allow"]  # allowed (charged) once
    assert verdicts[-1][0] == receipt_id
    assert chio.kernel.verify_chain().ok
    await _replays(handle, ic)


async def test_deny_in_the_kernel_fails_the_activity_without_running_it(
    client: Client, chio: LocalChioClient, uid: Any
) -> None:
    wid, tq = uid("refund-deny"), uid("tq")
    ic, _ = await _setup(chio, wid)
    async with _worker(client, tq, ic):
        handle = await client.start_workflow(aw.RefundWorkflow.run, args=["o-2", 5], id=wid, task_queue=tq)
        (waiting,) = await _pending(handle)
        await chio.respond_approval(waiting["approval_id"], "denied", "not eligible")
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        error = await outcome(handle)
    assert error.type == "ChioCapabilityDenied"
    assert error.details[0]["guard"] == "approval-denied"
    assert aw.REFUNDS == []
    await _replays(handle, ic)


async def test_revoke_during_the_wait_is_a_deny(client: Client, chio: LocalChioClient, uid: Any) -> None:
    wid, tq = uid("refund-revoke"), uid("tq")
    ic, token = await _setup(chio, wid)
    async with _worker(client, tq, ic):
        handle = await client.start_workflow(aw.RefundWorkflow.run, args=["o-3", 5], id=wid, task_queue=tq)
        (waiting,) = await _pending(handle)
        await chio.revoke_capability(token.id)
        with pytest.raises(ApprovalConflictError):  # nobody can approve it any more
            await chio.respond_approval(waiting["approval_id"], "approved")
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        error = await outcome(handle)
    assert error.type == "ChioCapabilityDenied"
    assert error.details[0]["guard"] == "revocation"
    assert aw.REFUNDS == []


async def test_a_wait_that_times_out_is_a_deny_with_guard_approval_timeout(
    client: Client, chio_home: Path, uid: Any
) -> None:
    chio = LocalChioClient(kernel=Kernel(chio_home, approval_ttl=2))
    wid, tq = uid("refund-timeout"), uid("tq")
    ic, _ = await _setup(chio, wid)
    try:
        async with _worker(client, tq, ic):
            handle = await client.start_workflow(aw.RefundWorkflow.run, args=["o-4", 5], id=wid, task_queue=tq)
            error = await outcome(handle)  # nobody answers: the workflow's timer fires at the expiry
        assert error.type == "ChioCapabilityDenied"
        assert error.details[0]["guard"] == "approval-timeout"
        assert aw.REFUNDS == []
        await _replays(handle, ic)
    finally:
        chio.kernel.close()


async def test_pending_approval_search_attribute_follows_the_wait(
    client: Client, chio: LocalChioClient, uid: Any
) -> None:
    """With search attributes on, ChioPendingApproval is True while the run waits for a person and
    False once it waits on none; the history (with its upserts) replays."""
    from chio_temporal._search_attributes import PENDING_APPROVAL, ChioSearchAttributes

    wid, tq = uid("refund-sa"), uid("tq")
    ic, _ = await _setup(chio, wid)
    interceptors = [ic, ChioSearchAttributes(ic)]
    worker = Worker(client, task_queue=tq, workflows=[aw.RefundWorkflow], activities=[aw.refund],
                    interceptors=interceptors, workflow_runner=SANDBOX)
    async with worker:
        handle = await client.start_workflow(aw.RefundWorkflow.run, args=["o-sa", 7], id=wid, task_queue=tq)
        (waiting,) = await _pending(handle)
        attributes = (await handle.describe()).typed_search_attributes
        assert attributes.get(PENDING_APPROVAL) is True
        await chio.respond_approval(waiting["approval_id"], "approved")
        await handle.execute_update(APPROVAL_UPDATE, waiting["approval_id"])
        assert await handle.result() == "refunded 7 on o-sa"
        assert (await handle.describe()).typed_search_attributes.get(PENDING_APPROVAL) is False
    replayer = Replayer(workflows=[aw.RefundWorkflow], workflow_runner=SANDBOX, interceptors=interceptors)
    result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
    assert result.replay_failure is None, repr(result.replay_failure)
