"""Every kernel's chain on a fleet store is walked and checked on its own: a receipt filed in a
chain it was not signed for, or a deleted tail, is caught and the chain named."""

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
from chio_kernel._store import GENESIS_HASH
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import Signer, load_or_create_key


def _two_kernels(pg_dsn: str, tmp_path: Path) -> tuple[Kernel, Kernel, str]:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    cap = a.create_capability("agent:x", ChioScope(grants=[
        ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE])])).id
    for i in range(3):
        a.evaluate(cap, "fs", "read_file", {"path": f"/a/{i}"})
        b.evaluate(cap, "fs", "read_file", {"path": f"/b/{i}"})
    return a, b, cap


def test_each_chain_is_reported_and_a_receipt_moved_to_another_kernels_chain_is_caught(
    pg_dsn: str, tmp_path: Path
) -> None:
    a, b, _ = _two_kernels(pg_dsn, tmp_path)
    report = a.verify_chain()
    assert report.ok, report.reason
    assert {(c.kernel_id, c.count, c.head_seq, c.ok) for c in report.chains} == {
        (a.public_key_hex, 3, 3, True), (b.public_key_hex, 3, 3, True),
    }
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # B's first receipt filed as A's fourth
        conn.execute("UPDATE receipts SET kernel_id = %s, chain_seq = 4 WHERE kernel_id = %s AND chain_seq = 1",
                     (a.public_key_hex, b.public_key_hex))
    broken = a.verify_chain()
    assert not broken.ok
    bad = {c.kernel_id: c for c in broken.chains}
    # A's chain gained a receipt that does not link; B's chain lost its first link: both named
    assert not bad[a.public_key_hex].ok and bad[a.public_key_hex].first_broken_index == 3
    assert not bad[b.public_key_hex].ok and bad[b.public_key_hex].first_broken_index == 0
    first = min(a.public_key_hex, b.public_key_hex)  # the report's reason names the first broken chain
    assert broken.reason is not None and first[:16] in broken.reason
    a.close()
    b.close()


def test_a_deleted_tail_of_one_kernels_chain_is_caught_by_its_head(pg_dsn: str, tmp_path: Path) -> None:
    a, b, _ = _two_kernels(pg_dsn, tmp_path)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM receipts WHERE kernel_id = %s AND chain_seq = 3", (b.public_key_hex,))
    broken = a.verify_chain()
    assert not broken.ok
    assert broken.reason is not None and b.public_key_hex[:16] in broken.reason and "seq 3" in broken.reason
    a.close()
    b.close()


def test_a_receipt_signed_by_another_fleet_key_in_a_kernels_chain_is_caught(pg_dsn: str, tmp_path: Path) -> None:
    """B's key signs a receipt that links onto A's chain head, filed as A's next receipt: every
    signature and link holds, but A's chain holds only what A signed."""
    a, b, cap = _two_kernels(pg_dsn, tmp_path)
    forger = Signer(load_or_create_key(tmp_path / "host-b"))
    params = {"path": "/forged"}
    call = CallRecord(cap, "fs", "read_file", params, hashlib.sha256(canonical_json(params)).hexdigest())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        head = conn.execute("SELECT chain_seq, hash FROM chain_heads WHERE kernel_id = %s", (a.public_key_hex,)).fetchone()
        receipt, stored, chain_hash = build_receipt(
            forger.sign_hex, forger.public_key_hex, head[1], time.time(), call, ALLOW, GENESIS_HASH
        )
        conn.execute("INSERT INTO receipts(id, capability_id, verdict, chain_hash, body, kernel_id, chain_seq) "
                     "VALUES (%s, %s, 'allow', %s, %s, %s, %s)",
                     (receipt.id, cap, chain_hash, stored, a.public_key_hex, head[0] + 1))
        conn.execute("UPDATE chain_heads SET chain_seq = chain_seq + 1, hash = %s WHERE kernel_id = %s",
                     (chain_hash, a.public_key_hex))
    broken = b.verify_chain()
    assert not broken.ok and broken.first_broken_index == 3
    assert broken.reason is not None and "signed by another key" in broken.reason
    assert a.public_key_hex[:16] in broken.reason
    a.close()
    b.close()
