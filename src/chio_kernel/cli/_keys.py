"""``chio-durable keys list|retire``: the kernel keys registered in a shared PostgreSQL store (a fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from chio_kernel._render import _ts
from chio_kernel.cli._common import CliError, _guarded, _kernel, _print_json, out
from chio_kernel.cli._options import DataDir, JsonFlag, StoreOpt

__all__ = ["keys_list", "keys_retire"]


def _fleet_kernel(data_dir: Path | None, store: str | None) -> Any:
    kernel = _kernel(data_dir, store=store)  # listing or retiring keys mints and registers none
    if not hasattr(kernel, "registered_keys"):
        raise CliError("kernel keys are registered in a PostgreSQL store only: pass --store postgresql://... "
                       "(or set CHIO_STORE)")
    return kernel


@_guarded
def keys_list(data_dir: DataDir = None, store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Every kernel key registered in the store: which host/data dir, since when, retired or active."""
    from chio_kernel._render import TableColumn, fitted_table

    keys = _fleet_kernel(data_dir, store).registered_keys()
    if as_json:
        _print_json(keys)
        return
    columns = [TableColumn("public key", is_id=True), TableColumn("status", rank=0),
               TableColumn("host:data dir", rank=1), TableColumn("registered", rank=2)]
    rows = []
    for k in keys:
        status = f"retired {_ts(int(k['retired_at']))} ({k['retired_reason']})" if k["retired_at"] else "active"
        mine = " (this kernel)" if k["this_kernel"] else ""
        # the key is copied whole (keys retire KEY); the label is user text: a Text cell is never markup
        rows.append([Text(k["public_key"]), Text(status + mine), Text(str(k["label"])), _ts(int(k["registered_at"]))])
    out.print(fitted_table("kernel keys", columns, rows, out.width))


@_guarded
def keys_retire(
    public_key: Annotated[str, typer.Argument(help="The 64-hex-char public key to retire.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the store).")] = "retired",
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Retire a kernel key: it signs nothing more and capabilities it issued deny on every kernel;
    receipts it signed before still verify."""
    _fleet_kernel(data_dir, store).retire_key(public_key, reason)
    out.print(f"retired kernel key {public_key}", markup=False, highlight=False)
