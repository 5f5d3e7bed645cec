"""Run the `chio-durable` typer app in this process (click's CliRunner), answering like a subprocess.

Starting a new interpreter per CLI call cost ~0.3 s on an idle machine and several seconds on a loaded
one; most CLI tests only need the app's behaviour, so they call it here. What a subprocess would give
them, this gives too:

- the environment is the one the subprocess would get (``env``, whole): ``os.environ`` is replaced for
  the call and restored afterwards, also when the command sets a variable itself (``--store`` sets
  ``$CHIO_STORE``);
- stdout and stderr apart, exit code from ``SystemExit`` (the CliRunner keeps stderr separate);
- an uncaught exception ends in its traceback on stderr and exit code 1, as Python does;
- a warning goes to stderr (as Python prints it), not into pytest's warning list, and so does a log
  record of WARNING or above (Python's last-resort handler: the CLI configures no logging);
- the app is turned into its click command once (typer rebuilds it from the signatures on every
  ``CliRunner.invoke``: ~40 ms a call); the command closes the kernels it opened itself.

The result is a ``subprocess.CompletedProcess`` (``.returncode``, ``.stdout``, ``.stderr``). A few tests
still run the installed script (``run_cli_process``) to prove the real entry point.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Mapping
from typing import TextIO

from click.testing import CliRunner
from typer.main import get_command

from chio_kernel.cli import app

__all__ = ["run_cli_in_process"]

_runner = CliRunner()
_COMMAND = get_command(app)


def _warning_to_stderr(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: TextIO | None = None, line: str | None = None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _set_environ(env: Mapping[str, str]) -> None:
    """Make ``os.environ`` equal ``env``, touching only the variables that differ."""
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def run_cli_in_process(args: tuple[str, ...] | list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    saved = dict(os.environ)
    _set_environ(env)
    root = logging.getLogger()
    root.addHandler(logging.lastResort)  # type: ignore[arg-type]  # writes to the sys.stderr of the moment
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_to_stderr
            result = _runner.invoke(_COMMAND, list(args), prog_name="chio-durable")
    finally:
        root.removeHandler(logging.lastResort)  # type: ignore[arg-type]
        _set_environ(saved)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit) and result.exc_info:
        stderr += "".join(traceback.format_exception(*result.exc_info))  # what Python prints, exit 1
    return subprocess.CompletedProcess(["chio-durable", *args], result.exit_code, result.stdout, stderr)
