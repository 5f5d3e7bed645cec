"""Human approval on Prefect (issue 10): a pending verdict pauses the flow run, on the real Prefect API.

The flow runs in a thread (a paused sync flow run blocks in ``pause_flow_run``); the test plays the
person: it approves or denies in the kernel, and resumes the flow run through the Prefect API.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

from chio_kernel import ApprovalConflictError, Kernel, LocalChioClient
from chio_prefect import ChioPrefectError, chio_flow, chio_task


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(
        server_id="shop", tool_name="refund", operations=[Operation.INVOKE],
        constraints=[Constraint(type="require_approval_above", value=0)],  # every refund needs a person
    )])


class Refunds:
    """A governed refund flow, run in a thread; what ran and how it ended."""

    def __init__(self, local: LocalChioClient, capability_id: str) -> None:
        self.ran: list[tuple[str, int]] = []
        self.flow_run_id: uuid.UUID | None = None
        self.result: Any = None
        self.error: BaseException | None = None

        @chio_task(tool_server="shop")
        def refund(order: str, amount: int) -> str:
            self.ran.append((order, amount))
            return f"refunded {amount} on {order}"

        @chio_flow(scope=_scope(), capability_id=capability_id, chio_client=local)
        def refund_flow(order: str, amount: int) -> str:
            from prefect.runtime import flow_run

            self.flow_run_id = uuid.UUID(flow_run.id)
            return refund(order, amount)

        self.flow = refund_flow

    def start(self, order: str, amount: int) -> threading.Thread:
        def run() -> None:
            try:
                self.result = self.flow(order, amount)
            except BaseException as err:  # noqa: BLE001 - the test reads it
                self.error = err

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def paused(self, key: str) -> None:
        """Wait (bounded by pytest's timeout, not by us) until the flow run is paused under ``key``."""
        from prefect import get_client

        with get_client(sync_client=True) as client:
            while True:
                if self.flow_run_id is not None:
                    state = client.read_flow_run(self.flow_run_id).state
                    if state is not None and state.is_paused() and state.state_details.pause_key == key:
                        return
                if self.error is not None:
                    raise AssertionError(f"the flow ended instead of pausing: {self.error!r}")
                time.sleep(0.1)

    def resume(self, **run_input: Any) -> None:
        from prefect.flow_runs import resume_flow_run

        assert self.flow_run_id is not None
        resume_flow_run(self.flow_run_id, run_input=run_input)


def _pending_id(local: LocalChioClient) -> str:
    while not (pending := local.kernel.list_approvals("pending")):
        time.sleep(0.1)
    (approval,) = pending
    return str(approval["id"])


def _setup(chio_home: Path, **kernel: Any) -> tuple[LocalChioClient, str]:
    local = LocalChioClient(kernel=Kernel(chio_home, **kernel))
    cap = local.kernel.create_capability(subject="agent:refunds", scope=_scope())
    return local, cap.id


def test_pause_a_forged_resume_runs_nothing_then_approve_runs_once(chio_home: Path) -> None:
    local, cap = _setup(chio_home)
    refunds = Refunds(local, cap)
    thread = refunds.start("o-1", 120)
    approval_id = _pending_id(local)
    refunds.paused(approval_id)  # keyed by the approval id; the UI shows the ApprovalInput form
    pending = local.kernel.list_receipts(capability_id=cap)
    assert [r.decision.verdict for r in pending] == ["pending_approval"]  # signed, chained, nothing charged
    assert pending[0].metadata["pending_approval"]["approval_id"] == approval_id
    assert local.kernel.verify_chain().ok

    # a resume with no kernel resolution: the task asks the kernel again, still pending, pauses again
    refunds.resume(decision="approve", reason="forged")
    refunds.paused(f"{approval_id}-2")
    assert refunds.ran == []
    assert [r.decision.verdict for r in local.kernel.list_receipts(capability_id=cap)] == ["pending_approval"]

    local.kernel.respond_approval(approval_id, "approved", "ok by support")
    with pytest.raises(ApprovalConflictError):  # answered once
        local.kernel.respond_approval(approval_id, "denied")
    refunds.resume(decision="approve")
    thread.join()
    assert refunds.error is None and refunds.result == "refunded 120 on o-1"
    assert refunds.ran == [("o-1", 120)]  # exactly once
    receipts = local.kernel.list_receipts(capability_id=cap)
    assert [r.decision.verdict for r in receipts] == ["pending_approval", "approval_resolution", "allow"]
    # the kernel's approval_id, and the run context (docs/prefect.md) of the same flow run as the pending one
    assert receipts[-1].metadata is not None and receipts[-1].metadata["approval_id"] == approval_id
    assert receipts[-1].metadata["flow_run_id"] == receipts[0].metadata["flow_run_id"]
    assert local.kernel.verify_chain().ok
    local.kernel.close()


@pytest.mark.parametrize("how", ["kernel-deny", "resume-deny", "revoke"])
def test_deny_or_revoke_during_the_pause_denies_without_running(chio_home: Path, how: str) -> None:
    local, cap = _setup(chio_home)
    refunds = Refunds(local, cap)
    thread = refunds.start("o-2", 7)
    approval_id = _pending_id(local)
    refunds.paused(approval_id)
    if how == "kernel-deny":
        local.kernel.respond_approval(approval_id, "denied", "not eligible")
        refunds.resume(decision="approve")
    elif how == "resume-deny":
        refunds.resume(decision="deny", reason="looks like fraud")
    else:
        local.kernel.revoke_capability(cap)
        refunds.resume(decision="approve")
    thread.join()
    assert refunds.ran == []
    assert isinstance(refunds.error, PermissionError)
    cause = refunds.error.__cause__
    assert isinstance(cause, ChioPrefectError)
    assert cause.guard == {"kernel-deny": "approval-denied", "resume-deny": "approval-denied", "revoke": "revocation"}[how]
    local.kernel.close()


def test_a_pause_that_times_out_is_a_deny_with_guard_approval_timeout(chio_home: Path) -> None:
    local, cap = _setup(chio_home, approval_ttl=2)
    refunds = Refunds(local, cap)
    thread = refunds.start("o-3", 7)
    thread.join()  # nobody resumes: the pause times out at the approval's expiry
    assert refunds.ran == []
    assert isinstance(refunds.error, PermissionError)
    assert isinstance(refunds.error.__cause__, ChioPrefectError)
    assert refunds.error.__cause__.guard == "approval-timeout"
    local.kernel.close()


def test_over_the_sidecar_a_second_answer_is_409_and_the_task_runs_once(chio_home: Path, sidecar_url: str) -> None:
    """The same pause over HTTP: SidecarClient sends approval_id; the operator answers over HTTP."""
    import httpx

    from chio_durable._loop import run_on_kernel_loop
    from chio_kernel import SidecarClient

    sidecar = SidecarClient(sidecar_url)
    token = run_on_kernel_loop(sidecar.create_capability(subject="agent:refunds", scope=_scope()))
    refunds = Refunds(sidecar, token.id)  # type: ignore[arg-type]
    thread = refunds.start("o-5", 3)
    while not (pending := httpx.get(f"{sidecar_url}/approvals/pending").json()["approvals"]):
        time.sleep(0.1)
    approval_id = pending[0]["id"]
    refunds.paused(approval_id)
    first = httpx.post(f"{sidecar_url}/approvals/{approval_id}/operator-respond", json={"outcome": "approved", "reason": "ok"})
    second = httpx.post(f"{sidecar_url}/approvals/{approval_id}/operator-respond", json={"outcome": "denied"})
    assert (first.status_code, second.status_code) == (200, 409)
    refunds.resume(decision="approve")
    thread.join()
    assert refunds.error is None and refunds.ran == [("o-5", 3)]


def test_a_deny_from_the_resume_form_is_a_signed_receipt_and_the_approval_is_denied(chio_home: Path) -> None:
    local, cap = _setup(chio_home)
    refunds = Refunds(local, cap)
    thread = refunds.start("o-4", 9)
    approval_id = _pending_id(local)
    refunds.paused(approval_id)
    refunds.resume(decision="deny", reason="looks like fraud")
    thread.join()
    assert refunds.ran == []
    cause = refunds.error.__cause__ if refunds.error is not None else None
    assert isinstance(cause, ChioPrefectError)
    receipts = local.kernel.list_receipts(capability_id=cap)
    assert [r.decision.verdict for r in receipts] == ["pending_approval", "deny"]
    deny = receipts[-1]
    assert cause.receipt_id == deny.id  # the error names the deny receipt, not the pending one
    assert deny.decision.guard == "approval-denied" and "prefect-form" in (deny.decision.reason or "")
    form = (deny.metadata or {})["form_denial"]
    assert form["source"] == "prefect-form" and form["authenticated"] is False
    assert form["reason"] == "looks like fraud" and form["approval_id"] == approval_id
    approval = local.kernel.get_approval(approval_id)
    assert approval is not None and approval["status"] == "denied"
    assert local.kernel.list_approvals("pending") == []
    assert local.kernel.verify_chain().ok
    with pytest.raises(ApprovalConflictError):  # the form's deny answered it: nothing can approve it now
        local.kernel.respond_approval(approval_id, "approved")
    local.kernel.close()


def test_a_form_deny_can_only_stop_a_call(chio_home: Path) -> None:
    local, cap = _setup(chio_home)
    pending = local.kernel.evaluate(cap, "shop", "refund", {"order": "o-5", "amount": 1})
    approval_id = pending.metadata["pending_approval"]["approval_id"]
    local.kernel.respond_approval(approval_id, "approved", "ok")
    deny = local.kernel.record_form_denial(approval_id, "changed my mind")  # after an approval: recorded, no allow
    assert deny.decision.verdict == "deny"
    assert (deny.metadata or {})["form_denial"]["resolved_approval"] is False
    assert local.kernel.get_approval(approval_id)["status"] == "approved"  # type: ignore[index]
    local.kernel.close()
