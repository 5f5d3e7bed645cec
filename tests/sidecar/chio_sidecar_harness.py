"""Helpers to run the real sidecar as a subprocess and the CLI in this process (``run_cli``) or as the
installed script (``run_cli_process``); imported by the sidecar tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chio_kernel.testing import SidecarProcess, free_port
from cli_inprocess import run_cli_in_process

__all__ = ["Sidecar", "cli_cmd", "cli_env", "free_port", "run_cli", "run_cli_process"]


def cli_cmd() -> list[str]:
    """The installed `chio-durable` script of this venv, else `python -m chio_kernel.cli`."""
    script = Path(sys.executable).parent / "chio-durable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "chio_kernel.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME"}}
    env.update(extra)
    env.setdefault("COLUMNS", "200")  # rich tables: no wrapping in assertions
    return env


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI app in this process (typer's CliRunner), with the environment a subprocess would get.
    ``timeout`` is kept for the signature of ``run_cli_process``; an in-process call has none."""
    return run_cli_in_process(args, cli_env(**env))


def run_cli_process(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `chio-durable` script, in a subprocess."""
    return subprocess.run(
        [*cli_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=cli_env(**env)
    )


class Sidecar(SidecarProcess):
    """The shared ``chio_kernel.testing.SidecarProcess``, run through the installed CLI script."""

    def __init__(self, data_dir: Path, *, token: str | None = None, port: int | None = None) -> None:
        super().__init__(data_dir, port, token, command=cli_cmd())
