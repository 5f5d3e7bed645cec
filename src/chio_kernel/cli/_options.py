"""The options every command shares, as ``Annotated`` types: ``--data-dir``, ``--store``, ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["CursorOpt", "DataDir", "JsonFlag", "LimitOpt", "StoreOpt", "print_next_cursor"]

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
