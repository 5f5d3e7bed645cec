"""Run the real Chio sidecar as a subprocess, for tests of your own flows and workers.

Start ``chio-durable sidecar`` over a kernel data directory on a free loopback port, wait until
``GET /chio/health`` answers, point the real ``chio_sdk.ChioClient`` at :attr:`SidecarProcess.url`,
and stop it afterwards::

    from chio_sdk import ChioClient
    from chio_kernel.testing import SidecarProcess

    def test_my_flow(tmp_path):
        with SidecarProcess(tmp_path / "kernel") as sidecar:
            client = ChioClient(sidecar.url)
            ...

The helper is synchronous (``start`` blocks until healthy, a second or two). From async code, run
it off the event loop: ``sidecar = await asyncio.to_thread(SidecarProcess(data_dir).start)``.
``kill()`` sends SIGKILL (no shutdown, no flush: what a crash looks like), ``stop()`` terminates
gracefully. This module is not imported by ``chio_kernel`` itself.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["SidecarProcess", "free_port"]

_LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Find a TCP port on 127.0.0.1 that is free right now (the OS picks it).

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    """Whether something already accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((_LOOPBACK, port)) == 0


class SidecarProcess:
    """One real sidecar subprocess over ``data_dir`` on ``127.0.0.1:port``.

    Args:
        data_dir: the kernel's data directory (created by the sidecar if missing). Other processes
            (a ``LocalChioClient``, the CLI) may open the same directory at the same time.
        port: the loopback port; default a free one (:func:`free_port`).
        token: if given, the sidecar requires ``Authorization: Bearer <token>`` on every request
            (passed as ``CHIO_SIDECAR_TOKEN``, not on the command line).
        auth: ``"roles"`` to start it with ``--auth roles`` (every request needs a credential token;
            make them with ``Kernel(data_dir).add_credential``), ``"open"``, or None (the default).
        command: how to run the CLI; default ``[sys.executable, "-m", "chio_kernel.cli"]`` (this
            interpreter, so the same installed packages). ``sidecar --host … --port … --data-dir …``
            is appended.

    ``CHIO_HOME``, ``CHIO_SIDECAR_TOKEN`` and ``CHIO_SIDECAR_AUTH`` of the calling environment are not
    passed on: the data directory, token and mode are exactly the ones given here. The sidecar's output (stdout and
    stderr) is kept in :attr:`output` and quoted in the error when it fails to start.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        token: str | None = None,
        *,
        auth: str | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.token = token
        self.auth = auth
        self.url = f"http://{_LOOPBACK}:{self.port}"
        self.command = list(command) if command is not None else [sys.executable, "-m", "chio_kernel.cli"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=2000)
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def output(self) -> str:
        """What the sidecar printed so far (its last 2,000 lines)."""
        return "".join(self._lines)

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        """Launch the sidecar and wait until ``/chio/health`` answers 200.

        Args:
            timeout: seconds to wait for health before giving up.

        Returns:
            ``self``, running.

        Raises:
            RuntimeError: it is already running, the port is taken, it exited, or it was not healthy
                within ``timeout`` (then it is stopped first); the message quotes the sidecar's output.
        """
        if self.running:
            raise RuntimeError(f"sidecar on {self.url} is already running; stop() it first")
        if _answers(self.port):
            # else another server's health answer would pass for this sidecar's
            raise RuntimeError(f"port {self.port} on {_LOOPBACK} is already in use; pass another port (or none)")
        args = [*self.command, "sidecar", "--host", _LOOPBACK, "--port", str(self.port),
                "--data-dir", str(self.data_dir)]
        if self.auth is not None:
            args += ["--auth", self.auth]
        env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME", "CHIO_SIDECAR_AUTH"}}
        if self.token:
            env["CHIO_SIDECAR_TOKEN"] = self.token
        self._lines.clear()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        # drain the pipe in the background: an unread pipe fills up and blocks the sidecar
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True,
                                        name=f"chio-sidecar-{self.port}-output")
        self._reader.start()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1, headers=headers) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self._final_output()}")
                try:
                    status = http.get(self.url + "/chio/health").status_code
                    # in roles mode it answers 401 until asked with a credential: it is up all the same
                    up = status == 200 or (status == 401 and self.auth == "roles" and not self.token)
                    if up and self.proc.poll() is None:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sidecar did not become healthy on {self.url} in {timeout}s: {self._final_output()}")

    def kill(self) -> None:
        """SIGKILL the sidecar: no shutdown handlers, no flush (what a crash looks like)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate the sidecar gracefully (SIGKILL if it has not exited after 10 s). Idempotent."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> SidecarProcess:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SidecarProcess({self.url}, data_dir={str(self.data_dir)!r}, {state})"

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self._lines.append(line.decode(errors="replace"))

    def _final_output(self) -> str:
        # once the process has exited, let the reader take in its last lines before quoting them
        if self._reader is not None and self.proc is not None and self.proc.poll() is not None:
            self._reader.join(2)
        return self.output
