"""``chio-durable``: the command line of the embedded kernel (typer + rich).

Commands: ``sidecar``; ``capability create|attenuate|revoke|list|show``;
``receipts list|tail|show|verify|export|proof|verify-proof|verify-evidence``;
``checkpoints list|show|cut|consistency``; ``approvals list|show|approve|deny|trust``;
``budgets show|settle|release|expire``; ``keys list|retire``; ``demo``; ``--version``. Every command
takes ``--data-dir`` (default ``$CHIO_HOME`` or ``~/.chio-durable``); listing commands print tables for
people and ``--json`` for scripts. Errors are one line on stderr and a non-zero exit code, never a
traceback. See ``docs/cli.md``.

This package's face only re-exports: the app is assembled in ``_app.py`` from the command modules
(``_capabilities``, ``_receipts``, ``_checkpoints``, ``_approvals``, ``_budgets``, ``_keys``, ``_sidecar``, ``_demo``),
which share ``_options.py`` (the common options) and ``_common.py`` (consoles, errors, helpers).
"""

from __future__ import annotations

from chio_kernel.cli._app import app, main
from chio_kernel.cli._capabilities import parse_grant
from chio_kernel.cli._common import CliError

__all__ = ["CliError", "app", "main", "parse_grant"]
