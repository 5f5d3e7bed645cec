"""``chio-durable ui``: the approvals inbox on the kernel's store (``chio_kernel.inbox``), and the
inbox/webhook options it shares with ``chio-durable sidecar``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from chio_kernel.cli._common import CliError, _guarded, _resolve_dir, err
from chio_kernel.cli._options import (
    DataDir,
    InboxUrl,
    PrefectUi,
    StoreOpt,
    TemporalNamespace,
    TemporalUi,
    WebhookSecret,
    WebhookUrls,
)

__all__ = ["inbox_settings", "ui", "webhook_settings"]


def inbox_settings(temporal_ui: str | None, temporal_namespace: str, prefect_ui: str | None) -> Any:
    """The inbox's engine links from the command line."""
    from chio_kernel.inbox import InboxSettings

    return InboxSettings(temporal_ui=temporal_ui, temporal_namespace=temporal_namespace, prefect_ui=prefect_ui)


def webhook_settings(urls: list[str] | None, secret: str | None, inbox_url: str | None) -> Any:
    """The webhook settings from the command line (None without ``--webhook``; CliError saying what is missing)."""
    from chio_kernel import KernelInputError, WebhookSettings

    if not urls:
        return None
    if not secret:
        raise CliError(
            "--webhook needs --webhook-secret whsec_... (or $CHIO_WEBHOOK_SECRET); make one with "
            "`python -c 'import chio_kernel; print(chio_kernel.new_webhook_secret())'` and give it to the receiver"
        )
    try:
        return WebhookSettings(urls=tuple(urls), secret=secret, inbox_url=inbox_url)
    except KernelInputError as e:
        raise CliError(str(e)) from None


@_guarded
def ui(
    host: Annotated[str, typer.Option(help="Address to bind. Non-loopback requires --tls-cert and --tls-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 9091,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    temporal_ui: TemporalUi = None,
    temporal_namespace: TemporalNamespace = "default",
    prefect_ui: PrefectUi = None,
    webhook: WebhookUrls = None,
    webhook_secret: WebhookSecret = None,
    inbox_url: InboxUrl = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the approvals inbox (a web page for approvers) on the kernel's store, at /ui."""
    from chio_kernel import KernelInputError
    from chio_kernel.inbox import serve_inbox

    if (tls_cert is None) != (tls_key is None):
        raise CliError("pass both --tls-cert and --tls-key, or neither")
    path = _resolve_dir(data_dir)
    if store is not None:
        os.environ["CHIO_STORE"] = store
    scheme = "https" if tls_cert else "http"
    hooks = webhook_settings(webhook, webhook_secret, inbox_url or f"{scheme}://{host}:{port}/ui")

    def ready(kernel: Any) -> None:
        sent = f"; webhooks to {len(hooks.urls)} URL(s)" if hooks else ""
        err.print(f"chio-durable inbox on {scheme}://{host}:{port}/ui  data dir {path}{sent}", markup=False, highlight=False)

    try:
        serve_inbox(host, port, data_dir=path, settings=inbox_settings(temporal_ui, temporal_namespace, prefect_ui),
                    webhooks=hooks, tls=(str(tls_cert), str(tls_key)) if tls_cert and tls_key else None,
                    on_ready=ready, log_level=log_level)
    except KernelInputError as e:
        raise CliError(str(e)) from None
