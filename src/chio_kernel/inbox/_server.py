"""``chio-durable ui``: the inbox (at ``/ui``) and the webhook deliverer on the kernel's store,
without the sidecar's API (docs/inbox.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from chio_kernel._errors import KernelInputError
from chio_kernel._webhooks import WebhookDeliverer, WebhookSettings
from chio_kernel.inbox._app import InboxSettings, create_inbox_app

__all__ = ["inbox_root_app", "serve_inbox", "start_deliverer"]

MOUNT = "/ui"


async def _to_inbox(request: Request) -> Response:
    return RedirectResponse(f"{MOUNT}/approvals", status_code=303)


def inbox_root_app(kernel: Any, settings: InboxSettings | None = None) -> Starlette:
    """The inbox mounted at ``/ui`` (``/`` redirects there): what ``chio-durable ui`` serves."""
    return Starlette(routes=[Route("/", _to_inbox), Mount(MOUNT, app=create_inbox_app(kernel, settings))])


def start_deliverer(kernel: Any, webhooks: WebhookSettings | None) -> WebhookDeliverer | None:
    """Start the webhook deliverer on ``kernel``'s outbox (None when no webhook is configured)."""
    return None if webhooks is None else WebhookDeliverer(kernel.webhooks, webhooks).start()


def serve_inbox(
    host: str = "127.0.0.1",
    port: int = 9091,
    *,
    data_dir: str | Path | None = None,
    settings: InboxSettings | None = None,
    webhooks: WebhookSettings | None = None,
    tls: tuple[str, str] | None = None,
    on_ready: Callable[[Any], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the inbox until interrupted.

    Args:
        host: the address to bind; beyond loopback only with ``tls`` (credentials cross the network).
        port: the port.
        data_dir: the kernel's data directory (its store: SQLite there, or ``$CHIO_STORE``).
        settings: engine links, session lifetime.
        webhooks: where to send pending approvals (the deliverer runs in this process).
        tls: ``(certificate file, key file)`` to serve HTTPS.
        on_ready: called with the kernel once it is open.
        log_level: uvicorn's log level.

    Raises:
        KernelInputError: a non-loopback host without TLS.
    """
    import uvicorn

    from chio_kernel._kernel import Kernel
    from chio_kernel.sidecar._auth import is_loopback

    if not is_loopback(host) and tls is None:
        raise KernelInputError(
            f"refusing to serve the inbox on {host!r} over plain HTTP: approvers' credentials would cross the "
            "network in clear. Pass --tls-cert and --tls-key, or bind 127.0.0.1 behind your TLS proxy."
        )
    kernel = Kernel(data_dir=data_dir)
    deliverer = start_deliverer(kernel, webhooks)
    try:
        if on_ready is not None:
            on_ready(kernel)
        uvicorn.run(
            inbox_root_app(kernel, settings), host=host, port=port, log_level=log_level, lifespan="off",
            server_header=False, ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
        )
    finally:
        if deliverer is not None:
            deliverer.stop()
        kernel.close()
