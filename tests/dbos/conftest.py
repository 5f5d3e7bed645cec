"""Real DBOS on its embedded SQLite system database (no server), one per test, and the real embedded kernel.

DBOS is a process singleton: each test gets ``DBOS(config=...)`` on a fresh SQLite file, launched,
and destroyed afterwards (the workflow registry is kept, so agents built by earlier tests stay
registered, which is harmless: names are unique per test).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from chio_kernel import LocalChioClient

logging.getLogger("dbos").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
async def _fresh_default_executor() -> AsyncIterator[None]:
    """Give the session's event loop a live default executor back after each DBOS test.

    DBOS makes its own thread pool the running loop's default executor (the one behind
    ``asyncio.to_thread``) and shuts that pool down in ``DBOS.destroy()``: without this, every later
    test on the session loop would fail with "cannot schedule new futures after shutdown".
    """
    yield
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio"))


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


@pytest.fixture
def dbos_url(tmp_path: Path) -> Iterator[str]:
    """A launched DBOS on ``<tmp>/dbos.sqlite``; yields its system database URL."""
    from dbos import DBOS

    url = f"sqlite:///{tmp_path}/dbos.sqlite"
    DBOS(config={"name": "chio-test", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        yield url
    finally:
        DBOS.destroy()
