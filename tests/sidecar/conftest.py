"""Fixtures: the real sidecar as a subprocess (`chio-durable sidecar`), driven over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from chio_sdk import ChioClient
from chio_sidecar_harness import Sidecar


@pytest.fixture(scope="session")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """One real sidecar for the whole sidecar test session (tests use distinct capabilities)."""
    root = tmp_path_factory.mktemp("sidecar")
    proc = Sidecar(root / "kernel").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def client(sidecar: Sidecar) -> AsyncIterator[ChioClient]:
    """The real chio_sdk ChioClient pointed at the sidecar."""
    async with ChioClient(sidecar.url, timeout=30) as c:
        yield c
