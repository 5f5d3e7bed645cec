"""``chio-durable sidecar``: serve the kernel over HTTP (``chio_kernel.sidecar``)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from chio_kernel.cli._common import CliError, _guarded, _resolve_dir, err
from chio_kernel.cli._options import (
    CheckpointEvery,
    CheckpointInterval,
    DataDir,
    InboxUrl,
    MaxDelegationDepth,
    MaxGrants,
    OtelFlag,
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


def _export_settings(settings: dict[str, Any]) -> None:
    """Put the settings given on the command line into the environment the kernel reads."""
    for env, value in settings.items():
        if value is not None:
            os.environ[env] = str(value)


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
    checkpoint_every: CheckpointEvery = None,
    checkpoint_interval: CheckpointInterval = None,
    max_grants: MaxGrants = None,
    max_delegation_depth: MaxDelegationDepth = None,
    otel: OtelFlag = False,
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
    _export_settings({  # the sidecar's Kernel reads them from the environment
        "CHIO_STORE": store, "CHIO_CHECKPOINT_EVERY": checkpoint_every, "CHIO_CHECKPOINT_INTERVAL": checkpoint_interval,
        "CHIO_MAX_GRANTS": max_grants, "CHIO_MAX_DELEGATION_DEPTH": max_delegation_depth,
    })

    def ready(kernel: Any) -> None:
        err.print(
            f"chio-durable sidecar on http://{host}:{port}  data dir {path}  "
            f"kernel key {kernel.public_key_hex}  {_MODE_LINES[mode]}",
            markup=False,
            highlight=False,
        )

    try:
        serve(host, port, data_dir=path, token=token, auth=auth, log_level=log_level, on_ready=ready,
              header_timeout=header_timeout, otel=otel,
              inbox=inbox_settings(temporal_ui, temporal_namespace, prefect_ui), webhooks=hooks)
    except (SidecarConfigError, KernelKeyMissingError, KernelKeyRetiredError, TelemetryMissing) as e:
        raise CliError(str(e)) from None
