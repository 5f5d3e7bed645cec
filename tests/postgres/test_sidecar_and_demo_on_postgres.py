"""The sidecar and the demo on a fleet's PostgreSQL store, as users run them: a sidecar whose own
kernel key is retired refuses (at start, and with a 503 and its reason while running, never a 500),
``/chio/health`` names the store without its password, and ``chio-durable demo --store DSN`` prints
an "Inspect" command that works on that store."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pg_cluster import DRIVER_HINT
from rich.console import Console

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel
from chio_kernel.testing import SidecarProcess

CLI = [sys.executable, "-m", "chio_kernel.cli"]
PASSWORD = "s3cret-pw-9f2"


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE])])


def _with_password(dsn: str) -> str:
    """The same DSN with a password (the throwaway cluster trusts loopback, so it is not checked)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace("postgres@", f"postgres:{PASSWORD}@", 1)))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "250", "HOME": str(Path.home()), **(env or {})})


async def test_sidecar_health_names_the_store_and_a_retired_key_is_a_503_with_the_reason(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = _with_password(pg_dsn)
    monkeypatch.setenv("CHIO_STORE", dsn)  # what `chio-durable sidecar --store DSN` sets
    sidecar = SidecarProcess(tmp_path / "sidecar-host").start(timeout=60)
    try:
        raw = httpx.get(sidecar.url + "/chio/health", timeout=30)
        health = raw.json()
        assert health["store"] == "postgresql"
        assert health["store_url"].startswith("postgresql://postgres:***@127.0.0.1:")
        assert PASSWORD not in raw.text

        other = Kernel(tmp_path / "other-host", store=pg_dsn)
        token = other.create_capability("agent:x", _scope())
        body = {"capability_id": token.id, "tool_server": "fs", "tool_name": "read_file", "parameters": {"p": 1}}
        assert httpx.post(sidecar.url + "/v1/evaluate", json=body, timeout=30).status_code == 200
        other.retire_key(health["kernel_key"], "host decommissioned")

        answer = httpx.post(sidecar.url + "/v1/evaluate", json=body, timeout=30)
        assert answer.status_code == 503, answer.text  # was 500 internal_error
        error = answer.json()
        assert error["error"] == "kernel_key_retired"
        assert "retired" in error["message"] and "new data directory" in error["message"]
        client = ChioClient(sidecar.url)
        try:
            with pytest.raises(Exception, match="503"):
                await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read_file",
                                                parameters={"p": 2})
        finally:
            await client.close()
        assert httpx.get(sidecar.url + "/chio/health", timeout=30).status_code == 200  # still serving reads
        assert other.receipt_count() == 1  # the refused call left nothing behind
        other.close()
    finally:
        sidecar.stop()


def test_sidecar_refuses_to_start_on_a_retired_key_and_says_what_to_do(pg_dsn: str, tmp_path: Path) -> None:
    host = tmp_path / "host-a"
    retired = Kernel(host, store=pg_dsn)  # registers host-a's key
    key = retired.public_key_hex
    retired.close()
    admin = Kernel(tmp_path / "admin", store=pg_dsn)
    admin.retire_key(key, "decommissioned")
    admin.close()
    from chio_kernel.testing import free_port

    started = _cli("sidecar", "--port", str(free_port()), "--data-dir", str(host), "--store", pg_dsn)
    assert started.returncode == 1, started.stdout + started.stderr
    assert "retired" in started.stderr and "new data directory" in started.stderr
    assert "Traceback" not in started.stderr


def test_demo_store_inspect_hint_carries_the_store(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chio_kernel import _demo as demo

    monkeypatch.setenv("CHIO_STORE", pg_dsn)  # what `chio-durable demo --store DSN` sets
    out = io.StringIO()
    # no engine sections: the kernel section is what writes to the store here
    assert demo.run(Console(file=out, width=400, color_system=None), tmp_path / "demo", sections=()) == 0
    hint = next(line for line in out.getvalue().splitlines() if "Inspect: " in line).split("Inspect: ", 1)[1]
    argv = shlex.split(hint)
    assert argv[:3] == ["chio-durable", "receipts", "list"]
    assert argv[argv.index("--store") + 1] == pg_dsn  # was: no --store, so the command read another store
    listed = _cli(*argv[1:], "--json")  # the suggested command, without $CHIO_STORE: it works as printed
    assert listed.returncode == 0, listed.stderr
    with Kernel(tmp_path / "check", store=pg_dsn) as kernel:
        ids = [r.id for r in kernel.list_receipts()]
    assert ids and all(rid in listed.stdout for rid in ids)

    # with a password in the URL, the hint masks it and says so
    monkeypatch.setenv("CHIO_STORE", _with_password(pg_dsn))
    masked = demo._inspect_command(tmp_path / "demo")
    assert PASSWORD not in masked and "postgres:***@" in masked and "password" in masked


def test_demo_inspect_hint_on_sqlite_has_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chio_kernel import _demo as demo

    monkeypatch.delenv("CHIO_STORE", raising=False)
    assert shlex.split(demo._inspect_command(tmp_path / "a b")) == [
        "chio-durable", "receipts", "list", "--data-dir", str(tmp_path / "a b")
    ]
