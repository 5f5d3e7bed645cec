"""The ``chio-durable`` typer app, assembled in one place: the root app and its groups are made here
and every command is registered here, in help order, from the command modules (which only define
functions)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chio_kernel.cli import _approvals, _budgets, _capabilities, _keys, _receipts
from chio_kernel.cli._common import _read_environment_into_consoles
from chio_kernel.cli._demo import demo
from chio_kernel.cli._sidecar import sidecar

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


def _build() -> typer.Typer:
    root = typer.Typer(name="chio-durable", help=_HELP, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode=None)
    root.callback()(_root)
    root.command()(sidecar)
    root.command()(demo)

    capability = _group("Issue, attenuate, revoke and list capability tokens.")
    capability.command("create")(_capabilities.capability_create)
    capability.command("attenuate")(_capabilities.capability_attenuate)
    capability.command("revoke")(_capabilities.capability_revoke)
    capability.command("list")(_capabilities.capability_list)
    capability.command("show")(_capabilities.capability_show)
    root.add_typer(capability, name="capability")

    receipts = _group("List, follow, show, verify and export signed receipts.")
    receipts.command("show")(_receipts.receipts_show)
    receipts.command("verify")(_receipts.receipts_verify)
    receipts.command("export")(_receipts.receipts_export)
    receipts.command("list")(_receipts.receipts_list)
    receipts.command("tail")(_receipts.receipts_tail)
    root.add_typer(receipts, name="receipts")

    keys = _group("The kernel keys registered in a shared PostgreSQL store (a fleet).")
    keys.command("list")(_keys.keys_list)
    keys.command("retire")(_keys.keys_retire)
    root.add_typer(keys, name="keys")

    approvals = _group("Human approvals of calls above a require_approval_above threshold: list, show, approve, deny.")
    approvals.command("list")(_approvals.approvals_list)
    approvals.command("show")(_approvals.approvals_show)
    approvals.command("approve")(_approvals.approvals_approve)
    approvals.command("deny")(_approvals.approvals_deny)
    approvals.command("trust")(_approvals.approvals_trust)
    root.add_typer(approvals, name="approvals")

    budgets = _group("Money budgets: captured, held and remaining amounts; settle, release and expire holds.")
    budgets.command("show")(_budgets.budgets_show)
    budgets.command("settle")(_budgets.budgets_settle)
    budgets.command("release")(_budgets.budgets_release)
    budgets.command("expire")(_budgets.budgets_expire)
    root.add_typer(budgets, name="budgets")
    return root


app = _build()


def main() -> None:
    """Entry point for ``python -m chio_kernel.cli``."""
    app()
