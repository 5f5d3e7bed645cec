"""Signed Merkle checkpoints on a real PostgreSQL store: the same statements as SQLite, each fleet kernel
checkpointing its own chain under its own key, the migrated fleet chain reported uncovered, and what
``verify_checkpoints`` catches there (one kernel's deleted tail, a truncated table, a forged key row)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel, KernelInputError, ProofError, verify_evidence
from chio_kernel._receipts import CallRecord, build_receipt
from chio_kernel._store import GENESIS_HASH, LEGACY_CHAIN
from chio_kernel.proofs import verify_consistency, verify_inclusion
from chio_kernel.signing import Signer, load_or_create_key
from test_fleet_migration import _schema_1_store


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE])])


def _kernel(path: Path, dsn: str) -> Kernel:
    return Kernel(path, store=dsn, checkpoint_every=4, checkpoint_interval=3600)


def test_each_fleet_kernel_checkpoints_only_its_own_chain(pg_dsn: str, tmp_path: Path) -> None:
    a, b = _kernel(tmp_path / "a", pg_dsn), _kernel(tmp_path / "b", pg_dsn)
    cap = a.create_capability("agent:x", _scope(), 3600)
    ids = [(a if i % 2 else b).evaluate(cap.id, "fs", "read_file", {"i": i}).id for i in range(9)]
    a.checkpoint_now()
    b.checkpoint_now()
    # a wrote 4 receipts (its chain_seq 1-4), b wrote 5: each cut over its own chain's positions
    assert [(c["body"]["batch_start_seq"], c["body"]["batch_end_seq"])
            for c in a.list_checkpoints(kernel_id=a.public_key_hex)] == [(1, 4)]
    assert [(c["body"]["batch_start_seq"], c["body"]["batch_end_seq"])
            for c in b.list_checkpoints(kernel_id=b.public_key_hex)] == [(1, 4), (5, 5)]
    assert len(b.list_checkpoints()) == 3  # both kernels' checkpoints are in the store
    proof = a.inclusion_proof(ids[6])  # b's receipt number 4 (i = 0, 2, 4, 6), proved by b's checkpoint
    assert proof["proof"]["receipt_seq"] == 4 and proof["checkpoint"]["body"]["kernel_key"] == b.public_key_hex
    verify_inclusion(proof, b.public_key_hex)
    with pytest.raises(ProofError):
        verify_inclusion(proof, a.public_key_hex)
    verify_inclusion(b.inclusion_proof(ids[7]), a.public_key_hex)  # a's receipt 4, from any kernel
    verify_consistency(b.consistency_proof(1, 2), b.public_key_hex)
    pending = b.evaluate(cap.id, "fs", "read_file", {"i": 9}).id  # b's receipt 6: not yet checkpointed
    with pytest.raises(KernelInputError, match=f"kernel {b.public_key_hex}'s chain, which has not"):
        a.inclusion_proof(pending)
    assert b.inclusion_proof(pending)["proof"]["receipt_seq"] == 6  # its own kernel cuts on demand
    report = a.verify_checkpoints(trusted_keys=[b.public_key_hex])
    assert report.ok and report.checkpoints == 4 and report.covered == 10 and report.uncovered == [], report.problems
    b.close()
    a.close()


def test_a_deleted_tail_of_one_kernels_chain_is_named(pg_dsn: str, tmp_path: Path) -> None:
    a, b = _kernel(tmp_path / "a", pg_dsn), _kernel(tmp_path / "b", pg_dsn)
    cap = a.create_capability("agent:x", _scope(), 3600)
    for i in range(8):
        (a if i % 2 else b).evaluate(cap.id, "fs", "read_file", {"i": i})
    a.checkpoint_now()
    b.checkpoint_now()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # b's newest two, and nothing of a's
        conn.execute("DELETE FROM receipts WHERE kernel_id = %s AND chain_seq > 2", (b.public_key_hex,))
    problems = a.verify_checkpoints().problems
    assert problems == [f"the newest receipts were deleted: kernel {b.public_key_hex}'s chain ends at seq 2, "
                        "but its checkpoint 1 covers receipts up to seq 4: seq 3-4 are missing"], problems
    b.close()
    a.close()


def test_truncated_table_and_forged_key_row_are_caught(pg_dsn: str, tmp_path: Path) -> None:
    kernel = _kernel(tmp_path / "a", pg_dsn)
    cap = kernel.create_capability("agent:x", _scope(), 3600)
    for i in range(4):
        kernel.evaluate(cap.id, "fs", "read_file", {"i": i})
    kernel.checkpoint_now()
    forger = Signer(Ed25519PrivateKey.generate())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a forged kernel with a chain of its own
        conn.execute("INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, 'forged', %s)",
                     (forger.public_key_hex, time.time()))
        call = CallRecord(cap.id, "fs", "read_file", {"a": 1}, hashlib.sha256(b'{"a":1}').hexdigest())
        receipt, stored, chain_hash = build_receipt(forger.sign_hex, forger.public_key_hex, GENESIS_HASH, time.time(),
                                                    call, {"verdict": "allow"}, "0" * 64)
        conn.execute("INSERT INTO receipts(id, capability_id, verdict, chain_hash, body, kernel_id, chain_seq) VALUES "
                     "(%s, %s, 'allow', %s, %s, %s, 1)",
                     (receipt.id, cap.id, chain_hash, stored, forger.public_key_hex))
        conn.execute("INSERT INTO chain_heads(kernel_id, chain_seq, hash) VALUES (%s, 1, %s)",
                     (forger.public_key_hex, chain_hash))
    assert kernel.verify_chain().ok  # the forged key is registered, so its chain "verifies"
    report = kernel.verify_checkpoints()
    assert report.ok and report.uncovered == [forger.public_key_hex]  # without anchors key rows are not judged
    report = kernel.verify_checkpoints(trusted_keys=[])
    assert not report.ok
    assert any(p.startswith(f"forged key row: kernel key {forger.public_key_hex[:16]}") for p in report.problems)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE receipts")
    problems = "\n".join(kernel.verify_checkpoints().problems)
    assert "the receipt table is empty (truncated)" in problems and "covers receipts up to seq 4" in problems
    kernel.close()


def test_the_migrated_fleet_chain_is_reported_uncovered(pg_dsn: str, tmp_path: Path) -> None:
    signers = [Signer(load_or_create_key(tmp_path / name)) for name in ("a", "b")]
    old_ids = _schema_1_store(pg_dsn, signers, 5)
    a = _kernel(tmp_path / "a", pg_dsn)  # opening it migrates the store: the old chain is fleet-v1
    cap = a.create_capability("agent:x", _scope(), 3600)
    new = [a.evaluate(cap.id, "fs", "read_file", {"i": i}).id for i in range(3)]
    a.checkpoint_now()
    report = a.verify_checkpoints()
    assert report.ok and report.uncovered == [LEGACY_CHAIN] and report.covered == 3, report.problems
    with pytest.raises(KernelInputError, match=f"in the chain {LEGACY_CHAIN} migrated"):
        a.inclusion_proof(old_ids[0])
    verify_inclusion(a.inclusion_proof(new[0]), a.public_key_hex)
    manifest = a.export_evidence(tmp_path / "evidence")  # this kernel's chain only: the old chain has no proofs
    assert manifest["counts"]["toolReceipts"] == 3 and manifest["counts"]["inclusionProofs"] == 3
    assert verify_evidence(tmp_path / "evidence", a.public_key_hex).receipts == 3
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # an old receipt forged under no known key
        forger = Signer(Ed25519PrivateKey.generate())
        body = conn.execute("SELECT body FROM receipts WHERE id = %s", (old_ids[4],)).fetchone()[0]
        conn.execute("UPDATE receipts SET body = %s WHERE id = %s",
                     (body.replace(signers[1].public_key_hex, forger.public_key_hex), old_ids[4]))
    problems = a.verify_checkpoints().problems
    assert len(problems) == 1 and problems[0].startswith(f"receipt seq 5 of the chain {LEGACY_CHAIN}: "), problems
    a.close()


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
