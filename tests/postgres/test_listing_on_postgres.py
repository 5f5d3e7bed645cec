"""Listings on a fleet's PostgreSQL store: they page by keyset like on SQLite, and no read waits for
a writer: neither this kernel's own write transaction nor another kernel's (its ``chio_chain_lock``)."""

from __future__ import annotations

from pathlib import Path

from chio_kernel import Kernel
from listing_helpers import while_writing

APPROVAL = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}],
}]}


def test_listings_page_and_never_wait_for_a_writer(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    try:
        cap = a.create_capability("agent:refunds", APPROVAL).id
        ids = []
        for i in range(7):
            receipt = a.evaluate(cap, "shop", "refund", {"order": i})
            assert receipt.metadata is not None
            ids.append(receipt.metadata["pending_approval"]["approval_id"])
        seen, cursor = [], None
        while True:
            page = b.approvals_page(limit=3, cursor=cursor)
            seen += [x["id"] for x in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ids[::-1]

        def read_all() -> tuple[int, ...]:
            return (len(a.approvals_page()), len(a.capabilities_page()), len(a.receipts_page(newest_first=True)),
                    len(a.holds_page()), a.receipt_count())

        assert while_writing(a, read_all) == (7, 1, 7, 0, 7)  # this kernel's own writer
        assert while_writing(b, read_all) == (7, 1, 7, 0, 7)  # another kernel in its write transaction
    finally:
        a.close()
        b.close()
