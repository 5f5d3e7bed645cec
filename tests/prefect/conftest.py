"""Fixtures of the Prefect-layer tests: a real Prefect API with fast sync flows, and event capture."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="session", autouse=True)
def _prefect_fast(prefect_api: str) -> Iterator[str]:
    """Every test here runs on the session's real Prefect API, with flow heartbeats off.

    With heartbeats on, a sync flow run joins its heartbeat thread on exit and waits ~1 s.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        temporary_settings,
    )

    updates = {
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        # standalone task runs (no flow) log locally only, without a warning per run
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
    }
    with temporary_settings(updates=updates):
        yield prefect_api


class CapturedEvents:
    """Events handed to Prefect's events worker during a test (and passed through to the server)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def all(self) -> list[Any]:
        from prefect.events.clients import AssertingPassthroughEventsClient

        self.worker.drain()
        client = AssertingPassthroughEventsClient.last
        return list(client.events) if client is not None else []

    def chio(self) -> list[Any]:
        return [e for e in self.all() if e.event.startswith("chio.receipt.")]


@pytest.fixture
def captured_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[CapturedEvents]:
    """Capture events with Prefect's AssertingPassthroughEventsClient (they still reach the API)."""
    from prefect.events.clients import AssertingPassthroughEventsClient
    from prefect.events.worker import EventsWorker

    AssertingPassthroughEventsClient.reset()
    worker = EventsWorker.instance(AssertingPassthroughEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_a, **_k: worker)
    try:
        yield CapturedEvents(worker)
    finally:
        worker.drain()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """``python -m chio_kernel.cli sidecar`` over ``data_dir`` on loopback ``port``."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME"}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chio_kernel.cli", "sidecar", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )

    def wait_healthy(self, timeout: float = 30) -> SidecarProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"sidecar exited: {err}")
            try:
                if httpx.get(self.url + "/chio/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sidecar did not become healthy in {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def sidecar_factory(chio_home: Path) -> Iterator[Any]:
    """Start real sidecars over ``chio_home`` (stopped after the test): ``start(port=None)``."""
    started: list[SidecarProcess] = []

    def start(port: int | None = None) -> SidecarProcess:
        sidecar = SidecarProcess(chio_home, port or free_port())
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            sidecar.stop()


@pytest.fixture
def sidecar_url(sidecar_factory: Any) -> str:
    """URL of a healthy real sidecar over ``chio_home`` on a free port."""
    return sidecar_factory().wait_healthy().url
