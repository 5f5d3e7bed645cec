"""The approval webhook outbox on a shared PostgreSQL store: an approval asked on one kernel is queued
once per URL, whichever kernel's deliverer sees it, and a claimed delivery is not sent by the other
(docs/inbox.md, "The webhook channel")."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from chio_kernel import Kernel, WebhookSettings
from chio_kernel._webhooks import WebhookDeliverer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
from test_webhooks import SECRET, Receiver, _pending  # noqa: E402


def test_two_kernels_on_one_store_deliver_each_approval_once(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    try:
        receiver = Receiver([])
        settings = WebhookSettings(urls=(receiver.url,), secret=SECRET, backoff=(0.05,))
        approval_id = _pending(a)
        assert b.webhooks.enqueue(settings.urls) == 1 and a.webhooks.enqueue(settings.urls) == 0
        claimed = a.webhooks.claim()
        assert [r.approval_id for r in claimed] == [approval_id] and b.webhooks.claim() == []  # leased to a
        with httpx.Client(timeout=5) as client:
            deliverer = WebhookDeliverer(a.webhooks, settings)
            recorded = [deliverer.send(client, row) for row in claimed]
        assert [r.state for r in recorded] == ["delivered"]
        assert [(d["approval_id"], d["state"]) for d in b.webhooks.deliveries()] == [(approval_id, "delivered")]
        assert len(receiver.received) == 1 and receiver.received[0]["valid"]
    finally:
        a.close()
        b.close()
