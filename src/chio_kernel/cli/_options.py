"""The options every command shares, as ``Annotated`` types: ``--data-dir``, ``--store``, ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "CheckpointEvery", "CheckpointInterval", "MaxDelegationDepth", "MaxGrants", "OtelFlag",
    "CursorOpt", "DataDir", "InboxUrl", "JsonFlag", "LimitOpt", "PrefectUi", "StoreOpt", "TemporalNamespace",
    "TemporalUi", "WebhookSecret", "WebhookUrls", "print_next_cursor",
]

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Kernel data directory (signing key, receipt store). Default: $CHIO_HOME or ~/.chio-durable.",
        show_default=False,
        readable=False,  # a directory this OS user may not read gets the CLI's own sentence, not click's
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="CHIO_STORE",
        help="The store: a PostgreSQL URL (postgresql://user@host/db) shared by a fleet of kernels, or "
        "'sqlite' (kernel.db in the data directory). Default: $CHIO_STORE, else sqlite.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many (one page; 1 to 1000).")]
CursorOpt = Annotated[
    str | None,
    typer.Option("--cursor", help="Start after the previous page: the cursor it printed ('more: --cursor ...')."),
]


def print_next_cursor(next_cursor: str | None) -> None:
    """After a page: ``more: --cursor X`` on stderr while more follow (stdout stays the page itself)."""
    if next_cursor is not None:
        typer.echo(f"more: --cursor {next_cursor}", err=True)

# --- the inbox and its webhooks (`chio-durable sidecar` and `chio-durable ui`; docs/inbox.md) ---

TemporalUi = Annotated[
    str | None,
    typer.Option("--temporal-ui", envvar="CHIO_TEMPORAL_UI", show_default=False,
                 help="The Temporal UI's address (http://localhost:8233): the inbox links workflow ids there."),
]
TemporalNamespace = Annotated[
    str, typer.Option("--temporal-namespace", help="The Temporal namespace in those links."),
]
PrefectUi = Annotated[
    str | None,
    typer.Option("--prefect-ui", envvar="CHIO_PREFECT_UI", show_default=False,
                 help="The Prefect UI's address (http://127.0.0.1:4200): the inbox links flow run ids there."),
]
WebhookUrls = Annotated[
    list[str] | None,
    typer.Option("--webhook", show_default=False,
                 help="POST every pending approval, signed (Standard Webhooks), to this URL (repeatable)."),
]
WebhookSecret = Annotated[
    str | None,
    typer.Option("--webhook-secret", envvar="CHIO_WEBHOOK_SECRET", show_default=False,
                 help="The whsec_... secret the webhooks are signed with (env CHIO_WEBHOOK_SECRET)."),
]
InboxUrl = Annotated[
    str | None,
    typer.Option("--inbox-url", show_default=False,
                 help="The inbox's address as people reach it (https://host/ui), linked from each webhook."),
]


# --- the sidecar's kernel settings (`chio-durable sidecar`; docs/checkpoints.md, docs/kernel.md) ---

CheckpointEvery = Annotated[
    int | None,
    typer.Option("--checkpoint-every", envvar="CHIO_CHECKPOINT_EVERY", min=0, show_default=False,
                 help="Cut a signed Merkle checkpoint every N receipts (default 256; 0: off)."),
]
CheckpointInterval = Annotated[
    float | None,
    typer.Option("--checkpoint-interval", envvar="CHIO_CHECKPOINT_INTERVAL", min=0.01, show_default=False,
                 help="... or after this many seconds with receipts pending, whichever first (default 2)."),
]
MaxGrants = Annotated[
    int | None,
    typer.Option("--max-grants", envvar="CHIO_MAX_GRANTS", min=1, show_default=False,
                 help="Grants one capability may hold; more is refused with 422 (default 1000)."),
]
MaxDelegationDepth = Annotated[
    int | None,
    typer.Option("--max-delegation-depth", envvar="CHIO_MAX_DELEGATION_DEPTH", min=1, show_default=False,
                 help="Delegation links one capability may carry; a deeper attenuation is refused with 422 "
                 "(default 32)."),
]
OtelFlag = Annotated[
    bool,
    typer.Option(
        "--otel",
        help="Export a span per request, the request latency and the approval answers over OTLP "
        "(OTEL_EXPORTER_OTLP_* variables; needs pip install 'chio-durable[otel]').",
    ),
]
