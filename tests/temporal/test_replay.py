"""Determinism: histories of governed workflows replay with temporalio.worker.Replayer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import Constraint
from temporalio.client import Client
from temporalio.worker import Replayer

import workflows
from chio_kernel import LocalChioClient
from chio_temporal import ChioActivityInterceptor, WorkflowGrant
from chio_temporal_kit import ALL_WORKFLOWS, SANDBOX, make_worker, outcome, plan, running, scope, start_plan, tool

pytestmark = pytest.mark.temporal


async def test_governed_histories_replay_without_error(client: Client, chio_home: Path, uid: Any) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    tq = uid("tq")
    saga_id, plan_id = uid("replay-saga"), uid("replay-plan")
    the_scope = scope(
        tool("bank", "debit_account"),
        tool("bank", "credit_account", constraints=[Constraint.regex_match("^acct-src$")]),
        tool("bank", "flaky"),
    )
    token = await chio.create_capability(subject="agent:replay", scope=the_scope, ttl_seconds=600)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(WorkflowGrant(workflow_id=saga_id, token=token))
    ic.register_workflow_grant_prefix(WorkflowGrant(workflow_id=plan_id, token=token))
    workflows.FAIL_FIRST_ATTEMPTS["r"] = 1
    async with running(make_worker(client, tq, [ic])):
        saga = await client.start_workflow(
            workflows.TransferWorkflow.run, workflows.Transfer("acct-src", "acct-dst", 3), id=saga_id, task_queue=tq
        )
        denied = await outcome(saga)
        planned = await start_plan(
            client,
            tq,
            plan_id,
            plan(("flaky", ["r"]), ("debit_account", ["a", 1]), max_attempts=3, children=[plan(("debit_account", ["c", 2]))]),
        )
        assert await outcome(planned) == ["r ok on attempt 2", "debited 1 from a", ["debited 2 from c"]]
    assert denied.type == "ChioCapabilityDenied"
    # the saga's compensation ran: the history has 3 activities (debit, denied credit, refund)
    saga_history = await saga.fetch_history()
    scheduled = [e for e in saga_history.events if e.HasField("activity_task_scheduled_event_attributes")]
    assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in scheduled] == [
        "debit_account",
        "credit_account",
        "credit_account",
    ]
    child = client.get_workflow_handle(f"{plan_id}-child-0")
    replayer = Replayer(workflows=ALL_WORKFLOWS, workflow_runner=SANDBOX, interceptors=[ic])
    for handle in (saga, planned, child):
        result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{handle.id}: {result.replay_failure!r}"
    await chio.close()


async def test_adding_the_interceptor_keeps_existing_histories_replayable(client: Client, chio_home: Path, uid: Any) -> None:
    """A history recorded on a worker *without* chio replays on a worker *with* it: no activity added."""
    tq, wid = uid("tq"), uid("replay-legacy")
    async with running(make_worker(client, tq, [])):
        handle = await start_plan(
            client, tq, wid, plan(("debit_account", ["a", 1]), ("flaky", ["x"]), children=[plan(("debit_account", ["c", 1]))])
        )
        await outcome(handle)
    chio = LocalChioClient(data_dir=chio_home)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    replayer = Replayer(workflows=ALL_WORKFLOWS, workflow_runner=SANDBOX, interceptors=[ic])
    for h in (handle, client.get_workflow_handle(f"{wid}-child-0")):
        result = await replayer.replay_workflow(await h.fetch_history(), raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{h.id}: {result.replay_failure!r}"
    await chio.close()


@pytest.mark.parametrize("wait", [0.0, 0.3])
async def test_cancelling_an_activity_gives_the_same_history_with_and_without_chio(
    client: Client, chio_home: Path, uid: Any, wait: float
) -> None:
    """Denial surfacing wraps activity handles: cancellation must behave exactly as without it."""
    chio = LocalChioClient(data_dir=chio_home)
    token = await chio.create_capability(subject="agent:x", scope=scope(tool("bank", "slow")), ttl_seconds=60)
    seen: dict[bool, tuple[str, list[int], list[str]]] = {}
    histories = []
    for with_chio in (False, True):
        wid, tq = uid(f"cancel-{with_chio}"), uid(f"tq-{with_chio}")
        interceptors: list[Any] = []
        if with_chio:
            ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
            ic.register_workflow_grant(WorkflowGrant(workflow_id=wid, token=token))
            interceptors = [ic]
        workflows.reset()
        async with running(make_worker(client, tq, interceptors)):
            handle = await client.start_workflow(workflows.CancelWorkflow.run, wait, id=wid, task_queue=tq)
            result = await handle.result()
        history = await handle.fetch_history()
        histories.append(history)
        seen[with_chio] = (result, [int(e.event_type) for e in history.events], [n for n, _, _ in workflows.CALLS])
    assert seen[True] == seen[False]
    if wait:
        assert seen[True][0] == "ActivityError:CancelledError" and seen[True][2] == ["slow", "slow-cancelled"]
    else:  # cancelled in the same workflow task: never scheduled, never ran
        assert seen[True][0].startswith("CancelledError") and seen[True][2] == []
    replayer = Replayer(workflows=ALL_WORKFLOWS, workflow_runner=SANDBOX, interceptors=[ChioActivityInterceptor(chio_client=chio)])
    for history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None
    await chio.close()
