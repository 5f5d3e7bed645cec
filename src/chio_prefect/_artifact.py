"""A Prefect table artifact per governed flow run, listing the receipts of its decisions.

Each ``@chio_flow`` run (and each flow a :class:`~chio_prefect.ChioPrefectAgent` run starts) collects
the decisions made in it — every ``@chio_task`` attempt and every agent evaluation, allow and deny,
in order — through a decision observer, and when the flow run ends (completed *or* failed) publishes
them as one table artifact with :func:`prefect.artifacts.create_table_artifact`:

* key ``chio-receipts-<flow run id>`` (:func:`artifact_key`), attached to that flow run;
* one row per decision, columns :data:`COLUMNS`: ``task`` (the task run's name, else the task),
  ``call`` (``server/tool``), ``verdict``, ``guard``, ``receipt_id`` (``None`` only for a deny
  decided before the kernel), ``time`` (ISO-8601 UTC).

The artifact is a view for people reading the Prefect UI; the signed receipts stay in the kernel's
store. Publishing never fails the flow: an error is logged at WARNING on ``chio_prefect.artifacts``.
A nested ``@chio_flow`` is its own flow run and gets its own artifact; an agent run inside a
``@chio_flow`` adds its rows to that flow run's artifact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from chio_prefect.events import iso_timestamp

if TYPE_CHECKING:
    from chio_durable import Decision

__all__ = [
    "COLUMNS",
    "artifact_key",
    "collect_decision",
    "flow_run_receipts",
    "flow_run_receipts_async",
    "receipt_row",
]

logger = logging.getLogger("chio_prefect.artifacts")

COLUMNS = ("task", "call", "verdict", "guard", "receipt_id", "time")
"""The columns of a flow run's receipt table, in order."""

_lock = threading.Lock()
_rows: dict[str, list[dict[str, Any]]] = {}  # flow run id -> rows, only for flow runs being collected


def artifact_key(flow_run_id: str) -> str:
    """The artifact key of a flow run's receipt table (Prefect keys: lowercase, digits, dashes)."""
    return f"chio-receipts-{flow_run_id}".lower()


def receipt_row(decision: Decision) -> dict[str, Any]:
    """One table row for ``decision`` (columns :data:`COLUMNS`)."""
    evaluation, where = decision.evaluation, decision.where
    return {
        "task": where.get("task_run_name") or where.get("task_name") or decision.call.tool_name,
        "call": f"{decision.call.tool_server}/{decision.call.tool_name}",
        "verdict": "allow" if evaluation.allowed else "deny",
        "guard": evaluation.guard,
        "receipt_id": evaluation.receipt_id,
        "time": iso_timestamp(evaluation.timestamp),
    }


def collect_decision(decision: Decision) -> None:
    """Decision observer: add ``decision`` to its flow run's table, if that flow run is collected."""
    flow_run_id = decision.where.get("flow_run_id")
    if not flow_run_id:
        return
    with _lock:
        rows = _rows.get(str(flow_run_id))
        if rows is not None:
            rows.append(receipt_row(decision))


def _begin() -> tuple[str, str] | None:
    """Start collecting for the current flow run; ``None`` outside one or when already collecting."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    flow_run_id = str(context.flow_run.id)
    with _lock:
        if flow_run_id in _rows:  # an enclosing governed flow of this run publishes it
            return None
        _rows[flow_run_id] = []
    return flow_run_id, str(context.flow_run.name)


def _take(flow_run_id: str) -> list[dict[str, Any]]:
    with _lock:
        return _rows.pop(flow_run_id, [])


def _description(flow_run_name: str, rows: list[dict[str, Any]]) -> str:
    denied = sum(1 for row in rows if row["verdict"] == "deny")
    return (
        f"Chio receipts of flow run `{flow_run_name}`: {len(rows)} decision(s), {denied} denied. "
        "Verify them with `chio-durable receipts verify`."
    )


@contextmanager
def flow_run_receipts() -> Iterator[None]:
    """Around a sync flow body: collect its flow run's decisions, publish the table when it ends."""
    started = _begin()
    try:
        yield
    finally:
        if started is not None:
            flow_run_id, name = started
            rows = _take(flow_run_id)
            try:
                from prefect.artifacts import create_table_artifact

                create_table_artifact(
                    table=rows, key=artifact_key(flow_run_id), description=_description(name, rows)
                )
            except Exception as err:  # noqa: BLE001 - a view must never fail the flow run
                logger.warning("chio: the receipt table of flow run %s was not published: %s", flow_run_id, err)


@asynccontextmanager
async def flow_run_receipts_async() -> AsyncIterator[None]:
    """Around an async flow body: as :func:`flow_run_receipts`, publishing without blocking the loop."""
    started = _begin()
    try:
        yield
    finally:
        if started is not None:
            flow_run_id, name = started
            rows = _take(flow_run_id)
            try:
                from prefect.artifacts import acreate_table_artifact

                await acreate_table_artifact(
                    table=rows, key=artifact_key(flow_run_id), description=_description(name, rows)
                )
            except Exception as err:  # noqa: BLE001 - a view must never fail the flow run
                logger.warning("chio: the receipt table of flow run %s was not published: %s", flow_run_id, err)
