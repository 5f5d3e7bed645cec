"""Construction, registration and receipt bookkeeping: bad input gets a clear error (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from chio_sdk.testing import allow_all
from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory, RetryState

from chio_kernel import LocalChioClient
from chio_temporal import (
    DENIED_ERROR_TYPE,
    ChioActivityInterceptor,
    ChioTemporalConfigError,
    ChioTemporalError,
    WorkflowGrant,
    WorkflowReceipt,
    WorkflowStepReceipt,
)
from chio_temporal.errors import ActivityDeniedError, denied_error
from chio_temporal_kit import scope, tool



async def test_workflow_grant_validates_its_fields(chio: LocalChioClient) -> None:
    token = await chio.create_capability(subject="agent:my-pipeline", scope=scope(tool("s", "t")))
    grant = WorkflowGrant("wf-1", token, "s")
    assert (grant.workflow_id, grant.tool_server, grant.run_id, grant.capability_id) == ("wf-1", "s", None, token.id)
    with pytest.raises(ChioTemporalConfigError, match="workflow_id"):
        WorkflowGrant(workflow_id="", token=token)
    with pytest.raises(ChioTemporalConfigError, match="CapabilityToken"):
        WorkflowGrant(workflow_id="wf", token=token.id)  # type: ignore[arg-type]


async def test_attenuate_for_activity_through_the_kernel(chio: LocalChioClient) -> None:
    token = await chio.create_capability(
        subject="agent:my-pipeline", scope=scope(tool("db", "read_database"), tool("mail", "send_email"))
    )
    grant = WorkflowGrant(workflow_id="wf", token=token, tool_server="agent-tools", run_id="run-1")
    child = await grant.attenuate_for_activity(chio, new_scope=scope(tool("db", "read_database")), tool_server="db")
    assert (child.workflow_id, child.run_id, child.tool_server) == ("wf", "run-1", "db")
    assert child.token.scope == scope(tool("db", "read_database"))
    # the kernel signed and stored the child; it is a real capability
    assert chio.kernel.get_capability(child.capability_id) == child.token
    assert chio.kernel.validate_capability(child.token) == (True, None)
    assert grant.covers(child) and not child.covers(grant)
    keeps = await grant.attenuate_for_activity(chio, new_scope=scope(tool("mail", "send_email")))
    assert keeps.tool_server == "agent-tools"
    with pytest.raises(ChioTemporalConfigError, match="not a subset") as info:
        await grant.attenuate_for_activity(chio, new_scope=scope(tool("db", "drop_table")))
    assert "db/drop_table" in str(info.value) and token.id in str(info.value)
    with pytest.raises(ChioTemporalConfigError, match="ChioScope"):
        await grant.attenuate_for_activity(chio, new_scope=["db/read_database"])  # type: ignore[arg-type]


def test_interceptor_arguments_are_checked() -> None:
    with pytest.raises(ChioTemporalConfigError, match="chio_client= .*sidecar_url="):
        ChioActivityInterceptor()
    with pytest.raises(ChioTemporalConfigError, match="chio_client= must be"):
        ChioActivityInterceptor(chio_client=object())
    with pytest.raises(ChioTemporalConfigError, match="activity_tool_server_map"):
        ChioActivityInterceptor(chio_client=allow_all(), activity_tool_server_map=["x"])  # type: ignore[arg-type]
    with pytest.raises(ChioTemporalConfigError, match="receipt_sink"):
        ChioActivityInterceptor(chio_client=allow_all(), receipt_sink="store")  # type: ignore[arg-type]
    built = ChioActivityInterceptor(sidecar_url="http://127.0.0.1:9090")
    assert built.sidecar_url == "http://127.0.0.1:9090" and type(built.chio_client).__name__ == "SidecarClient"


async def test_registration_and_grant_lookup(chio: LocalChioClient) -> None:
    token = await chio.create_capability(subject="agent:x", scope=scope(tool("s", "t")))
    other = await chio.create_capability(subject="agent:y", scope=scope(tool("s", "t")))
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="s")
    with pytest.raises(ChioTemporalConfigError, match="WorkflowGrant"):
        ic.register_workflow_grant(token)  # type: ignore[arg-type]
    with pytest.raises(ChioTemporalConfigError, match="callable"):
        ic.register_activity_grant_override("t", WorkflowGrant("wf", token))  # type: ignore[arg-type]
    with pytest.raises(ChioTemporalConfigError, match="activity type"):
        ic.register_activity_grant_override("", lambda info: None)
    with pytest.raises(ChioTemporalConfigError, match="run_id=None"):
        ic.register_workflow_grant_prefix(WorkflowGrant("order-", token, run_id="r"))
    any_run = WorkflowGrant("wf", token)
    one_run = WorkflowGrant("wf", other, run_id="run-2")
    prefix = WorkflowGrant("order-", token)
    longer = WorkflowGrant("order-eu-", other)
    ic.register_workflow_grant(any_run)
    ic.register_workflow_grant(one_run)
    ic.register_workflow_grant_prefix(prefix)
    ic.register_workflow_grant_prefix(longer)
    assert ic.grant_for("wf", "run-1") is any_run
    assert ic.grant_for("wf", "run-2") is one_run
    assert ic.grant_for("order-1") is prefix and ic.grant_for("order-eu-7") is longer
    assert ic.grant_for("other") is None
    ic.register_workflow_grant(WorkflowGrant("order-eu-7", token))
    assert ic.grant_for("order-eu-7").token is token  # exact beats prefix
    ic.unregister_workflow_grant("wf")
    assert ic.grant_for("wf", "run-1") is None and ic.grant_for("wf", "run-2") is one_run


async def test_finalize_and_flush_without_activities() -> None:
    ic = ChioActivityInterceptor(chio_client=allow_all(), default_tool_server="s")
    with pytest.raises(ChioTemporalConfigError, match="pass run_id="):
        ic.finalize_workflow(workflow_id="wf", outcome="success")
    receipt = ic.finalize_workflow(workflow_id="wf", run_id="r1", outcome="cancelled")
    assert (receipt.step_count, receipt.outcome) == (0, "cancelled")
    envelope = await ic.flush_workflow_receipt(workflow_id="wf")
    assert envelope["steps"] == [] and envelope["outcome"] == "cancelled" and envelope["run_id"] == "r1"
    with pytest.raises(ChioTemporalConfigError):
        await ic.flush_workflow_receipt(workflow_id="wf")
    ic.finalize_workflow(workflow_id="wf2", run_id="a", outcome="success")
    ic.finalize_workflow(workflow_id="wf2", run_id="b", outcome="success")
    with pytest.raises(ChioTemporalConfigError, match="several runs"):
        await ic.flush_workflow_receipt(workflow_id="wf2")


def test_retry_attempts_with_the_same_receipt_are_one_step() -> None:
    receipt = WorkflowReceipt(workflow_id="wf", run_id="r")

    def step(attempt: int, receipt_id: str | None, verdict: str = "allow") -> WorkflowStepReceipt:
        return WorkflowStepReceipt(
            activity_id="1", activity_type="a", attempt=attempt, tool_server="s", tool_name="a",
            capability_id="cap", receipt_id=receipt_id, verdict=verdict,
        )

    receipt.add_step(step(1, "rcpt-1"))
    receipt.add_step(step(2, "rcpt-1"))
    receipt.add_step(step(3, "rcpt-2", "deny"))  # e.g. revoked between attempts: a new decision
    receipt.add_step(step(4, None, "deny"))
    receipt.add_step(step(5, None, "deny"))  # decisions without receipts never merge
    assert [s.attempts for s in receipt.steps] == [[1, 2], [3], [4], [5]]
    assert (receipt.step_count, receipt.allow_count, receipt.deny_count) == (4, 1, 3)
    assert receipt.receipt_ids == ["rcpt-1", "rcpt-2"]


def test_activity_denied_error_is_both_shapes() -> None:
    deny = denied_error(
        activity_type="credit_account", tool_server="bank", tool_name="credit_account", workflow_id="wf",
        run_id="r", capability_id="cap", receipt_id="rcpt-9", guard="scope", reason="not granted",
    )
    assert deny.type == DENIED_ERROR_TYPE and deny.non_retryable and deny.category == ApplicationErrorCategory.BENIGN
    assert "rcpt-9" in str(deny) and "scope" in str(deny) and "not granted" in str(deny)
    activity_error = ActivityError(
        "Activity task failed", scheduled_event_id=5, started_event_id=6, identity="w",
        activity_type="credit_account", activity_id="2", retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    activity_error.__cause__ = deny
    surfaced = ActivityDeniedError.surface(activity_error)
    assert isinstance(surfaced, ApplicationError) and isinstance(surfaced, ActivityError)
    assert surfaced.type == DENIED_ERROR_TYPE and surfaced.non_retryable and surfaced.details == deny.details
    assert surfaced.category == ApplicationErrorCategory.BENIGN
    assert (surfaced.receipt_id, surfaced.guard, surfaced.reason) == ("rcpt-9", "scope", "not granted")
    assert surfaced.cause is deny and surfaced.activity_type == "credit_account" and surfaced.scheduled_event_id == 5
    other = ActivityError(
        "boom", scheduled_event_id=1, started_event_id=2, identity="w", activity_type="x", activity_id="1",
        retry_state=None,
    )
    other.__cause__ = ApplicationError("boom", type="ValueError")
    assert ActivityDeniedError.surface(other) is other
    assert issubclass(ChioTemporalConfigError, ChioTemporalError) and issubclass(ChioTemporalConfigError, ValueError)


def test_pending_receipts_are_bounded_oldest_dropped_with_a_warning(caplog) -> None:
    from chio_sdk.testing import allow_all

    from chio_temporal import ChioTemporalConfigError

    ic = ChioActivityInterceptor(chio_client=allow_all(), default_tool_server="bank", max_pending_receipts=2)
    with caplog.at_level("WARNING", logger="chio_temporal"):
        ic.finalize_workflow(workflow_id="wf-1", run_id="r1", outcome="success")
        ic.finalize_workflow(workflow_id="wf-2", run_id="r2", outcome="success")
        ic.finalize_workflow(workflow_id="wf-1", run_id="r1", outcome="success")  # touched (same outcome: idempotent): most recent now
        assert caplog.records == []
        ic.finalize_workflow(workflow_id="wf-3", run_id="r3", outcome="success")
    assert [(r.workflow_id, r.run_id) for r in ic.pending_workflow_receipts()] == [("wf-1", "r1"), ("wf-3", "r3")]
    assert ic.get_workflow_receipt("wf-2", "r2") is None
    [record] = caplog.records
    assert record.levelname == "WARNING" and "'wf-2'" in record.getMessage() and "max_pending_receipts=2" in record.getMessage()
    for bad in (0, -1, True, "10"):
        with pytest.raises(ChioTemporalConfigError, match="max_pending_receipts"):
            ChioActivityInterceptor(chio_client=allow_all(), max_pending_receipts=bad)  # type: ignore[arg-type]
