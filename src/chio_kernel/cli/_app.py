"""The ``chio-durable`` typer app, assembled in one place: the root app and its groups are made here
and every command is registered here, in help order, from the command modules (which only define
functions)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from chio_kernel.cli import _approvals, _budgets, _capabilities, _checkpoints, _credentials, _keys, _receipts
from chio_kernel.cli._common import _read_environment_into_consoles
from chio_kernel.cli._demo import demo
from chio_kernel.cli._sidecar import sidecar
from chio_kernel.cli._ui import ui

__all__ = ["app", "main"]

_HELP = "Chio capability governance for durable Python workflows: the embedded kernel, its sidecar, receipts."


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("chio-durable")
        except PackageNotFoundError:  # running from a source tree that was never installed
            v = "unknown (not installed)"
        sys.stdout.write(f"chio-durable {v}\n")
        raise typer.Exit()


def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the installed chio-durable version and exit."),
    ] = False,
) -> None:
    """Chio capability governance for durable Python workflows: the embedded kernel, its sidecar, receipts."""
    _read_environment_into_consoles()


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True)


# the command groups, in help order: (name, help, ((command, function), ...))
_GROUPS: tuple[tuple[str, str, tuple[tuple[str, Callable[..., None]], ...]], ...] = (
    ("capability", "Issue, attenuate, revoke and list capability tokens.", (
        ("create", _capabilities.capability_create),
        ("attenuate", _capabilities.capability_attenuate),
        ("revoke", _capabilities.capability_revoke),
        ("list", _capabilities.capability_list),
        ("show", _capabilities.capability_show),
    )),
    ("receipts", "List, follow, show, verify, prove and export signed receipts.", (
        ("show", _receipts.receipts_show),
        ("verify", _receipts.receipts_verify),
        ("export", _receipts.receipts_export),
        ("list", _receipts.receipts_list),
        ("tail", _receipts.receipts_tail),
        ("proof", _checkpoints.receipts_proof),
        ("verify-proof", _checkpoints.receipts_verify_proof),
        ("verify-evidence", _checkpoints.receipts_verify_evidence),
    )),
    ("checkpoints", "Signed Merkle checkpoints over the receipt log: list, show, cut, consistency proofs.", (
        ("list", _checkpoints.checkpoints_list),
        ("show", _checkpoints.checkpoints_show),
        ("cut", _checkpoints.checkpoints_cut),
        ("consistency", _checkpoints.checkpoints_consistency),
    )),
    ("keys", "The kernel keys registered in a shared PostgreSQL store (a fleet).", (
        ("list", _keys.keys_list),
        ("retire", _keys.keys_retire),
    )),
    ("credentials", "The sidecar's credentials: one token per workload, approver or operator (docs/security.md).", (
        ("add", _credentials.credentials_add),
        ("list", _credentials.credentials_list),
        ("revoke", _credentials.credentials_revoke),
    )),
    ("approvals", "Human approvals of calls above a require_approval_above threshold: list, show, approve, deny.", (
        ("list", _approvals.approvals_list),
        ("show", _approvals.approvals_show),
        ("approve", _approvals.approvals_approve),
        ("deny", _approvals.approvals_deny),
        ("trust", _approvals.approvals_trust),
    )),
    ("budgets", "Money budgets: captured, held and remaining amounts; settle, release and expire holds.", (
        ("show", _budgets.budgets_show),
        ("holds", _budgets.budgets_holds),
        ("settle", _budgets.budgets_settle),
        ("release", _budgets.budgets_release),
        ("expire", _budgets.budgets_expire),
    )),
)


def _build() -> typer.Typer:
    root = typer.Typer(name="chio-durable", help=_HELP, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode=None)
    root.callback()(_root)
    root.command()(sidecar)
    root.command()(ui)
    root.command()(demo)

    for name, help_text, commands in _GROUPS:
        group = _group(help_text)
        for command, fn in commands:
            group.command(command)(fn)
        root.add_typer(group, name=name)
    return root


app = _build()


def main() -> None:
    """Entry point for ``python -m chio_kernel.cli``."""
    app()
