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


def test_a_wake_registered_on_one_kernel_is_woken_by_the_other(pg_dsn: str, tmp_path: Path) -> None:
    """The wakes live in the shared store: a run registers through host A, a person answers on host B,
    B calls the waker once; identical wakes are stored once (docs/approvals.md, "Waking the run")."""
    from chio_kernel._wakers import register_waker, unregister_waker

    calls: list[dict[str, object]] = []
    register_waker("pgtest", lambda wake, outcome: (calls.append({**wake, **outcome}), "woke pg run")[1])
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    try:
        cap = a.create_capability("agent:refunds", SCOPE).id
        pending = a.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="wake-1:0", cost=COST)
        aid = pending.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
        big = {"engine": "pgtest", "run": "r-1", "blob": "x" * 4000}  # near the 4 KiB limit: still unique-indexed
        assert a.register_approval_wake(aid, big)["woken"] == []
        assert b.register_approval_wake(aid, dict(big))["status"] == "pending"  # the same wake, once
        with a._read() as st:
            assert len(st.approval_wakes(aid)) == 1
        receipt = b.respond_approval(aid, "approved", "ok")
        assert b.last_wake_report(aid) == [{"engine": "pgtest", "ok": True, "message": "woke pg run"}]
        assert [(c["run"], c["status"], c["resolution_receipt_id"]) for c in calls] == [("r-1", "approved", receipt.id)]
        late = a.register_approval_wake(aid, {"engine": "pgtest", "run": "r-2"})  # after the answer: at once
        assert late["status"] == "approved" and late["woken"][0]["ok"] is True
        assert [c["run"] for c in calls] == ["r-1", "r-2"]
    finally:
        unregister_waker("pgtest")
        a.close()
        b.close()
