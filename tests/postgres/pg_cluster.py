"""A throwaway PostgreSQL 15 cluster on a random loopback port (tests and benchmarks only).

``initdb`` and ``pg_ctl`` run as the ``postgres`` user when we are root (the server refuses to run
as root), as ourselves otherwise, in a fresh temp directory that also holds the unix sockets. The
cluster trusts loopback connections and runs with ``fsync=off``: it is thrown away after the run,
and the tests kill kernel processes, not the server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Where Debian's postgresql-15 puts the server binaries (``dpkg -L postgresql-15``).
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
INSTALL_HINT = (
    "PostgreSQL 15 server binaries (initdb, pg_ctl) not found: `apt-get install postgresql-15` "
    "(or set $CHIO_PG_BIN to the directory holding initdb and pg_ctl)"
)
DRIVER_HINT = "the PostgreSQL driver is missing: `pip install 'psycopg[binary]'` (or `pip install -e '.[postgres]'`)"


def pg_bin_dir() -> Path | None:
    """The directory with ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates = [os.environ["CHIO_PG_BIN"]] if os.environ.get("CHIO_PG_BIN") else []
    candidates += list(PG_BIN_DIRS)
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def missing() -> str | None:
    """Why a cluster cannot be started here (binaries or driver absent), or None."""
    if pg_bin_dir() is None:
        return INSTALL_HINT
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return DRIVER_HINT
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running throwaway cluster; ``dsn`` points at its ``postgres`` database over loopback TCP."""

    def __init__(self, root: Path, port: int, run_as: str | None) -> None:
        self.root = root
        self.port = port
        self.run_as = run_as
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def create_database(self, name: str) -> str:
        """A fresh database in this cluster; returns its DSN (each test gets its own store)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def _run(cmd: list[str], run_as: str | None) -> subprocess.CompletedProcess[str]:
    if run_as is not None:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """Start a cluster (``initdb`` + ``pg_ctl start``), yield it, stop it and delete its files.

    ``durable=True`` keeps PostgreSQL's own defaults (``fsync=on``: a commit is on disk when it
    returns), for benchmarks; the tests' cluster runs with ``fsync=off``."""
    bindir = pg_bin_dir()
    if bindir is None:
        raise RuntimeError(INSTALL_HINT)
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="chio-pg-"))
    if run_as is not None:
        pw = pwd.getpwnam(run_as)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    try:
        init = _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-instructions", "--no-sync"],
            run_as,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.strip()}")
        for attempt in range(5):
            port = _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                + ("" if durable else "-c fsync=off -c full_page_writes=off ")
                + "-c max_connections=200 -c shared_buffers=64MB"
            )
            start = _run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts,
                 "-w", "-t", "120", "start"],
                run_as,
            )
            if start.returncode == 0:
                break
            log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
            if "could not bind" not in log or attempt == 4:  # only a port race is worth retrying
                raise RuntimeError(f"pg_ctl start failed ({start.returncode}): {start.stderr.strip()}\n{log[-2000:]}")
            time.sleep(0.2)
        cluster = Cluster(root, port, run_as)
        try:
            yield cluster
        finally:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"], run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)
