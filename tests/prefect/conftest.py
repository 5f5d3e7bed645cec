"""Fixtures of the Prefect-layer tests: a real Prefect API with fast sync flows, and event capture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chio_kernel.testing import SidecarProcess


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


@pytest.fixture
def sidecar_factory(chio_home: Path) -> Iterator[Any]:
    """Real sidecars over ``chio_home``, stopped after the test: ``factory(port=None).start()``."""
    started: list[SidecarProcess] = []

    def make(port: int | None = None) -> SidecarProcess:
        sidecar = SidecarProcess(chio_home, port)
        started.append(sidecar)
        return sidecar

    try:
        yield make
    finally:
        for sidecar in started:
            sidecar.stop()


@pytest.fixture
def sidecar_url(sidecar_factory: Any) -> str:
    """URL of a healthy real sidecar over ``chio_home`` on a free port."""
    return sidecar_factory().start().url
