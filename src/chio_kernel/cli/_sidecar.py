"""``chio-durable sidecar``: serve the kernel over HTTP (``chio_kernel.sidecar``)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from chio_kernel.cli._common import CliError, _guarded, _resolve_dir, err
from chio_kernel.cli._options import DataDir, StoreOpt

__all__ = ["sidecar"]


@_guarded
def sidecar(
    host: Annotated[str, typer.Option(help="Address to bind. Non-loopback requires --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 9090,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CHIO_SIDECAR_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every request (env CHIO_SIDECAR_TOKEN).",
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
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Export a span per request, the request latency and the approval answers over OTLP "
            "(OTEL_EXPORTER_OTLP_* variables; needs pip install 'chio-durable[otel]').",
        ),
    ] = False,
) -> None:
    """Serve the kernel over HTTP for chio_sdk.ChioClient (loopback by default)."""
    from chio_kernel._postgres_store import KernelKeyRetiredError
    from chio_kernel._kernel import KernelKeyMissingError
    from chio_kernel._telemetry import TelemetryMissing
    from chio_kernel.sidecar import SidecarConfigError, check_bind, serve

    try:
        check_bind(host, token)
    except SidecarConfigError as e:
        raise CliError(str(e)) from None
    path = _resolve_dir(data_dir)
    if store is not None:  # the sidecar's Kernel reads $CHIO_STORE
        os.environ["CHIO_STORE"] = store

    def ready(kernel: Any) -> None:
        auth = "bearer token required" if token else "no auth (loopback only)"
        err.print(
            f"chio-durable sidecar on http://{host}:{port}  data dir {path}  "
            f"kernel key {kernel.public_key_hex[:16]}…  {auth}",
            markup=False,
            highlight=False,
        )

    try:
        serve(host, port, data_dir=path, token=token, log_level=log_level, on_ready=ready,
              header_timeout=header_timeout, otel=otel)
    except (SidecarConfigError, KernelKeyMissingError, KernelKeyRetiredError, TelemetryMissing) as e:
        raise CliError(str(e)) from None
