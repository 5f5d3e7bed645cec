"""Evaluations off the event loop, one thread hop per batch.

The evaluations that arrive in one turn of the server's event loop are handed to the kernel thread
together (one cross-thread call), decided there in one store transaction (the kernel's group commit,
``Kernel._evaluate_async``), and handed back together (one cross-thread call). The server's loop keeps
parsing and answering meanwhile, and the kernel's SQLite and signing work overlaps it where they
release the GIL; a hop per batch costs a fraction of a hop per call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

__all__ = ["evaluate_batched"]

_Item = tuple[Any, tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class _KernelThread:
    """One daemon thread running an asyncio loop on which the kernels' batches are decided."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._mu:
            if self._loop is None or self._pid != os.getpid():  # none yet, or not across a fork
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                threading.Thread(target=self._loop.run_forever, name="chio-sidecar-kernel", daemon=True).start()
            return self._loop

    async def evaluate(self, kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        server_loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = server_loop.create_future()
        batch = self._pending.get(server_loop)
        if batch is None:
            batch = self._pending[server_loop] = []
            server_loop.call_soon(self._send, server_loop)
        batch.append((kernel, args, kwargs, fut))
        return await fut

    def _send(self, server_loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(server_loop, [])
        asyncio.run_coroutine_threadsafe(self._decide(server_loop, batch), self.loop())

    async def _decide(self, server_loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        # on the kernel thread: the calls of one batch share one flush of the kernel's group commit
        results: list[Any]
        try:
            results = await asyncio.gather(
                *(kernel._evaluate_async(*args, **kwargs) for kernel, args, kwargs, _ in batch), return_exceptions=True
            )
        except BaseException as err:  # pragma: no cover - gather reports per call; never leave a caller waiting
            results = [err] * len(batch)
        if not server_loop.is_closed():
            server_loop.call_soon_threadsafe(_resolve, batch, results)


def _resolve(batch: list[_Item], results: list[Any]) -> None:
    for (_, _, _, fut), result in zip(batch, results):
        if fut.cancelled():
            continue  # the receipt is committed; the caller stopped waiting for it
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


_THREAD = _KernelThread()


async def evaluate_batched(kernel: Any, *args: Any, **kwargs: Any) -> Any:
    """``kernel.evaluate(*args, **kwargs)`` off the event loop, batched with the calls of this loop turn."""
    return await _THREAD.evaluate(kernel, args, kwargs)
