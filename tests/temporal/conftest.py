"""Fixtures of the chio_temporal tests: the session's real Temporal dev server, fresh ids per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from temporalio.client import Client

import workflows
from chio_kernel import LocalChioClient


@pytest.fixture
async def client(temporal_env: Any) -> Client:
    """A client of the session's dev server."""
    return temporal_env.client


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique ids (task queues, workflow ids) per test."""
    token = uuid.uuid4().hex[:10]
    return lambda name: f"{name}-{token}"


@pytest.fixture
async def chio(chio_home: Any) -> Any:
    """An embedded kernel in the test's own data dir."""
    client = LocalChioClient(data_dir=chio_home)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def _reset_activity_log() -> None:
    workflows.reset()
