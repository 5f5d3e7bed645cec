"""ChioActivityInterceptor on a call the kernel sends to a person (``pending_approval``), on a real
Temporal dev server: until the Temporal layer learns to wait for the approval, the activity is
refused like a deny (fail closed, not retried) and its body never runs (issue 10; docs/approvals.md)."""

from __future__ import annotations

import pytest
from chio_sdk.models import Constraint
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

import workflows
from chio_temporal import DENIED_ERROR_TYPE, ChioActivityInterceptor, WorkflowGrant
from chio_temporal_kit import make_worker, outcome, plan, running, scope, start_plan, tool

pytestmark = pytest.mark.temporal


async def test_a_pending_approval_does_not_run_the_activity(client: Client, chio, uid) -> None:  # type: ignore[no-untyped-def]
    wid, tq = uid("pending"), uid("tq")
    every_call = Constraint(type="require_approval_above", value=0)  # every call needs a person
    token = await chio.create_capability(
        subject="agent:my-pipeline", scope=scope(tool("bank", "debit_account", constraints=[every_call])), ttl_seconds=600
    )
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(WorkflowGrant(workflow_id=wid, token=token, tool_server="bank"))
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["acct-src", 5]), max_attempts=3)))
    assert isinstance(err, ApplicationError) and err.type == DENIED_ERROR_TYPE and err.non_retryable
    assert err.details[0]["guard"] == "approval"
    assert workflows.CALLS == []  # the activity body never ran
    receipts = chio.kernel.list_receipts(capability_id=token.id)
    assert [r.decision.verdict for r in receipts] == ["pending_approval"]  # one attempt, one pending receipt
    assert [a["tool_name"] for a in chio.kernel.list_approvals()] == ["debit_account"]
