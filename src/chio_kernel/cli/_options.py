"""The options every command shares, as ``Annotated`` types: ``--data-dir``, ``--store``, ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DataDir", "JsonFlag", "StoreOpt"]

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
