"""``chio-durable demo``: the walkthrough (``chio_kernel._demo``), printed on the CLI's console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from chio_kernel.cli._common import _guarded, out
from chio_kernel.cli._options import StoreOpt

__all__ = ["demo"]


@_guarded
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Kernel data directory for the demo (default: a fresh temp directory)."),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Show governance end to end on the embedded kernel (no API key, no services)."""
    from chio_kernel._demo import run

    if store is not None:  # the demo's kernels read $CHIO_STORE
        os.environ["CHIO_STORE"] = store

    code = run(out, data_dir)
    if code:
        raise typer.Exit(code)
