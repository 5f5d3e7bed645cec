"""Human approvals on a fleet: two kernels (two data dirs, two signing keys) sharing one real
PostgreSQL store. An approval asked on one is answered ONCE across both (a racing second answer is a
conflict), used once, and the one chain verifies on both (docs/approvals.md, docs/fleet.md)."""

from __future__ import annotations

import threading
from pathlib import Path

from chio_kernel import ApprovalConflictError, Kernel

PARAMS = {"order": "A-17", "amount": 250}
COST = {"units": 250, "currency": "USD"}
SCOPE = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"], "max_invocations": 10,
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
}]}


def test_one_resolution_and_one_use_across_two_kernels(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    try:
        assert a.public_key_hex != b.public_key_hex
        cap = a.create_capability("agent:refunds", SCOPE).id
        pending = a.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="run-1:0", cost=COST)
        assert pending.decision.verdict == "pending_approval"
        aid = pending.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
        # the other kernel sees the same approval and answers the same idempotent retry
        assert [x["id"] for x in b.list_approvals()] == [aid]
        assert b.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="run-1:0", cost=COST) == pending

        # both kernels answer at once: exactly one answer is recorded, the other is a conflict
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def answer(name: str, kernel: Kernel, outcome: str) -> None:
            barrier.wait()
            try:
                results[name] = kernel.respond_approval(aid, outcome, f"by {name}")
            except ApprovalConflictError as err:
                results[name] = err

        threads = [threading.Thread(target=answer, args=("a", a, "approved")),
                   threading.Thread(target=answer, args=("b", b, "denied"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conflicts = [n for n, r in results.items() if isinstance(r, ApprovalConflictError)]
        assert len(conflicts) == 1, results
        winner = "b" if conflicts == ["a"] else "a"
        outcome = "approved" if winner == "a" else "denied"
        view = a.get_approval(aid)
        assert view is not None and view["status"] == outcome and view["reason"] == f"by {winner}"
        resolutions = [r for r in a.list_receipts(capability_id=cap) if r.decision.verdict == "approval_resolution"]
        assert len(resolutions) == 1
        assert resolutions[0].kernel_key == (a if winner == "a" else b).public_key_hex

        again = b.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="run-1:0:b", cost=COST, approval_id=aid)
        if outcome == "denied":
            assert again.decision.guard == "approval-denied"
            assert (a.capability_info(cap) or {})["usage"] == []
        else:
            assert again.decision.is_allowed and again.metadata == {"approval_id": aid}
            other = a.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="run-1:1", cost=COST, approval_id=aid)
            assert other.decision.guard == "approval-consumed"
            assert (a.capability_info(cap) or {})["usage"] == [{"grant_index": 0, "invocations": 1, "cost_units": 250}]
        assert a.verify_chain().ok and b.verify_chain().ok
    finally:
        a.close()
        b.close()
