"""Shared by the listing tests on SQLite and PostgreSQL: reads run while a writer holds its transaction."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from chio_kernel import Kernel

__all__ = ["while_writing"]


def while_writing(writer_kernel: Kernel, reads: Callable[[], Any]) -> Any:
    """``reads()`` in a thread while ``writer_kernel`` holds a write transaction open (on PostgreSQL also
    ``chio_writer_lock``); fails if the reads wait for it."""
    holding, release, done = threading.Event(), threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def writer() -> None:
        with writer_kernel._store.write():
            holding.set()
            release.wait(30)

    def reader() -> None:
        try:
            result["value"] = reads()
        except BaseException as err:  # pragma: no cover - reported below
            result["error"] = err
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    assert holding.wait(10)
    r = threading.Thread(target=reader)
    r.start()
    finished = done.wait(10)
    release.set()
    w.join(10)
    r.join(10)
    assert finished, "a listing waited for a writer"
    if "error" in result:
        raise result["error"]
    return result["value"]
