"""Group commit: concurrent evaluations share one write transaction.

Threads (the sidecar's request threads, an application's thread pool) call :meth:`GroupCommitter.submit`:
the first caller becomes the leader and runs the waiting callers' requests as one batch (one
transaction, one commit); callers arriving meanwhile queue up and the leader hands over to the
oldest of them, whose batch then holds everyone who queued while the previous one committed.
asyncio callers on one event loop use :meth:`GroupCommitter.submit_async`: the first request of a
loop turn is decided at once, and the requests made later in the same turn are flushed together. Either way a caller gets its receipt only after the commit
that holds it (the transaction semantics are those of :mod:`chio_kernel._store`).

``CHIO_GROUP_COMMIT`` (environment, read when a ``Kernel`` is created) caps the batch size
(default 64); ``CHIO_GROUP_COMMIT=1`` turns batching off (one transaction per evaluation).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["DEFAULT_MAX_BATCH", "GroupCommitter", "max_batch_from_env"]

DEFAULT_MAX_BATCH = 64

Req = TypeVar("Req")
Res = TypeVar("Res")


def max_batch_from_env() -> int:
    """``CHIO_GROUP_COMMIT`` as a batch size (>= 1), else :data:`DEFAULT_MAX_BATCH`."""
    raw = os.environ.get("CHIO_GROUP_COMMIT", "").strip()
    if not raw:
        return DEFAULT_MAX_BATCH
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"CHIO_GROUP_COMMIT must be a positive integer (1 = no batching), got {raw!r}") from None
    if value < 1:
        raise ValueError(f"CHIO_GROUP_COMMIT must be a positive integer (1 = no batching), got {raw!r}")
    return value


class _Slot(Generic[Req, Res]):
    __slots__ = ("req", "event", "result", "promoted")

    def __init__(self, req: Req) -> None:
        self.req = req
        self.event = threading.Event()
        self.result: Res | BaseException | None = None
        self.promoted = False


class GroupCommitter(Generic[Req, Res]):
    """Batches requests for ``run_batch(requests) -> results`` (one result or exception per request,
    in order; ``run_batch`` commits before it returns)."""

    def __init__(self, run_batch: Callable[[Sequence[Req]], list[Res | BaseException]], max_batch: int) -> None:
        self._run = run_batch
        self.max_batch = max_batch
        self._pid = os.getpid()
        self._mu = threading.Lock()
        self._queue: list[_Slot[Req, Res]] = []
        self._leading = False
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Req, asyncio.Future[Res]]]] = {}
        self._turns: set[asyncio.AbstractEventLoop] = set()  # loops whose current turn decided a request

    def _fork_check(self) -> None:
        if os.getpid() != self._pid:  # a lock held by a parent thread must not cross a fork
            self._pid = os.getpid()
            self._mu = threading.Lock()
            self._queue = []
            self._leading = False
            self._pending = {}
            self._turns = set()

    # --- threads ---

    def submit(self, req: Req) -> Res:
        """Run ``req`` in the next batch; return its result (raise its exception) after the commit."""
        self._fork_check()
        if self.max_batch == 1:
            return self._unwrap(self._run([req])[0])
        with self._mu:
            slot: _Slot[Req, Res] | None = None
            if self._leading:
                waiting: _Slot[Req, Res] = _Slot(req)
                self._queue.append(waiting)
                slot = waiting
            else:
                self._leading = True
        if slot is not None:  # a follower: wait for the leader to run our batch, or to hand us the lead
            slot.event.wait()
            if not slot.promoted:
                return self._unwrap(slot.result)
        # the leader: its own request first, then whoever queued (up to max_batch)
        with self._mu:
            if slot is None:
                batch = self._queue[: self.max_batch - 1]
                del self._queue[: self.max_batch - 1]
            else:  # promoted: our slot is the oldest in the queue
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
        reqs = [s.req for s in batch] if slot is not None else [req, *(s.req for s in batch)]
        try:
            results = self._run(reqs)
        except BaseException as err:  # run_batch reports per request; this is a bug or an interrupt
            results = [err] * len(reqs)
        own = results[0]
        for s, r in zip(batch, results if slot is not None else results[1:]):
            s.result = r
            if s is not slot:
                s.event.set()
        with self._mu:  # hand the lead to the oldest waiter, or give it up
            if self._queue:
                nxt = self._queue[0]
                nxt.promoted = True
                nxt.event.set()
            else:
                self._leading = False
        return self._unwrap(own)

    @staticmethod
    def _unwrap(result: Res | BaseException | None) -> Res:
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    # --- asyncio ---

    async def submit_async(self, req: Req, *, defer: bool = False) -> Res:
        """Decide ``req`` now if it is the first of this loop turn, else in the turn's flush.

        The first request of a turn runs at once: a lone caller (an agent run, a workflow) never
        waits behind the other callbacks the loop has ready, which would add their work to its
        latency. The requests that arrive later in the same turn (concurrent callers) are batched
        into one transaction flushed at the end of the turn. With ``defer`` the first one waits for
        the flush too (a server whose requests arrive together from its sockets: one commit per turn
        instead of two, for one more loop turn of latency).
        """
        self._fork_check()
        loop = asyncio.get_running_loop()
        pending = self._pending.get(loop)
        if pending is None and not defer and loop not in self._turns:
            self._turns.add(loop)
            loop.call_soon(self._turns.discard, loop)  # the turn ends: the next request is first again
            return self._unwrap(self._run([req])[0])
        fut: asyncio.Future[Res] = loop.create_future()
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append((req, fut))
        return await fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, [])
        for start in range(0, len(pending), self.max_batch):
            chunk = pending[start : start + self.max_batch]
            try:
                results = self._run([r for r, _ in chunk])
            except BaseException as err:  # pragma: no cover - run_batch reports per request
                results = [err] * len(chunk)
            for (_, fut), res in zip(chunk, results):
                if fut.cancelled():
                    continue  # the receipt is committed; the caller stopped waiting for it
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
