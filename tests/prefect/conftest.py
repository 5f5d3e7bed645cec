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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sidecar_url(chio_home: Path) -> Iterator[str]:
    """The real sidecar (``python -m chio_kernel.cli sidecar``) over ``chio_home`` on a free port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME"}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chio_kernel.cli", "sidecar", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(chio_home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                if httpx.get(url + "/chio/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar did not become healthy in 30 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
