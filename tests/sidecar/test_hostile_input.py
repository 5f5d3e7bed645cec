"""Hostile but valid input against the real sidecar and CLI: cost units, slow regexes and headers, a missing key."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

from chio_sidecar_harness import Sidecar, free_port, run_cli, run_cli_process


@pytest.mark.parametrize("units", [2**64, 2**70, -1])
def test_cost_units_outside_int64_are_422(sidecar: Sidecar, units: int) -> None:
    cap = httpx.post(sidecar.url + "/v1/capabilities", timeout=30, json={
        "subject": "agent:cost", "scope": {"grants": [{"server_id": "s", "tool_name": "t", "operations": ["Invoke"],
                                                        "max_invocations": 5}]}}).json()
    r = httpx.post(sidecar.url + "/v1/evaluate", timeout=30, json={
        "capability_id": cap["id"], "tool_server": "s", "tool_name": "t", "parameters": {},
        "cost": {"units": units, "currency": "USD"}})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and "2^63-1" in r.json()["message"]
    assert httpx.get(sidecar.url + "/chio/health", timeout=30).status_code == 200


async def test_exponential_regex_cannot_stall_the_sidecar(tmp_path: Path) -> None:
    # Python's re needed minutes for ^(a|aa)+$ on this value, holding the GIL: every other call
    # timed out. The client's timeout is only a sanity cap (RE2 answers in microseconds).
    sidecar = await asyncio.to_thread(Sidecar(tmp_path / "kernel").start)
    try:
        async with ChioClient(sidecar.url, timeout=20) as client:
            hostile = await client.create_capability(subject="agent:h", ttl_seconds=600, scope=ChioScope(grants=[
                ToolGrant(server_id="s", tool_name="t", operations=[Operation.INVOKE],
                          constraints=[Constraint.regex_match("^(a|aa)+$")])]))
            other = await client.create_capability(subject="agent:o", ttl_seconds=600, scope=ChioScope(grants=[
                ToolGrant(server_id="fs", tool_name="read", operations=[Operation.INVOKE])]))
            calls = [client.evaluate_tool_call(capability_id=hostile.id, tool_server="s", tool_name="t",
                                               parameters={"q": "a" * 44 + "b"}) for _ in range(4)]
            calls.append(client.evaluate_tool_call(capability_id=other.id, tool_server="fs", tool_name="read",
                                                   parameters={"path": "x"}))
            results = await asyncio.gather(*calls)
        assert [r.decision.guard for r in results[:4]] == ["constraints"] * 4
        assert results[4].is_allowed
    finally:
        await asyncio.to_thread(sidecar.kill)


def test_missing_key_next_to_a_used_store_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "kernel"
    created = run_cli("capability", "create", "--subject", "s", "--grant", "a:b", "--data-dir", str(home))
    assert created.returncode == 0, created.stderr
    (home / "kernel.key").unlink()
    for args in (["sidecar", "--port", str(free_port())], ["receipts", "list"], ["capability", "list"]):
        run = run_cli_process if args[0] == "sidecar" else run_cli  # a started sidecar serves: a subprocess
        r = run(*args, "--data-dir", str(home), timeout=60)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "kernel.key" in r.stderr and "Restore kernel.key from your backup" in r.stderr
        assert "--data-dir" in r.stderr and "Traceback" not in r.stderr
        assert not (home / "kernel.key").exists()


@pytest.mark.slow
async def test_slow_header_connections_are_closed_and_real_clients_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIO_SIDECAR_HEADER_TIMEOUT", "4")
    sidecar = await asyncio.to_thread(Sidecar(tmp_path / "kernel").start)
    slow: list[socket.socket] = []
    try:
        for _ in range(150):  # each sends a request line and part of a header, never the blank line
            s = socket.create_connection(("127.0.0.1", sidecar.port), timeout=10)
            s.sendall(b"GET /chio/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            s.setblocking(False)
            slow.append(s)

        def closed(s: socket.socket) -> bool:
            try:
                return s.recv(4096) == b""  # EOF: the server closed it (no response was sent)
            except BlockingIOError:
                return False
            except OSError:
                return True

        async with ChioClient(sidecar.url, timeout=30) as client:
            assert (await client.health())["status"] == "ok"  # served while the slow ones are open
        assert not all(closed(s) for s in slow), "the slow connections were closed before the check"
        # keep trickling a header byte to each one: data must not reset the header deadline
        open_ = list(slow)
        deadline = time.monotonic() + 90  # a sanity cap: with the fix they close after ~4 s
        while open_ and time.monotonic() < deadline:
            for s in list(open_):
                try:
                    s.send(b"x")
                except OSError:
                    open_.remove(s)
                    continue
                if closed(s):
                    open_.remove(s)
            await asyncio.sleep(0.25)
        assert not open_, f"{len(open_)} of 150 slow-header connections are still open"
        async with ChioClient(sidecar.url, timeout=30) as client:
            assert (await client.health())["status"] == "ok"
    finally:
        for s in slow:
            s.close()
        await asyncio.to_thread(sidecar.stop)
