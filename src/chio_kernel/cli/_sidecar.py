"""``chio-durable sidecar``: serve the kernel over HTTP (``chio_kernel.sidecar``)."""

from __future__ import annotations

import os
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
from chio_kernel.cli._ui import inbox_settings, webhook_settings

__all__ = ["sidecar"]

_MODE_LINES = {
    "open": "auth OPEN: no credentials, every local process is the operator (laptop/demo only; "
    "production: --auth roles, docs/security.md)",
    "token": "auth token: whoever holds the --token is the operator (production: --auth roles)",
    "roles": "auth roles: every request needs a credential token; each endpoint admits its roles",
}


@_guarded
def sidecar(
    host: Annotated[
        str, typer.Option(help="Address to bind. Non-loopback requires --auth roles or --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 9090,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CHIO_SIDECAR_TOKEN",
            help="Token mode: require 'Authorization: Bearer TOKEN' on every request; whoever holds it is "
            "the operator (env CHIO_SIDECAR_TOKEN). Production: --auth roles.",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            envvar="CHIO_SIDECAR_AUTH",
            help="'roles': every request carries a credential token (`chio-durable credentials add`) and "
            "each endpoint admits only its roles; 'open' (default without --token): no auth, loopback "
            "only, every request is the operator. See docs/security.md.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            envvar="CHIO_SIDECAR_HEADER_TIMEOUT",
            min=0.1,
            help="Close a connection that has not sent complete request headers within this many seconds.",
        ),
    ] = 10.0,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", envvar="CHIO_CHECKPOINT_EVERY", min=0, show_default=False,
                     help="Cut a signed Merkle checkpoint every N receipts (default 256; 0: off)."),
    ] = None,
    checkpoint_interval: Annotated[
        float | None,
        typer.Option("--checkpoint-interval", envvar="CHIO_CHECKPOINT_INTERVAL", min=0.01, show_default=False,
                     help="... or after this many seconds with receipts pending, whichever first (default 2)."),
    ] = None,
    max_grants: Annotated[
        int | None,
        typer.Option("--max-grants", envvar="CHIO_MAX_GRANTS", min=1, show_default=False,
                     help="Grants one capability may hold; more is refused with 422 (default 1000)."),
    ] = None,
    max_delegation_depth: Annotated[
        int | None,
        typer.Option("--max-delegation-depth", envvar="CHIO_MAX_DELEGATION_DEPTH", min=1, show_default=False,
                     help="Delegation links one capability may carry; a deeper attenuation is refused with 422 "
                     "(default 32)."),
    ] = None,
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Export a span per request, the request latency and the approval answers over OTLP "
            "(OTEL_EXPORTER_OTLP_* variables; needs pip install 'chio-durable[otel]').",
        ),
    ] = False,
    temporal_ui: TemporalUi = None,
    temporal_namespace: TemporalNamespace = "default",
    prefect_ui: PrefectUi = None,
    webhook: WebhookUrls = None,
    webhook_secret: WebhookSecret = None,
    inbox_url: InboxUrl = None,
) -> None:
    """Serve the kernel over HTTP for chio_sdk.ChioClient (loopback by default), and the approvals inbox at /ui."""
    from chio_kernel._postgres_store import KernelKeyRetiredError
    from chio_kernel._kernel import KernelKeyMissingError
    from chio_kernel._telemetry import TelemetryMissing
    from chio_kernel.sidecar import SidecarConfigError, check_bind, serve

    try:
        mode = check_bind(host, token, auth)
    except SidecarConfigError as e:
        raise CliError(str(e)) from None
    path = _resolve_dir(data_dir)
    hooks = webhook_settings(webhook, webhook_secret, inbox_url or f"http://{host}:{port}/ui")
    if store is not None:  # the sidecar's Kernel reads $CHIO_STORE
        os.environ["CHIO_STORE"] = store
    # ... and $CHIO_CHECKPOINT_EVERY / _INTERVAL
    if checkpoint_every is not None:
        os.environ["CHIO_CHECKPOINT_EVERY"] = str(checkpoint_every)
    if checkpoint_interval is not None:
        os.environ["CHIO_CHECKPOINT_INTERVAL"] = str(checkpoint_interval)
    for env, limit in (("CHIO_MAX_GRANTS", max_grants), ("CHIO_MAX_DELEGATION_DEPTH", max_delegation_depth)):
        if limit is not None:  # and the limits from the environment
            os.environ[env] = str(limit)

    def ready(kernel: Any) -> None:
        err.print(
            f"chio-durable sidecar on http://{host}:{port}  data dir {path}  "
            f"kernel key {kernel.public_key_hex[:16]}…  {_MODE_LINES[mode]}",
            markup=False,
            highlight=False,
        )

    try:
        serve(host, port, data_dir=path, token=token, auth=auth, log_level=log_level, on_ready=ready,
              header_timeout=header_timeout, otel=otel,
              inbox=inbox_settings(temporal_ui, temporal_namespace, prefect_ui), webhooks=hooks)
    except (SidecarConfigError, KernelKeyMissingError, KernelKeyRetiredError, TelemetryMissing) as e:
        raise CliError(str(e)) from None
