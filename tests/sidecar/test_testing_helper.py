"""The public ``chio_kernel.testing.SidecarProcess`` helper (what users run their own tests with)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from chio_sdk import ChioClient

from chio_kernel.testing import SidecarProcess, free_port
from chio_sidecar_harness import Sidecar


async def test_context_manager_serves_then_stops_and_ignores_the_callers_token_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIO_SIDECAR_TOKEN", "from-the-environment")  # must not leak into the child
    monkeypatch.setenv("CHIO_HOME", str(tmp_path / "elsewhere"))
    with SidecarProcess(tmp_path / "kernel") as sidecar:
        assert sidecar.running and sidecar.url == f"http://127.0.0.1:{sidecar.port}"
        async with ChioClient(sidecar.url) as client:
            health = await client.health()
            assert health["status"] == "ok" and health["auth"] == "open"  # no auth header needed
        assert "data dir " + str(tmp_path / "kernel") in sidecar.output
        assert "auth OPEN: no credentials, every local process is the operator" in sidecar.output  # said on start
    assert not sidecar.running and sidecar.proc is not None and sidecar.proc.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(sidecar.url + "/chio/health", timeout=1)
    assert (tmp_path / "kernel").is_dir() and not (tmp_path / "elsewhere").exists()


def test_roles_mode_starts_says_so_and_refuses_requests_without_a_credential(tmp_path: Path) -> None:
    from chio_kernel import Kernel

    with Kernel(tmp_path / "kernel") as kernel:
        token = kernel.add_credential("ops", "operator")
    with SidecarProcess(tmp_path / "kernel", auth="roles") as sidecar:
        assert "auth roles: every request needs a credential token" in sidecar.output
        assert httpx.get(sidecar.url + "/chio/health", timeout=30).status_code == 401
        health = httpx.get(sidecar.url + "/chio/health", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert health.json()["auth"] == "roles"


def test_a_taken_port_is_refused_before_launching(sidecar: Sidecar, tmp_path: Path) -> None:
    """Else the other server's health answer would pass for the new sidecar's."""
    taken = SidecarProcess(tmp_path / "k", port=sidecar.port)
    with pytest.raises(RuntimeError, match=f"port {sidecar.port} on 127.0.0.1 is already in use"):
        taken.start()
    assert taken.proc is None and not (tmp_path / "k").exists()


def test_a_sidecar_that_exits_is_an_error_quoting_its_output(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(RuntimeError, match="sidecar exited with 1: .*is a file, not a directory"):
        SidecarProcess(not_a_dir).start()


def test_kill_is_sigkill_and_start_twice_is_refused(tmp_path: Path) -> None:
    sidecar = SidecarProcess(tmp_path / "k", port=free_port()).start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sidecar.start()
    finally:
        sidecar.kill()
    assert sidecar.proc is not None and sidecar.proc.returncode == -9
