"""The one private event loop every remote kernel client is driven on.

Async ``httpx`` clients are bound to the event loop that opened their connections, while Prefect
runs sync tasks in worker threads and async tasks on its own loop. Every call to a remote client is
therefore driven on one private background loop; the embedded kernel is called directly, with no
loop hop at all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["await_on_kernel_loop", "run_on_kernel_loop"]

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _kernel_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="chio-kernel-loop", daemon=True).start()
        return _loop


def run_on_kernel_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the private kernel loop and block this thread until it is done.

    Safe from any thread that is not the kernel loop itself (sync Prefect tasks run in worker
    threads; the caller's own event loop, if any, is never blocked by the network call).
    """
    return asyncio.run_coroutine_threadsafe(coro, _kernel_loop()).result()


async def await_on_kernel_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on the private kernel loop (the loop that owns remote clients' connections)."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, _kernel_loop()))
