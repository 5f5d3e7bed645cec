"""The receipt chain: verify, tamper detection naming the index, ChioClient's own chain check, listing."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from chio_sdk.client import ChioClient

from chio_kernel import Kernel
from chio_kernel._kernel import receipt_chain_hash

from kernel_helpers import grant, scope


def _fill(kernel: Kernel, n: int) -> list[str]:
    a = kernel.create_capability("agent:a", scope(grant()), 3600)
    b = kernel.create_capability("agent:b", scope(grant("web", "get")), 3600)
    ids = []
    for i in range(n):
        cap = a if i % 3 else b
        ids.append(kernel.evaluate(cap.id, "fs", "read", {"i": i, "f": i / 7}).id)  # b denies (scope)
    return ids


def test_chain_verifies_and_links_like_chio_client(kernel: Kernel) -> None:
    ids = _fill(kernel, 12)
    report = kernel.verify_chain()
    assert report.ok and report.count == 12 and report.first_broken_index is None
    # one kernel, one chain: named by the kernel's key
    assert [(c.kernel_id, c.count, c.head_seq, c.ok) for c in report.chains] == [(kernel.public_key_hex, 12, 12, True)]
    receipts = kernel.list_receipts()
    assert [r.id for r in receipts] == ids
    assert receipts[0].content_hash == "0" * 64
    for prev, cur in zip(receipts, receipts[1:]):
        assert cur.content_hash == receipt_chain_hash(prev)
    # the real client's check, on receipts listed in store order
    assert asyncio.run(ChioClient.verify_receipt_chain(None, receipts)) is True  # type: ignore[arg-type]
    swapped = [receipts[1], receipts[0], *receipts[2:]]
    assert asyncio.run(ChioClient.verify_receipt_chain(None, swapped)) is False  # type: ignore[arg-type]


def test_altered_stored_receipt_is_named_by_index(kernel: Kernel) -> None:
    ids = _fill(kernel, 10)
    db = sqlite3.connect(kernel.data_dir / "kernel.db")
    body = json.loads(db.execute("SELECT body FROM receipts WHERE id = ?", (ids[6],)).fetchone()[0])
    body["action"]["parameters"]["i"] = 999
    db.execute("UPDATE receipts SET body = ? WHERE id = ?", (json.dumps(body, sort_keys=True), ids[6]))
    db.commit()
    db.close()
    report = kernel.verify_chain()
    assert not report.ok and report.first_broken_index == 6 and report.count == 6
    assert "index 6" in report.reason


def test_altered_decision_with_fixed_up_hash_is_still_caught(kernel: Kernel) -> None:
    ids = _fill(kernel, 5)
    db = sqlite3.connect(kernel.data_dir / "kernel.db")
    body = json.loads(db.execute("SELECT body FROM receipts WHERE id = ?", (ids[0],)).fetchone()[0])
    body["decision"] = {"verdict": "allow"}
    db.execute("UPDATE receipts SET body = ? WHERE id = ?", (json.dumps(body), ids[0]))
    db.commit()
    db.close()
    report = kernel.verify_chain()
    assert report.first_broken_index == 0 and "signature" in report.reason


def test_deleted_receipt_breaks_the_next_link(kernel: Kernel) -> None:
    ids = _fill(kernel, 6)
    db = sqlite3.connect(kernel.data_dir / "kernel.db")
    db.execute("DELETE FROM receipts WHERE id = ?", (ids[2],))
    db.commit()
    db.close()
    report = kernel.verify_chain()
    assert report.first_broken_index == 2 and "does not chain" in report.reason


def test_chain_continues_after_reopen_and_old_schema_is_migrated(kernel: Kernel, clock) -> None:
    ids = _fill(kernel, 3)
    # A store written by the first development schema had a chain_head TABLE + trigger.
    db = sqlite3.connect(kernel.data_dir / "kernel.db")
    head = db.execute("SELECT seq, hash FROM chain_head").fetchone()
    db.executescript(
        "DROP TRIGGER chain_head_update; DROP VIEW chain_head;"
        "CREATE TABLE chain_head (k INTEGER PRIMARY KEY CHECK (k = 0), seq INTEGER NOT NULL, hash TEXT NOT NULL);"
        f"INSERT INTO chain_head VALUES (0, {head[0]}, '{head[1]}');"
    )
    db.close()
    reopened = Kernel(kernel.data_dir, clock=clock)
    cap_id = reopened.get_receipt(ids[1]).capability_id
    reopened.evaluate(cap_id, "fs", "read", {"after": "reopen"})
    report = reopened.verify_chain()
    assert report.ok and report.count == 4
    reopened.close()


def test_list_filters_and_paging(kernel: Kernel) -> None:
    ids = _fill(kernel, 9)
    b_id = kernel.get_receipt(ids[0]).capability_id
    by_cap = kernel.list_receipts(capability_id=b_id)
    assert [r.id for r in by_cap] == [ids[i] for i in range(9) if i % 3 == 0]
    page1 = kernel.list_receipts_with_seq(limit=4)
    page2 = kernel.list_receipts_with_seq(limit=4, after_seq=page1[-1][0])
    assert [r.id for _, r in page1 + page2] == ids[:8]
    assert kernel.list_receipts(limit=0) == []
    assert kernel.get_receipt("rcpt-missing") is None
    assert kernel.receipt_count() == 9 and kernel.health()["receipts"] == 9


def test_empty_chain_is_ok(kernel: Kernel) -> None:
    report = kernel.verify_chain()
    assert report.ok and report.count == 0


def test_listing_by_capability_catches_up_with_new_receipts(kernel: Kernel, clock) -> None:
    ids = _fill(kernel, 6)
    cap_a = kernel.get_receipt(ids[1]).capability_id
    first = [r.id for r in kernel.list_receipts(capability_id=cap_a)]
    assert first == [ids[i] for i in range(6) if i % 3]
    other = Kernel(kernel.data_dir, clock=clock)  # another process appends meanwhile
    new = other.evaluate(cap_a, "fs", "read", {"late": True}).id
    other.close()
    again = [r.id for r in kernel.list_receipts(capability_id=cap_a)]
    assert again == first + [new]
    assert [r.id for r in kernel.list_receipts(capability_id=cap_a, after_seq=3, limit=2)] == again[2:4]
    assert kernel.list_receipts(capability_id="cap-none") == []


def test_index_by_capability_catches_up_in_batches(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first listing by capability on a big store must not hold the write lock for the whole
    # catch-up: it indexes in transactions of _INDEX_BATCH receipts, releasing the lock between them
    import chio_kernel._sqlite_store as smod

    a = kernel.create_capability("agent:a", scope(grant()), 3600)
    b = kernel.create_capability("agent:b", scope(grant()), 3600)
    ids = {a.id: [], b.id: []}
    for i in range(23):
        cap = a if i % 3 else b
        ids[cap.id].append(kernel.evaluate(cap.id, "fs", "read", {"i": i}).id)
    monkeypatch.setattr(smod, "_INDEX_BATCH", 5)
    kernel._checkpoints.stop()  # count the catch-up's transactions only, not the checkpoint cutter's
    base = kernel._store.commits  # write transactions of the store (the listing's catch-up)
    assert [r.id for r in kernel.list_receipts(capability_id=a.id)] == ids[a.id]
    assert kernel._store.commits - base == 6  # ceil(23 / 5) batches + one that finds nothing left
    assert [r.id for r in kernel.list_receipts(capability_id=b.id)] == ids[b.id]
    assert kernel._store.commits - base == 7  # already caught up: one look, nothing written
    ids[b.id].append(kernel.evaluate(b.id, "fs", "read", {}).id)
    assert [r.id for r in kernel.list_receipts(capability_id=b.id)] == ids[b.id]


def test_sign_http_receipt_signs_http_receipt_bodies_only(kernel: Kernel) -> None:
    from chio_kernel import KernelInputError, canonical_json
    from chio_kernel.signing import verify_hex

    body = {"id": "hrcpt-1", "request_id": "r", "route_pattern": "/x", "method": "GET",
            "caller_identity_hash": "0" * 64, "verdict": {"verdict": "allow"}, "response_status": 200,
            "timestamp": 1, "content_hash": "0" * 64, "policy_hash": "0" * 64, "kernel_key": kernel.public_key_hex}
    sig = kernel.sign_http_receipt(body)
    assert verify_hex(kernel.public_key_hex, sig, canonical_json(body))
    token = kernel.create_capability("agent:a", scope(grant()), 3600, capability_id="hrcpt-evil")
    token_body = token.body().model_dump(exclude_none=True)  # not an oracle for tokens or tool receipts
    with pytest.raises(KernelInputError, match="HttpReceipt bodies only"):
        kernel.sign_http_receipt(token_body)
    with pytest.raises(KernelInputError, match="HttpReceipt bodies only"):
        kernel.sign_http_receipt({**body, "id": "rcpt-1"})
