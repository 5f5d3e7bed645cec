"""``chio-durable credentials add|list|revoke``: the sidecar's credentials (roles), made and revoked
on the store by its operator (docs/security.md)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from chio_kernel._render import _ts
from chio_kernel.cli._common import CliError, _guarded, _kernel, _print_json, err, out
from chio_kernel.cli._options import DataDir, JsonFlag, StoreOpt

__all__ = ["credentials_add", "credentials_list", "credentials_revoke"]

NameArg = Annotated[str, typer.Argument(help="The credential's name (e.g. alice, worker-1): 1-64 letters, digits, _ . @ -.")]


@_guarded
def credentials_add(
    name: NameArg,
    role: Annotated[str, typer.Option("--role", help="workload, approver or operator.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Make a credential and print its token ONCE (the store keeps only its hash)."""
    from chio_kernel._errors import CredentialError

    kernel = _kernel(data_dir, must_exist=False, store=store)
    try:
        token = kernel.add_credential(name, role)
    except CredentialError as e:
        raise CliError(str(e)) from None
    if as_json:
        _print_json({"name": name, "role": role, "token": token})
        return
    out.print(token, markup=False, highlight=False)
    err.print(
        f"credential {name!r} ({role}) made; the token above is shown once: give it to {name} "
        "(Authorization: Bearer TOKEN, or CHIO_SIDECAR_TOKEN)",
        markup=False, highlight=False,
    )


@_guarded
def credentials_list(data_dir: DataDir = None, store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Every credential: name, role, when made, revoked or active (never a token)."""
    from rich.table import Table

    rows = _kernel(data_dir, store=store).list_credentials()
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"credentials ({len(rows)})")
    for col in ("name", "role", "created", "status"):
        table.add_column(col)
    for c in rows:
        status = "active" if c["active"] else f"revoked {_ts(int(c['revoked_at']))}"
        table.add_row(Text(c["name"]), c["role"], _ts(int(c["created_at"])), status)
    out.print(table)


@_guarded
def credentials_revoke(name: NameArg, data_dir: DataDir = None, store: StoreOpt = None) -> None:
    """Revoke a credential: its token authenticates nobody from now on (a running sidecar within 2 s)."""
    from chio_kernel._errors import CredentialError

    try:
        _kernel(data_dir, store=store).revoke_credential(name)
    except CredentialError as e:
        raise CliError(str(e)) from None
    out.print(f"revoked credential {name!r}", markup=False, highlight=False)
