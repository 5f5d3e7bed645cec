"""An agent's allow events, linked to the Prefect task run that executes the call.

``ChioPrefectAgent`` asks the kernel about each model request / tool call in the flow, *before*
pydantic-ai's ``PrefectDurability`` creates the task run that executes it, so at decision time there
is no task run to link the ``chio.receipt.allow`` event to. The event is therefore held back until
that task run exists: Prefect computes the task's cache key inside the task run, before it runs or
serves the task (also on a cache hit), and every such task's cache policy carries the receipt-id
policy (``chio_prefect.decorators.ChioReceiptCachePolicy``), which calls :func:`emit_in_task_run`.
The receipt in force (``chio_durable._scope.current_receipt_id``, set around the governed call)
names the held event, which is then emitted with the task run as its resource and the flow run as
a related resource — the same shape as ``@chio_task``'s events.

Exactly one event per decision (one receipt, one event), also when the decision is replayed: a
retried attempt of the flow run gets its recorded decisions back from the cached evaluation tasks
(``chio_prefect._governance``), and the agent observes them again. Such a replayed decision is NOT
mirrored again: a receipt already mirrored in this process is skipped (:func:`emit_or_hold`), and a
retry in another process sends an event with the same receipt-derived id, which Prefect's server
stores once (``chio_prefect.events.ReceiptEvent.event_id``). So the event is emitted on the fresh
evaluation, linked to the task run of the attempt that first ran the call.

Within one attempt: a held event is taken once (a task retry in the same task run finds
nothing left). Whatever no task run took — a tool run without a task (``prefect=False``), a task
whose config turned caching off, a call that failed before its task started — is emitted, linked to
the flow run only, when the agent run ends, also when it fails. Denies (no task run ever runs) and
output functions (inline in the flow) are emitted at once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from chio_durable import Decision
from chio_durable._engine import current_receipt_id
from chio_prefect.events import write_receipt_event

__all__ = ["TASK_KINDS", "emit_in_task_run", "emit_or_hold", "held_receipt_events"]

log = logging.getLogger("chio_prefect.events")

TASK_KINDS = frozenset({"model", "tool", "mcp", "mcp_list"})
"""Governed call kinds that pydantic-ai's ``PrefectDurability`` runs as a Prefect task."""


class _Held:
    """The allow events of one agent run waiting for their task run, by receipt id, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # a sync task's engine may run on a worker thread
        self.by_receipt: dict[str, list[Decision]] = {}

    def add(self, receipt_id: str, decision: Decision) -> None:
        with self.lock:
            self.by_receipt.setdefault(receipt_id, []).append(decision)

    def take(self, receipt_id: str) -> Decision | None:
        with self.lock:
            waiting = self.by_receipt.get(receipt_id)
            if not waiting:
                return None
            decision = waiting.pop(0)
            if not waiting:
                del self.by_receipt[receipt_id]
            return decision

    def take_all(self) -> list[Decision]:
        with self.lock:
            left = [d for waiting in self.by_receipt.values() for d in waiting]
            self.by_receipt.clear()
            return left


class _Mirrored:
    """The receipt ids this process mirrored as agent events lately (bounded, oldest forgotten first)."""

    def __init__(self, limit: int = 65536) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, receipt_id: str) -> bool:
        """True the first time ``receipt_id`` is seen (and remember it), False after."""
        with self.lock:
            if receipt_id in self.ids:
                return False
            self.ids[receipt_id] = None
            while len(self.ids) > self.limit:
                self.ids.popitem(last=False)
            return True


_MIRRORED = _Mirrored()

_HELD: ContextVar[_Held | None] = ContextVar("chio_prefect.held_receipt_events", default=None)


@asynccontextmanager
async def held_receipt_events() -> AsyncIterator[None]:
    """Around an agent run: hold allow events for their task runs; emit what is left at the end."""
    if _HELD.get() is not None:  # a nested run shares the outer run's holding
        yield
        return
    held = _Held()
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
        for decision in held.take_all():  # nothing is lost: linked to the flow run only
            write_receipt_event(decision, stable_id=True)


def emit_or_hold(decision: Decision) -> None:
    """Emit ``decision``'s receipt event now, or hold it for the task run that will execute the call."""
    held = _HELD.get()
    receipt_id = decision.receipt_id
    if receipt_id is not None and not _MIRRORED.first_time(receipt_id):
        return  # a replayed decision (retried attempt, idempotent re-ask): mirrored already
    if held is None or not decision.allowed or receipt_id is None or decision.call.kind not in TASK_KINDS:
        write_receipt_event(decision, stable_id=True)
        return
    held.add(receipt_id, decision)


def emit_in_task_run(task_ctx: Any) -> None:
    """In a task run whose cache key is being computed: emit the held event of the receipt in force,
    linked to this task run. Never raises (a receipt mirror must not fail the call)."""
    held = _HELD.get()
    receipt_id = current_receipt_id()
    if held is None or receipt_id is None:
        return
    decision = held.take(receipt_id)
    if decision is None:
        return
    try:
        task_run = task_ctx.task_run
        where = {**decision.where, "task_run_id": str(task_run.id), "task_run_name": task_run.name}
        decision = replace(decision, where=where)
    except Exception:  # noqa: BLE001 - no task run to read: still emit, linked to the flow run
        log.exception("chio: could not read the task run for receipt %s", receipt_id)
    write_receipt_event(decision, stable_id=True)
