"""A fleet store written before per-kernel chains (schema 1: one chain for the whole fleet) opens
with schema 2: every old receipt keeps verifying, as the chain ``fleet-v1``, and each kernel goes on
in its own chain. The schema-1 store is built with the old DDL kept verbatim in
``fixtures/schema_v1.sql``, and receipts signed and chained as the old store did (two kernels'
keys interleaved in one chain)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import Kernel
from chio_kernel._receipts import ALLOW, CallRecord, build_receipt
from chio_kernel._store import GENESIS_HASH, LEGACY_CHAIN
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import Signer, load_or_create_key

SCHEMA_V1 = Path(__file__).with_name("fixtures") / "schema_v1.sql"


def _schema_1_store(dsn: str, signers: list[Signer], n: int) -> list[str]:
    """A schema-1 store holding ``n`` receipts in one chain, signed in turn by ``signers``."""
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_V1.read_text())
        prev = GENESIS_HASH
        for s in signers:
            conn.execute("INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, 'old', %s)",
                         (s.public_key_hex, time.time()))
        for seq in range(1, n + 1):
            s = signers[seq % len(signers)]
            params = {"path": f"/old/{seq}"}
            call = CallRecord(f"cap-old-{seq % 2}", "fs", "read_file", params,
                              hashlib.sha256(canonical_json(params)).hexdigest())
            receipt, stored, chain_hash = build_receipt(
                s.sign_hex, s.public_key_hex, prev, time.time(), call, ALLOW, GENESIS_HASH
            )
            conn.execute("INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) "
                         "VALUES (%s, %s, %s, 'allow', %s, %s)", (seq, receipt.id, call.capability_id, chain_hash, stored))
            prev = chain_hash
            ids.append(receipt.id)
    return ids


def test_a_schema_1_store_migrates_and_every_old_receipt_verifies(pg_dsn: str, tmp_path: Path) -> None:
    signers = [Signer(load_or_create_key(tmp_path / name)) for name in ("host-a", "host-b")]
    old_ids = _schema_1_store(pg_dsn, signers, 9)

    kernel = Kernel(tmp_path / "host-a", store=pg_dsn)  # opening it migrates the store
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone() == ("2",)
    report = kernel.verify_chain()
    assert report.ok, report.reason
    assert [(c.kernel_id, c.count, c.head_seq) for c in report.chains] == [(LEGACY_CHAIN, 9, 9)]
    # the old receipts are still found by id, in order, and by capability (the migration indexed them)
    assert [r.id for r in kernel.list_receipts()] == old_ids
    assert [r.id for r in kernel.list_receipts(capability_id="cap-old-1")] == old_ids[0::2]

    # both kernels go on, each in its own chain next to the old one
    cap = kernel.create_capability("agent:x", ChioScope(grants=[
        ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE], max_invocations=3)]))
    other = Kernel(tmp_path / "host-b", store=pg_dsn)
    new = [k.evaluate(cap.id, "fs", "read_file", {"path": f"/new/{i}"}) for i, k in enumerate([kernel, other, kernel])]
    assert [r.content_hash for r in new[::2]][0] == GENESIS_HASH  # a new chain, not the old one continued
    report = other.verify_chain()
    assert report.ok, report.reason
    assert {c.kernel_id: c.count for c in report.chains} == {
        LEGACY_CHAIN: 9, kernel.public_key_hex: 2, other.public_key_hex: 1,
    }
    assert [r.id for r in kernel.list_receipts()] == old_ids + [r.id for r in new]  # seq goes on after the old

    # the old chain is still checked, not just carried: altering an old receipt breaks it
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE receipts SET body = replace(body, '/old/4', '/old/X') WHERE id = %s", (old_ids[3],))
    broken = kernel.verify_chain()
    assert not broken.ok and broken.first_broken_index == 3
    assert broken.reason is not None and LEGACY_CHAIN in broken.reason
    kernel.close()
    other.close()


def test_opening_a_schema_1_store_from_two_kernels_at_once_migrates_it_once(pg_dsn: str, tmp_path: Path) -> None:
    import threading

    signers = [Signer(load_or_create_key(tmp_path / name)) for name in ("host-a", "host-b")]
    _schema_1_store(pg_dsn, signers, 4)
    kernels: list[Kernel] = []
    threads = [threading.Thread(target=lambda n=n: kernels.append(Kernel(tmp_path / n, store=pg_dsn)))
               for n in ("host-a", "host-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kernels) == 2
    report = kernels[0].verify_chain()
    assert report.ok and report.count == 4, report.reason
    for k in kernels:
        k.close()
