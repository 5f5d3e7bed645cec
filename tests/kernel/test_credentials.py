"""Credentials (chio_kernel._roles): made with one role, shown once, stored as a hash, checked,
revoked; and the principal named in the approvals it answers."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from chio_kernel import ApprovalForbiddenError, CredentialError, Kernel, Principal
from chio_kernel._roles import token_hash
from cli_run import run_cli

TOKEN = re.compile(r"chio_(workload|approver|operator)_[A-Za-z0-9_-]{43}")


def test_a_credential_is_shown_once_and_stored_as_its_hash(kernel: Kernel) -> None:
    token = kernel.add_credential("alice", "approver")
    assert TOKEN.fullmatch(token) and token.startswith("chio_approver_")
    assert kernel.authenticate(token) == Principal("approver", "alice")
    [listed] = kernel.list_credentials()
    assert listed["name"] == "alice" and listed["role"] == "approver" and listed["active"]
    assert token not in repr(listed) and token_hash(token) not in repr(listed)  # never a token or its hash
    with sqlite3.connect(kernel.data_dir / "kernel.db") as db:
        rows = db.execute("SELECT name, role, token_hash FROM credentials").fetchall()
    assert rows == [("alice", "approver", hashlib.sha256(token.encode()).hexdigest())]
    raw = (kernel.data_dir / "kernel.db").read_bytes()
    assert token.encode() not in raw


def test_unknown_altered_and_revoked_tokens_authenticate_nobody(kernel: Kernel) -> None:
    token = kernel.add_credential("worker-1", "workload")
    other = kernel.add_credential("ops", "operator")
    assert kernel.authenticate(token) == Principal("workload", "worker-1")
    assert kernel.authenticate(other) == Principal("operator", "ops")
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (altered, "", "chio_operator_" + "x" * 43, token.replace("workload", "operator"), token + " "):
        assert kernel.authenticate(bad) is None, bad
    kernel.revoke_credential("worker-1")
    assert kernel.authenticate(token) is None  # at once in this process
    assert kernel.authenticate(other) == Principal("operator", "ops")
    kernel.revoke_credential("worker-1")  # twice: a no-op
    assert {c["name"]: c["active"] for c in kernel.list_credentials()} == {"worker-1": False, "ops": True}


def test_a_revocation_by_another_process_takes_effect_within_the_cache_time(chio_home: Path) -> None:
    with Kernel(chio_home) as sidecar_side, Kernel(chio_home) as cli_side:
        token = cli_side.add_credential("worker-2", "workload")
        assert sidecar_side.authenticate(token) is not None
        cli_side.revoke_credential("worker-2")
        sidecar_side._credentials._cache.clear()  # what AUTH_CACHE_SECONDS passing does
        assert sidecar_side.authenticate(token) is None


def test_bad_names_roles_and_duplicates_are_refused_with_a_sentence(kernel: Kernel) -> None:
    with pytest.raises(CredentialError, match="role must be one of workload, approver, operator"):
        kernel.add_credential("bob", "admin")
    for name in ("", "-x", "a b", "x" * 65, "é"):
        with pytest.raises(CredentialError, match="credential name is 1-64"):
            kernel.add_credential(name, "approver")
    kernel.add_credential("bob", "approver")
    kernel.revoke_credential("bob")
    with pytest.raises(CredentialError, match="exists already"):
        kernel.add_credential("bob", "approver")  # revoked names are kept: receipts name them
    with pytest.raises(CredentialError, match="no credential named 'carol'"):
        kernel.revoke_credential("carol")


def _pending(kernel: Kernel, asked_by: str | None = None, approvers: int = 1) -> str:
    value = {"threshold_units": 0} if approvers == 1 else {"threshold_units": 0, "approvers": approvers}
    cap = kernel.create_capability("agent:a", {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": value}],
    }]}, 600).id
    metadata = None if asked_by is None else {"chio_role": "operator", "chio_principal": asked_by}
    receipt = kernel.evaluate(cap, "shop", "refund", {"order": "A-1"}, metadata=metadata)
    assert receipt.decision.verdict == "pending_approval"
    return str(receipt.metadata["pending_approval"]["approval_id"])  # type: ignore[index]


def test_the_resolution_names_the_authenticated_approver(kernel: Kernel) -> None:
    aid = _pending(kernel)
    receipt = kernel.respond_approval(aid, "approved", "ok", approver=Principal("approver", "alice"))
    res = receipt.metadata["approval_resolution"]  # type: ignore[index]
    assert (res["approver"], res["approver_role"]) == ("alice", "approver")
    assert receipt.decision.reason == "approved by alice: ok"
    approval = kernel.get_approval(aid) or {}
    assert approval["approvals"] == [{"name": "alice", "role": "approver", "at": approval["resolved_at"],
                                      "receipt_id": receipt.id}]
    assert approval["approvals_needed"] == 1 and approval["status"] == "approved"


def test_a_workload_and_the_principal_whose_call_waits_cannot_approve(kernel: Kernel) -> None:
    aid = _pending(kernel, asked_by="ops")
    count = kernel.receipt_count()
    with pytest.raises(ApprovalForbiddenError, match="only an approver or the operator"):
        kernel.respond_approval(aid, "approved", approver=Principal("workload", "worker-1"))
    with pytest.raises(ApprovalForbiddenError, match="cannot approve it"):
        kernel.respond_approval(aid, "approved", approver=Principal("operator", "ops"))
    assert kernel.receipt_count() == count and (kernel.get_approval(aid) or {})["status"] == "pending"
    kernel.respond_approval(aid, "approved", approver=Principal("approver", "alice"))  # someone else may


def test_a_plain_string_approver_is_deprecated(kernel: Kernel) -> None:
    aid = _pending(kernel)
    with pytest.warns(DeprecationWarning, match="approver=Principal"):
        receipt = kernel.respond_approval(aid, "approved", approver="alice")
    assert receipt.metadata["approval_resolution"]["approver"] == "alice"  # type: ignore[index]


def test_the_cli_adds_lists_and_revokes_credentials(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "k")
    made = run_cli("credentials", "add", "worker-1", "--role", "workload", "--data-dir", data_dir)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert TOKEN.fullmatch(token) and "shown once" in made.stderr
    listed = run_cli("credentials", "list", "--json", "--data-dir", data_dir)
    assert token not in listed.stdout and '"worker-1"' in listed.stdout and '"workload"' in listed.stdout
    bad = run_cli("credentials", "add", "x", "--role", "root", "--data-dir", data_dir)
    assert bad.returncode == 1 and "role must be one of" in bad.stderr
    assert run_cli("credentials", "revoke", "worker-1", "--data-dir", data_dir).returncode == 0
    with Kernel(data_dir) as kernel:
        assert kernel.authenticate(token) is None
    gone = run_cli("credentials", "revoke", "nobody", "--data-dir", data_dir)
    assert gone.returncode == 1 and "no credential named 'nobody'" in gone.stderr
