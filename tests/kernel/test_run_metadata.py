"""The caller's run context (``Kernel.evaluate(..., metadata=)``, ``record_denial(..., metadata=)``):
signed into the receipt's ``metadata``, chained, verified by an independent verifier, refused when
malformed, not part of the idempotency fingerprint, found by ``query_receipts(metadata=...)``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioReceipt

from chio_kernel import Kernel, KernelInputError
from chio_kernel._receipts import receipt_wire_dict
from kernel_helpers import grant, scope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))
from independent_verifier import assert_receipt_verifies, signature_ok  # noqa: E402

RUN = {"flow_run_id": "fr-1", "task_run_id": "tr-1", "task_name": "fetch"}


def _cap(kernel: Kernel) -> str:
    return kernel.create_capability("agent:x", scope(grant("fs", "read"))).id


def _verifies(receipt: ChioReceipt) -> None:
    wire = receipt_wire_dict(receipt)
    assert_receipt_verifies(wire)


def test_allow_and_deny_receipts_sign_the_run_context(kernel: Kernel) -> None:
    cap = _cap(kernel)
    allow = kernel.evaluate(cap, "fs", "read", {"path": "/a"}, metadata=RUN)
    deny = kernel.evaluate(cap, "fs", "write", {"path": "/a"}, metadata={"workflow_id": "order-7"})
    plain = kernel.evaluate(cap, "fs", "read", {"path": "/b"})  # the fast path: no metadata
    assert allow.decision.verdict == "allow" and allow.metadata == RUN
    assert deny.decision.verdict == "deny" and deny.decision.guard == "scope"
    assert deny.metadata == {"workflow_id": "order-7"}
    assert plain.metadata is None
    for receipt in (allow, deny, plain):
        _verifies(receipt)
        assert kernel.verify_receipt(receipt)
        assert kernel.get_receipt(receipt.id) == receipt  # stored as handed out
    # the metadata is signed: altering it breaks the signature
    forged = receipt_wire_dict(allow)
    forged["metadata"] = {**RUN, "flow_run_id": "fr-2"}
    assert not signature_ok(forged, allow.kernel_key)
    assert not kernel.verify_receipt(forged)
    report = kernel.verify_chain()
    assert report.ok and report.count == 3, report


def test_query_by_metadata_finds_exactly_the_runs_receipts(kernel: Kernel) -> None:
    cap = _cap(kernel)
    mine = [kernel.evaluate(cap, "fs", t, {"i": i}, metadata={"flow_run_id": "fr-1"}).id
            for i, t in enumerate(["read", "write", "read"])]
    kernel.evaluate(cap, "fs", "read", {"i": 9}, metadata={"flow_run_id": "fr-2"})
    kernel.evaluate(cap, "fs", "read", {"i": 10})
    found = [r.id for _, r in kernel.query_receipts(metadata={"flow_run_id": "fr-1"})]
    assert sorted(found) == sorted(mine)


def test_metadata_is_not_in_the_idempotency_fingerprint(kernel: Kernel) -> None:
    cap = _cap(kernel)
    first = kernel.evaluate(cap, "fs", "read", {"p": 1}, idempotency_key="k1", metadata={"attempt": "1"})
    retry = kernel.evaluate(cap, "fs", "read", {"p": 1}, idempotency_key="k1", metadata={"attempt": "2"})
    bare = kernel.evaluate(cap, "fs", "read", {"p": 1}, idempotency_key="k1")
    assert retry.id == first.id == bare.id and retry.metadata == {"attempt": "1"}  # the first receipt back
    assert kernel.receipt_count() == 1
    assert kernel.verify_chain().ok


def test_recorded_denial_carries_the_run_context(kernel: Kernel) -> None:
    cap = _cap(kernel)
    receipt = kernel.record_denial(
        cap, "fs", "write", {"p": 1}, guard="flow-envelope", reason="outside the flow's scope",
        metadata={"workflow_id": "wf-1", "run_id": "r-1"},
    )
    assert receipt.decision.verdict == "deny" and receipt.metadata == {"workflow_id": "wf-1", "run_id": "r-1"}
    _verifies(receipt)
    assert [r.id for _, r in kernel.query_receipts(metadata={"workflow_id": "wf-1"})] == [receipt.id]
    with pytest.raises(KernelInputError, match="metadata"):
        kernel.record_denial(cap, "fs", "write", {}, guard="g", reason="r", metadata={"bad key": "x"})
    assert kernel.verify_chain().ok and kernel.receipt_count() == 1


def test_pending_and_approved_receipts_merge_the_context_kernel_keys_win(kernel: Kernel) -> None:
    scope_dict = {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
    }]}
    cap = kernel.create_capability("agent:refunds", scope_dict).id
    cost = {"units": 250, "currency": "USD"}
    context = {"workflow_id": "wf-9", "approval_id": "not-the-callers"}
    pending = kernel.evaluate(cap, "shop", "refund", {"o": 1}, cost=cost, metadata=context)
    assert pending.decision.verdict == "pending_approval" and pending.metadata is not None
    assert pending.metadata["workflow_id"] == "wf-9" and "pending_approval" in pending.metadata
    approval_id = pending.metadata["pending_approval"]["approval_id"]
    resolution = kernel.respond_approval(approval_id, "approved")
    allow = kernel.evaluate(cap, "shop", "refund", {"o": 1}, cost=cost, approval_id=approval_id, metadata=context)
    assert allow.decision.verdict == "allow"
    assert allow.metadata == {"workflow_id": "wf-9", "approval_id": approval_id}  # the kernel's key wins
    for receipt in (pending, allow):
        _verifies(receipt)
    # the resolution carries the run context of the call it answers, so a run's receipts include it
    assert {r.id for _, r in kernel.query_receipts(metadata={"workflow_id": "wf-9"})} == {
        pending.id, resolution.id, allow.id}
    assert kernel.verify_chain().ok


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ("fr-1", "must be an object"),
        ({"flow run": "x"}, "letters, digits"),
        ({"": "x"}, "letters, digits"),
        ({"k": 1}, "must be a string"),
        ({"k": {"nested": "x"}}, "must be a string"),
        ({"k": "x" * 513}, "at most 512"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"k": "a\x00b"}, "NUL"),
    ],
)
def test_malformed_metadata_is_refused_and_records_nothing(kernel: Kernel, metadata: Any, says: str) -> None:
    cap = _cap(kernel)
    with pytest.raises(KernelInputError, match=says):
        kernel.evaluate(cap, "fs", "read", {}, metadata=metadata)
    assert kernel.receipt_count() == 0


def test_limits_are_inclusive(kernel: Kernel) -> None:
    cap = _cap(kernel)
    metadata = {f"k.{i}-x_y": "v" * 512 for i in range(16)}
    receipt = kernel.evaluate(cap, "fs", "read", {}, metadata=metadata)
    assert receipt.metadata == metadata
    _verifies(receipt)
    # an empty mapping is no context: the fast path, no metadata
    assert kernel.evaluate(cap, "fs", "read", {"e": 1}, metadata={}).metadata is None


async def test_the_embedded_transport_sends_the_calls_context(kernel: Kernel) -> None:
    from chio_durable import GovernedCall, as_transport
    from chio_durable._denial_record import deny_before_evaluation

    cap = _cap(kernel)
    transport = as_transport(kernel)
    call = GovernedCall("task", "fs", "read", {"p": 1}, metadata={"flow_run_id": "fr-e"})
    assert call == GovernedCall("task", "fs", "read", {"p": 1})  # context is not part of the call
    evaluation = transport.evaluate_sync(call, capability_id=cap, idempotency_key="k-e")
    assert evaluation.receipt is not None and evaluation.receipt.metadata == {"flow_run_id": "fr-e"}
    denied = deny_before_evaluation(
        transport, GovernedCall("task", "fs", "write", {}, metadata={"flow_run_id": "fr-e"}), cap,
        guard="flow-scope", reason="outside",
    )
    assert denied.receipt is not None and denied.receipt.metadata == {"flow_run_id": "fr-e"}
    found = [r.id for _, r in kernel.query_receipts(metadata={"flow_run_id": "fr-e"})]
    assert found == [evaluation.receipt_id, denied.receipt_id]
