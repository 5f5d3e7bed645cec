"""Credentials and two-person approvals on a fleet's PostgreSQL store: one kernel makes a credential,
another authenticates it; answers from two kernels count as two approvers."""

from __future__ import annotations

from pathlib import Path

from chio_kernel import Kernel, Principal


def test_credentials_and_named_answers_are_shared_by_the_fleet(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    try:
        token = a.add_credential("alice", "approver")
        assert b.authenticate(token) == Principal("approver", "alice")
        assert [c["name"] for c in b.list_credentials()] == ["alice"]
        b.revoke_credential("alice")
        assert a.authenticate(token) is None  # never cached in a: read from the shared store

        rule = {"type": "require_approval_above", "value": {"threshold_units": 0, "approvers": 2}}
        cap = a.create_capability("agent:x", {"grants": [
            {"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"], "constraints": [rule]}]}, 600).id
        pending = a.evaluate(cap, "shop", "refund", {"order": "A-1"})
        aid = pending.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
        a.respond_approval(aid, "approved", approver=Principal("approver", "ann"))
        assert (b.get_approval(aid) or {})["status"] == "pending"
        b.respond_approval(aid, "approved", approver=Principal("approver", "ben"))
        approval = a.get_approval(aid) or {}
        assert approval["status"] == "approved" and [x["name"] for x in approval["approvals"]] == ["ann", "ben"]
    finally:
        a.close()
        b.close()
