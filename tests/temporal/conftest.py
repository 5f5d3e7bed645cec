"""Fixtures of the chio_temporal tests: the session's real Temporal dev server, fresh ids per test."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

import workflows


@pytest.fixture
async def client(temporal_env: Any) -> Client:
    """A client of the session's dev server."""
    return temporal_env.client


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Unique ids (task queues, workflow ids) per test."""
    token = uuid.uuid4().hex[:10]
    return lambda name: f"{name}-{token}"


@pytest.fixture(autouse=True)
def _reset_activity_log() -> None:
    workflows.reset()


EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="activity")
"""For the sync activity (``send_email``)."""

ALL_WORKFLOWS = [workflows.TransferWorkflow, workflows.PlanWorkflow]


def make_worker(client: Client, task_queue: str, interceptors: list[Any], **kwargs: Any) -> Worker:
    """A worker with every test workflow and activity and the given interceptors."""
    kwargs.setdefault("workflows", ALL_WORKFLOWS)
    kwargs.setdefault("activities", workflows.ALL_ACTIVITIES)
    return Worker(
        client,
        task_queue=task_queue,
        interceptors=interceptors,
        activity_executor=EXECUTOR,
        **kwargs,
    )


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` for the duration of the block."""
    async with worker:
        yield worker
