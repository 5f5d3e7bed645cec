"""Signed Merkle checkpoints on a real PostgreSQL store: the same statements as SQLite, each fleet kernel
checkpointing under its own key, and what ``verify_checkpoints`` catches there (a truncated table, a
forged key row)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel
from chio_kernel._receipts import CallRecord, build_receipt
from chio_kernel.proofs import verify_consistency, verify_inclusion
from chio_kernel.signing import Signer


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE])])


def _kernel(path: Path, dsn: str) -> Kernel:
    return Kernel(path, store=dsn, checkpoint_every=4, checkpoint_interval=3600)


def test_two_fleet_kernels_checkpoint_under_their_own_keys(pg_dsn: str, tmp_path: Path) -> None:
    a, b = _kernel(tmp_path / "a", pg_dsn), _kernel(tmp_path / "b", pg_dsn)
    cap = a.create_capability("agent:x", _scope(), 3600)
    ids = [(a if i % 2 else b).evaluate(cap.id, "fs", "read_file", {"i": i}).id for i in range(9)]
    a.checkpoint_now()
    b.checkpoint_now()
    assert [c["body"]["batch_end_seq"] for c in a.list_checkpoints(kernel_id=a.public_key_hex)] == [4, 8, 9]
    assert len(b.list_checkpoints()) == 6  # both kernels' checkpoints are in the store
    verify_inclusion(b.inclusion_proof(ids[6]), b.public_key_hex)
    verify_consistency(a.consistency_proof(1, 3), a.public_key_hex)
    report = a.verify_checkpoints(trusted_keys=[b.public_key_hex])
    assert report.ok and report.checkpoints == 6, report.problems
    b.close()
    a.close()


def test_truncated_table_and_forged_key_row_are_caught(pg_dsn: str, tmp_path: Path) -> None:
    kernel = _kernel(tmp_path / "a", pg_dsn)
    cap = kernel.create_capability("agent:x", _scope(), 3600)
    for i in range(4):
        kernel.evaluate(cap.id, "fs", "read_file", {"i": i})
    kernel.checkpoint_now()
    forger = Signer(Ed25519PrivateKey.generate())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, 'forged', %s)",
                     (forger.public_key_hex, time.time()))
        seq, prev = conn.execute("SELECT seq, hash FROM chain_head").fetchone()
        call = CallRecord(cap.id, "fs", "read_file", {"a": 1}, hashlib.sha256(b'{"a":1}').hexdigest())
        receipt, stored, chain_hash = build_receipt(forger.sign_hex, forger.public_key_hex, prev, time.time(), call,
                                                    {"verdict": "allow"}, "0" * 64)
        conn.execute("INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES "
                     "(%s, %s, %s, 'allow', %s, %s)", (seq + 1, receipt.id, cap.id, chain_hash, stored))
    assert kernel.verify_chain().ok  # the forged key is registered, so its receipt "verifies"
    assert kernel.verify_checkpoints().ok  # without anchors key rows are not judged
    report = kernel.verify_checkpoints(trusted_keys=[])
    assert not report.ok
    assert any(p.startswith(f"forged key row: kernel key {forger.public_key_hex[:16]}") for p in report.problems)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE receipts")
    problems = "\n".join(kernel.verify_checkpoints().problems)
    assert "the receipt table is empty (truncated)" in problems and "covers receipts up to seq 4" in problems
    kernel.close()


def test_one_data_dir_on_sqlite_and_on_postgresql_keeps_a_witness_per_store(pg_dsn: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for store in ("sqlite", pg_dsn, "sqlite"):
        with Kernel(home, store=store, checkpoint_every=2, checkpoint_interval=3600) as kernel:
            cap = kernel.create_capability("agent:x", _scope(), 3600)
            for i in range(3):
                kernel.evaluate(cap.id, "fs", "read_file", {"i": i})
            kernel.checkpoint_now()
            report = kernel.verify_checkpoints()
            assert report.ok, report.problems  # the other store's checkpoints are not expected here
    assert len(list(home.glob("checkpoint-head*.json"))) == 2
