"""Run the ``chio-durable`` CLI for the tests: in this process by default (``run_cli``), or as a user
does, the installed script in a subprocess (``run_cli_process``, ``popen_cli``). Both see the same
environment (``cli_env``) and answer ``.returncode``, ``.stdout``, ``.stderr``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli_inprocess import run_cli_in_process

__all__ = ["cli_cmd", "cli_env", "popen_cli", "run_cli", "run_cli_process"]


def cli_cmd() -> list[str]:
    """The installed `chio-durable` script of this venv, else `python -m chio_kernel.cli`."""
    script = Path(sys.executable).parent / "chio-durable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "chio_kernel.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME", "CHIO_STORE"}}
    env.setdefault("COLUMNS", "250")  # rich tables: no wrapping in assertions
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI app in this process (typer's CliRunner), with the environment a subprocess would get.
    ``timeout`` is kept for the signature of ``run_cli_process``; an in-process call has none."""
    return run_cli_in_process(args, cli_env(**env))


def run_cli_process(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `chio-durable` script, in a subprocess."""
    return subprocess.run([*cli_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def popen_cli(*args: str, **env: str) -> subprocess.Popen[str]:
    kw: Any = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": cli_env(**env)}
    return subprocess.Popen([*cli_cmd(), *args], **kw)
