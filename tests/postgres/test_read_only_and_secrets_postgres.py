"""On a fleet's PostgreSQL store: a read-only command with a typo'd --data-dir creates no directory,
mints no key and registers nothing; a password in the DSN's query is masked in /chio/health, the
kernel's repr and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel
from chio_kernel.sidecar import create_app
from cli_inprocess import run_cli_in_process

SECRET = "hunter2-query"


def _cli(*args: str) -> object:
    return run_cli_in_process(args, {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())})


@pytest.mark.parametrize("command", [("receipts", "verify"), ("keys", "list"), ("receipts", "list"),
                                     ("capability", "list"), ("approvals", "list")])
def test_read_only_command_makes_no_identity(pg_dsn: str, tmp_path: Path, command: tuple[str, ...]) -> None:
    host = Kernel(tmp_path / "host", store=pg_dsn)
    before = host.registered_keys()
    typo = tmp_path / "hsot"
    done = _cli(*command, "--data-dir", str(typo), "--store", pg_dsn)
    assert done.returncode == 1, done.stdout  # type: ignore[attr-defined]
    assert "creates no data directory" in done.stderr  # type: ignore[attr-defined]
    assert not typo.exists()
    assert host.registered_keys() == before
    ok = _cli(*command, "--data-dir", str(tmp_path / "host"), "--store", pg_dsn)
    assert ok.returncode == 0, ok.stderr  # type: ignore[attr-defined]
    host.close()


async def test_query_password_masked_in_health_repr_and_cli(pg_dsn: str, tmp_path: Path) -> None:
    dsn = pg_dsn + ("&" if "?" in pg_dsn else "?") + f"password={SECRET}"  # loopback trust: not checked
    kernel = Kernel(tmp_path / "k", store=dsn)
    assert SECRET not in repr(kernel)
    assert SECRET not in json.dumps(kernel.health())
    app = create_app(kernel)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        health = await client.get("/chio/health")
    assert health.status_code == 200 and SECRET not in health.text and "password=***" in health.text
    listed = _cli("receipts", "list", "--data-dir", str(tmp_path / "k"), "--store", dsn.replace("127.0.0.1", "127.0.0.1:1", 0))
    assert SECRET not in listed.stdout + listed.stderr  # type: ignore[attr-defined]
    down = _cli("receipts", "list", "--data-dir", str(tmp_path / "k"),
                "--store", f"postgresql://postgres@127.0.0.1:1/x?password={SECRET}")
    assert down.returncode == 1 and SECRET not in down.stderr and "password=***" in down.stderr  # type: ignore[attr-defined]
    kernel.close()
