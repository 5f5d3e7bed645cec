"""Helpers to run the real sidecar and CLI as subprocesses (imported by the sidecar tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    return subprocess.run(
        [*cli_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=cli_env(**env)
    )


class Sidecar:
    """One sidecar subprocess on a free loopback port over ``data_dir``."""

    def __init__(self, data_dir: Path, *, token: str | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"sidecar-{self.port}.log"

    def start(self, timeout: float = 30.0) -> Sidecar:
        args = [*cli_cmd(), "sidecar", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        env = cli_env()
        if self.token:
            env["CHIO_SIDECAR_TOKEN"] = self.token
        log = self.log.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/chio/health", headers=headers, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sidecar did not become healthy in {timeout}s: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flush — what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
