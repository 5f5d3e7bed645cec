"""The approval webhook channel: an outbox in the kernel's store and a deliverer (docs/inbox.md).

When a call goes pending, the people who answer it are told: every configured URL receives one
POST per approval, signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under a ``whsec_...``
secret), with a link to the approval in the inbox.

* **The outbox** is a table of the kernel's store (``webhook_outbox``): one row per (approval, URL),
  so a delivery is queued once, survives a restart, and is visible (the inbox lists dead letters).
* **The deliverer** (:class:`WebhookDeliverer`) is a background thread of the process that serves
  the inbox (``chio-durable sidecar --webhook URL`` / ``chio-durable ui --webhook URL``). Each tick
  it queues the pending approvals it has not queued yet (whoever created them: any process
  writing to the store), claims the due deliveries (moving their ``next_at`` ahead by a lease, so a
  second deliverer on the same store does not send them too) and POSTs them. A 2xx answer is
  delivered; anything else is retried after the backoff schedule; after the last attempt the
  delivery is ``dead`` (a dead letter) until someone retries it from the inbox.
* **Nothing about the approval depends on delivery.** The evaluation path never waits for, or
  writes, the outbox; the kernel stays the source of truth and a webhook only tells a person.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from chio_kernel._errors import KernelInputError
from chio_kernel._ids import _uuid7_str
from chio_kernel._store import StoreReader, StoreWriter, WebhookRow

__all__ = [
    "DEFAULT_BACKOFF",
    "EVENT_TYPE",
    "SECRET_PREFIX",
    "WebhookDeliverer",
    "WebhookOutbox",
    "WebhookSettings",
    "new_webhook_secret",
    "sign_webhook",
    "verify_webhook",
]

_log = logging.getLogger("chio_kernel.webhooks")

#: The prefix of a Standard Webhooks secret; the rest is the base64 of the key bytes.
SECRET_PREFIX = "whsec_"
#: The ``type`` of the payload sent when a call goes pending.
EVENT_TYPE = "approval.pending"
#: Seconds to wait before each retry (the first attempt is at once): 8 attempts over about 4 hours.
DEFAULT_BACKOFF: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 10800)
#: Seconds a claimed delivery is reserved for the deliverer that claimed it.
CLAIM_LEASE = 60.0
#: A receiver's timestamp tolerance (Standard Webhooks recommends five minutes).
TIMESTAMP_TOLERANCE = 300


def new_webhook_secret() -> str:
    """Make a fresh webhook signing secret.

    Returns:
        ``whsec_`` followed by 32 random bytes in base64 (the Standard Webhooks secret form).
    """
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (KernelInputError saying what to pass)."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise KernelInputError(
            "a webhook secret looks like 'whsec_<base64>' (make one with "
            "`python -c 'import chio_kernel; print(chio_kernel.new_webhook_secret())'`)"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise KernelInputError("the webhook secret after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise KernelInputError(f"the webhook secret holds {len(key)} bytes; use at least 16 (32 recommended)")
    return key


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one delivery: ``v1,<base64 HMAC-SHA256>``.

    Args:
        secret: the ``whsec_...`` secret shared with the receiver.
        msg_id: the ``webhook-id`` header (the same on every retry of one delivery).
        timestamp: the ``webhook-timestamp`` header (unix seconds of this attempt).
        body: the exact request body.

    Returns:
        ``"v1,<base64>"`` of HMAC-SHA256 over ``"{msg_id}.{timestamp}.{body}"``.

    Raises:
        KernelInputError: the secret is not a ``whsec_`` secret.
    """
    mac = hmac.new(_secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_webhook(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
    tolerance: int = TIMESTAMP_TOLERANCE,
) -> bool:
    """Check a received delivery the way a Standard Webhooks receiver does.

    Args:
        secret: the shared ``whsec_...`` secret.
        headers: the request headers (lower-case names: ``webhook-id``, ``webhook-timestamp``,
            ``webhook-signature``, which may list several space-separated signatures).
        body: the exact request body.
        now: the receiver's clock (default ``time.time()``).
        tolerance: seconds the timestamp may differ from ``now``.

    Returns:
        True if one ``v1`` signature matches and the timestamp is within the tolerance.
    """
    msg_id, stamp, sigs = (headers.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    try:
        ts = int(stamp)
    except ValueError:
        return False
    if not msg_id or abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign_webhook(secret, msg_id, ts, body)
    return any(hmac.compare_digest(s, expected) for s in sigs.split() if s.startswith("v1,"))


def _check_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
        raise KernelInputError(f"a webhook URL is an http(s):// address of at most 2048 characters, got {url!r:.80}")
    return url


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how approvals are sent.

    Args:
        urls: the receivers (http or https URLs).
        secret: the ``whsec_...`` secret every delivery is signed with.
        inbox_url: the inbox's public address (``https://host/ui``); each payload links to
            ``{inbox_url}/approvals/{id}``. None: no link.
        backoff: seconds before each retry; the number of attempts is ``len(backoff) + 1``.
        timeout: seconds one POST may take.
        poll_seconds: how often the deliverer looks for new approvals and due retries.
    """

    urls: tuple[str, ...]
    secret: str
    inbox_url: str | None = None
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    timeout: float = 10.0
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise KernelInputError("pass at least one webhook URL (--webhook URL)")
        for url in self.urls:
            _check_url(url)
        _secret_key(self.secret)
        if any(b < 0 for b in self.backoff) or self.timeout <= 0 or self.poll_seconds <= 0:
            raise KernelInputError("webhook backoff, timeout and poll interval must be positive seconds")


def _payload(approval: Mapping[str, Any], inbox_url: str | None, now: float) -> str:
    """The JSON body of one delivery: Standard Webhooks' ``{type, timestamp, data}`` envelope."""
    data = dict(approval)
    if inbox_url:
        data["inbox_url"] = f"{inbox_url.rstrip('/')}/approvals/{approval['id']}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return json.dumps({"type": EVENT_TYPE, "timestamp": stamp, "data": data}, ensure_ascii=False, sort_keys=True)


def delivery_view(row: WebhookRow) -> dict[str, Any]:
    """One delivery as the inbox and the JSON answers show it (the body left out)."""
    return {
        "id": row.id, "approval_id": row.approval_id, "url": row.url, "state": row.state,
        "attempts": row.attempts, "next_at": row.next_at, "last_error": row.last_error,
        "created_at": row.created_at, "delivered_at": row.delivered_at,
    }


class WebhookOutbox:
    """The outbox in the kernel's store: queue, claim, record, list, retry."""

    def __init__(
        self,
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        clock: Callable[[], float],
        get_approval: Callable[[str], dict[str, Any] | None],
    ) -> None:
        """Keep deliveries in the store via ``read`` / ``write``; ``get_approval`` gives the payload."""
        self._read, self._write, self._clock, self._get_approval = read, write, clock, get_approval

    def enqueue(self, urls: Sequence[str], inbox_url: str | None = None) -> int:
        """Queue every pending approval not yet queued for each URL; returns how many were queued."""
        now = self._clock()
        with self._read() as st:
            todo = [(url, aid) for url in urls for aid in st.unsent_approvals(url, now)]
        if not todo:
            return 0
        rows = []
        for url, aid in todo:
            approval = self._get_approval(aid)
            if approval is not None and approval["status"] == "pending":
                body = _payload(approval, inbox_url, now)
                rows.append(WebhookRow("msg_" + _uuid7_str(), aid, url, body, now, "pending", 0, now))
        with self._write() as st:
            return sum(st.insert_webhook(row) for row in rows)

    def claim(self, limit: int = 20, lease: float = CLAIM_LEASE) -> list[WebhookRow]:
        """The due deliveries, reserved for ``lease`` seconds (their ``next_at`` moved ahead)."""
        now = self._clock()
        with self._write() as st:
            rows = st.due_webhooks(now, limit)
            for row in rows:
                st.update_webhook(replace(row, next_at=now + lease))
        return rows

    def record(self, row: WebhookRow, error: str | None, backoff: Sequence[float]) -> WebhookRow:
        """Write one attempt's outcome: delivered, retried after ``backoff[attempt]``, or dead."""
        now = self._clock()
        attempts = row.attempts + 1
        if error is None:
            done = replace(row, state="delivered", attempts=attempts, last_error=None, delivered_at=now)
        elif attempts > len(backoff):
            done = replace(row, state="dead", attempts=attempts, last_error=error[:500])
        else:
            done = replace(row, attempts=attempts, next_at=now + backoff[attempts - 1], last_error=error[:500])
        with self._write() as st:
            st.update_webhook(done)
        return done

    def deliveries(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries newest first (``state``: ``pending``, ``delivered``, ``dead`` or None for all)."""
        if state not in (None, "pending", "delivered", "dead"):
            raise KernelInputError(f"state must be pending, delivered, dead or None, got {state!r:.40}")
        with self._read() as st:
            return [delivery_view(r) for r in st.webhook_deliveries(state, limit)]

    def retry(self, delivery_id: str) -> bool:
        """Send a dead letter again (attempts start over); False if no dead delivery has this id."""
        with self._write() as st:
            for row in st.webhook_deliveries("dead", 10_000):
                if row.id == delivery_id:
                    st.update_webhook(replace(row, state="pending", attempts=0, next_at=self._clock()))
                    return True
        return False


class WebhookDeliverer:
    """The background thread that queues and sends approval webhooks (see the module doc)."""

    def __init__(self, outbox: WebhookOutbox, settings: WebhookSettings) -> None:
        """Deliver ``outbox``'s rows as ``settings`` say; call :meth:`start` to begin."""
        self.outbox, self.settings = outbox, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookDeliverer:
        """Start the thread (a daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._loop, name="chio-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after its current POST."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.settings.timeout, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    self.run_once(client)
                except Exception:  # noqa: BLE001 - the store may be busy or gone; try again next tick
                    _log.warning("webhook deliverer tick failed", exc_info=True)
                self._stop.wait(self.settings.poll_seconds)

    def run_once(self, client: Any) -> list[WebhookRow]:
        """One tick: queue new approvals, send what is due; returns the rows as recorded."""
        self.outbox.enqueue(self.settings.urls, self.settings.inbox_url)
        return [self.send(client, row) for row in self.outbox.claim()]

    def send(self, client: Any, row: WebhookRow) -> WebhookRow:
        """POST one delivery (signed now) with ``client`` (an ``httpx.Client``) and record the outcome."""
        body = row.body.encode()
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "chio-durable-webhooks",
            "webhook-id": row.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_webhook(self.settings.secret, row.id, stamp, body),
        }
        try:
            answer = client.post(row.url, content=body, headers=headers)
            error = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
        except Exception as err:  # noqa: BLE001 - unreachable, timed out, refused: retried
            error = f"{type(err).__name__}: {err}"
        return self.outbox.record(row, error, self.settings.backoff)
