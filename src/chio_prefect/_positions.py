"""Call positions: which Prefect run a task attempt belongs to, and what its idempotency key identifies."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RunIds", "call_position", "run_ids"]


@dataclass(frozen=True)
class RunIds:
    """Ids and names of the Prefect task run and flow run of one call (``None`` outside them)."""

    task_name: str | None = None
    task_key: str | None = None
    task_run_id: str | None = None
    task_run_name: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None


def run_ids(governed: Callable[..., Any]) -> RunIds:
    """Ids and names of the Prefect task run and flow run calling ``governed`` (if any)."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_name = task_key = task_run_id = task_run_name = flow_run_id = flow_run_name = None
    task_ctx = TaskRunContext.get()
    # Only the task run of THIS task counts (``other_task.fn`` inside it is not that run).
    if task_ctx is not None and getattr(task_ctx.task, "fn", None) is governed:
        task_name = task_ctx.task.name
        task_key = task_ctx.task.task_key
        task_run_id = str(task_ctx.task_run.id)
        task_run_name = task_ctx.task_run.name
        if task_ctx.task_run.flow_run_id is not None:
            flow_run_id = str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        if flow_run_id is None or flow_run_id == str(flow_ctx.flow_run.id):
            flow_run_id = str(flow_ctx.flow_run.id)
            flow_run_name = flow_ctx.flow_run.name
    return RunIds(task_name, task_key, task_run_id, task_run_name, flow_run_id, flow_run_name)


class _AttemptPositions:
    """Call positions handed out during one attempt of one flow run (one ``FlowRunContext``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_task_run: dict[str, int] = {}
        self.counts: dict[str, int] = {}


_attempts: dict[int, _AttemptPositions] = {}
_attempts_lock = threading.Lock()


def _attempt_positions(flow_ctx: Any) -> _AttemptPositions | None:
    key = id(flow_ctx)
    with _attempts_lock:
        table = _attempts.get(key)
        if table is None:
            try:
                # dropped with the context object, so its id is never reused for a stale table
                weakref.finalize(flow_ctx, _attempts.pop, key, None)
            except TypeError:  # not weak-referenceable: fall back to the task run id
                return None
            table = _attempts[key] = _AttemptPositions()
        return table


def call_position(run: RunIds, identity: str) -> str:
    """The call position of the running task run, the run part of its idempotency key.

    Inside a flow run: ``flow-run:<id>:<identity>#<n>``, ``n`` counting earlier task runs with the
    same identity (task, capability, tool, parameters) in this attempt of the flow run. Prefect
    gives every attempt of a flow run new task run ids (and random dynamic keys), so this is what
    lets a flow retry re-evaluate to the same receipt; a task retry (same task run) keeps its ``n``.
    Identical calls are interchangeable, so the order in which concurrent ones get their ``n``
    does not matter. Outside a flow run: ``task-run:<id>``.
    """
    from prefect.context import FlowRunContext

    flow_ctx = FlowRunContext.get()
    if (
        run.flow_run_id is None
        or flow_ctx is None
        or flow_ctx.flow_run is None
        or str(flow_ctx.flow_run.id) != run.flow_run_id
    ):
        return f"task-run:{run.task_run_id}"
    table = _attempt_positions(flow_ctx)
    if table is None:
        return f"task-run:{run.task_run_id}"
    with table.lock:
        n = table.by_task_run.get(run.task_run_id)  # type: ignore[arg-type]
        if n is None:
            n = table.counts.get(identity, 0)
            table.counts[identity] = n + 1
            table.by_task_run[run.task_run_id] = n  # type: ignore[index]
    return f"flow-run:{run.flow_run_id}:{identity}#{n}"
