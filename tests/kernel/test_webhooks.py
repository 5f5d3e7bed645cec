"""The approval webhook channel (docs/inbox.md): a pending call is POSTed, signed the Standard Webhooks
way, to a real local HTTP receiver that checks the signature; failures are retried with backoff and
end in the dead-letter list; nothing about the approval depends on delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from chio_kernel import Kernel, KernelInputError, WebhookSettings, new_webhook_secret, sign_webhook, verify_webhook
from chio_kernel._webhooks import WebhookDeliverer

SECRET = new_webhook_secret()


class Receiver:
    """A local webhook receiver: checks every signature (``secret``), answers ``codes`` in turn (then 204)."""

    def __init__(self, codes: list[int], secret: str = SECRET) -> None:
        self.codes = list(codes)
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append({
                    "headers": headers, "body": body, "valid": verify_webhook(secret, headers, body),
                })
                self.send_response(receiver.codes.pop(0) if receiver.codes else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/chio"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def kernel(chio_home: Path) -> Iterator[Kernel]:
    with Kernel(data_dir=chio_home) as k:
        yield k


def _pending(kernel: Kernel, order: str = "A-1") -> str:
    cap = kernel.create_capability("agent:refunds", {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
    }]}).id
    receipt = kernel.evaluate(cap, "shop", "refund", {"order": order}, cost={"units": 500, "currency": "USD"})
    assert receipt.decision.verdict == "pending_approval"
    return str(receipt.metadata["pending_approval"]["approval_id"])


def _tick_until(deliverer: WebhookDeliverer, client: httpx.Client, done: Any, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < end, deliverer.outbox.deliveries()
        deliverer.run_once(client)
        time.sleep(0.02)


def test_signature_is_standard_webhooks_and_verification_refuses_changes() -> None:
    # the Standard Webhooks reference vector (github.com/standard-webhooks/standard-webhooks, spec)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = sign_webhook(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330", "webhook-signature": sig}
    assert verify_webhook(secret, headers, body, now=1614265330)
    assert not verify_webhook(secret, headers, body + b" ", now=1614265330)
    assert not verify_webhook(secret, headers, body, now=1614265330 + 3600)  # replayed an hour later
    with pytest.raises(KernelInputError, match="whsec_"):
        WebhookSettings(urls=("http://127.0.0.1/x",), secret="hunter2")
    with pytest.raises(KernelInputError, match="http"):
        WebhookSettings(urls=("ftp://x",), secret=SECRET)


def test_pending_approval_is_posted_signed_with_an_inbox_link_after_two_failures(kernel: Kernel) -> None:
    receiver = Receiver([500, 503])  # fails twice, then succeeds
    settings = WebhookSettings(
        urls=(receiver.url,), secret=SECRET, inbox_url="https://inbox.example/ui", backoff=(0.05, 0.05, 0.05)
    )
    deliverer = WebhookDeliverer(kernel.webhooks, settings)
    approval_id = _pending(kernel)
    with httpx.Client(timeout=5) as client:
        _tick_until(deliverer, client, lambda: kernel.webhooks.deliveries("delivered"))
    assert len(receiver.received) == 3 and all(r["valid"] for r in receiver.received)
    ids = {r["headers"]["webhook-id"] for r in receiver.received}
    assert len(ids) == 1  # one message id across its retries
    payload = json.loads(receiver.received[-1]["body"])
    assert payload["type"] == "approval.pending"
    assert payload["data"]["id"] == approval_id and payload["data"]["status"] == "pending"
    assert payload["data"]["inbox_url"] == f"https://inbox.example/ui/approvals/{approval_id}"
    assert payload["data"]["parameters"] == {"order": "A-1"}
    (row,) = kernel.webhooks.deliveries()
    assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 3, None)
    # queued once: later ticks send nothing more
    with httpx.Client(timeout=5) as client:
        deliverer.run_once(client)
    assert len(receiver.received) == 3


def test_a_receiver_that_never_answers_2xx_ends_in_the_dead_letters_and_can_be_retried(kernel: Kernel) -> None:
    receiver = Receiver([500, 500, 500])
    settings = WebhookSettings(urls=(receiver.url,), secret=SECRET, backoff=(0.01,))  # two attempts
    deliverer = WebhookDeliverer(kernel.webhooks, settings)
    approval_id = _pending(kernel)
    with httpx.Client(timeout=5) as client:
        _tick_until(deliverer, client, lambda: kernel.webhooks.deliveries("dead"))
        (dead,) = kernel.webhooks.deliveries("dead")
        assert (dead["approval_id"], dead["attempts"], dead["last_error"]) == (approval_id, 2, "HTTP 500")
        # the approval itself is untouched by delivery: still pending, answerable
        assert kernel.get_approval(approval_id)["status"] == "pending"  # type: ignore[index]
        assert kernel.webhooks.retry(dead["id"]) and not kernel.webhooks.retry("msg_unknown")
        _tick_until(deliverer, client, lambda: kernel.webhooks.deliveries("delivered"))
    assert [r["valid"] for r in receiver.received] == [True] * 4


def test_an_unreachable_receiver_never_blocks_or_changes_the_approval(kernel: Kernel) -> None:
    settings = WebhookSettings(urls=("http://127.0.0.1:9/nowhere",), secret=SECRET, backoff=(60,), poll_seconds=0.05)
    deliverer = WebhookDeliverer(kernel.webhooks, settings).start()
    try:
        started = time.monotonic()
        approval_id = _pending(kernel, "B-2")
        assert time.monotonic() - started < 2  # the evaluation does not wait for delivery
        end = time.monotonic() + 10
        while not (rows := kernel.webhooks.deliveries()) or rows[0]["attempts"] == 0:
            assert time.monotonic() < end
            time.sleep(0.05)
        assert rows[0]["state"] == "pending" and "Connect" in (rows[0]["last_error"] or "")
        kernel.respond_approval(approval_id, "approved", "ok")
        assert kernel.get_approval(approval_id)["status"] == "approved"  # type: ignore[index]
    finally:
        deliverer.stop()
