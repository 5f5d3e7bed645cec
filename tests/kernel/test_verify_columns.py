"""``receipts verify`` checks every column the store indexes (id, capability_id, verdict, chain_hash,
the by-capability index) against the signed body, and names the first mismatch: listings and
filters read those columns, so an edited column must not pass."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chio_kernel import Kernel
from cli_run import run_cli
from kernel_helpers import grant, scope


def _store(tmp_path: Path) -> tuple[str, list[str]]:
    kernel = Kernel(tmp_path)
    cap = kernel.create_capability("agent:a", scope(grant("fs", "read")), 3600).id
    other = kernel.create_capability("agent:b", scope(grant("fs", "read")), 3600).id
    ids = [kernel.evaluate(cap, "fs", "read", {"n": 1}).id,
           kernel.evaluate(cap, "fs", "write", {"n": 2}).id,  # a deny
           kernel.evaluate(cap, "fs", "read", {"n": 3}).id]
    kernel.evaluate(other, "fs", "read", {"n": 4})
    kernel.list_receipts(capability_id=cap)  # catches the by-capability index up
    kernel.close()
    return cap, ids


def _edit(tmp_path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(tmp_path / "kernel.db") as db:
        assert db.execute(sql, params).rowcount >= 1


@pytest.mark.parametrize(("sql", "column"), [
    ("UPDATE receipts SET verdict = 'allow' WHERE seq = 2", "verdict"),
    ("UPDATE receipts SET chain_hash = 'ab' || substr(chain_hash, 3) WHERE seq = 1", "chain_hash"),
    ("UPDATE receipts SET capability_id = 'cap-someone-else' WHERE seq = 3", "capability_id"),
])
def test_an_edited_column_fails_verify_and_is_named(tmp_path: Path, sql: str, column: str) -> None:
    _store(tmp_path)
    assert run_cli("receipts", "verify", "--data-dir", str(tmp_path)).returncode == 0
    _edit(tmp_path, sql)
    done = run_cli("receipts", "verify", "--data-dir", str(tmp_path))
    assert done.returncode == 1, done.stdout
    assert f"the store's {column} column says" in done.stdout + done.stderr
    kernel = Kernel(tmp_path)
    report = kernel.verify_chain()
    assert not report.ok and column in (report.reason or "")
    kernel.close()


def test_an_edited_capability_index_fails_verify(tmp_path: Path) -> None:
    cap, _ = _store(tmp_path)
    _edit(tmp_path, "UPDATE receipts_by_capability SET seq = 4 WHERE capability_id = ? AND seq = 3", cap)
    kernel = Kernel(tmp_path)
    report = kernel.verify_chain()
    assert not report.ok and "by-capability index" in (report.reason or "")
    kernel.close()
