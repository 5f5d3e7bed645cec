"""Mirror every chio decision onto the Prefect events backend.

Two event names (seed 000):

* ``chio.receipt.allow`` — payload ``receipt_id, verdict, capability_id, tool_server, tool_name,
  task_name, timestamp`` (ISO-8601 UTC, milliseconds, ``Z``);
* ``chio.receipt.deny`` — the same plus ``guard``, ``reason`` and the full ``decision`` dict.

The event's resource is the task run (``prefect.task-run.<id>``, named after the task run, with the
flow-run id as the ``prefect.flow-run.id`` label as the seed shows) and the flow run is a related
resource with role ``flow-run``, so the Prefect UI shows the receipt on the right row. A call made
outside any task run (``task.fn(...)``) uses ``chio.tool.<server>.<tool>`` as its resource; outside
any Prefect run *and* with no ``PREFECT_API_URL`` configured it is logged at INFO instead of emitted
(Prefect would otherwise start a temporary API server just to receive it).

A denial decided before evaluation (the flow-scope envelope, a missing ``capability_id``) is signed
and chained by the kernel too and emitted with that receipt id; only with a mock or a stock
``ChioClient`` (nothing to record it in) is ``receipt_id`` null, so every decision is on the timeline.

``ChioPrefectAgent``'s events carry a Prefect event id derived from the receipt id
(:meth:`ReceiptEvent.event_id`), and Prefect's server stores an event id once, so mirroring the same
agent decision again (a crashed run restarted in another process) adds no second event. ``@chio_task``
events keep random ids: each attempt of a task run mirrors its receipt.

Delivery: if the event cannot be handed to Prefect's events worker (no events backend configured,
the worker refuses it, ``emit_event`` raises), the full payload is logged at WARNING on the
``chio_prefect.events`` logger — a receipt is never dropped silently. (Once handed over, delivery to
the server is Prefect's events worker's job; it logs its own failures. The signed receipt itself is
always in the kernel's receipt store.)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chio_sdk.models import ChioReceipt

    from chio_durable import Decision

__all__ = [
    "ALLOW_EVENT",
    "DENY_EVENT",
    "EVENT_ALLOW",
    "EVENT_DENY",
    "ReceiptEvent",
    "emit_allow_event",
    "emit_deny_event",
    "emit_receipt_event",
    "iso_timestamp",
    "write_receipt_event",
]

ALLOW_EVENT = "chio.receipt.allow"
DENY_EVENT = "chio.receipt.deny"
EVENT_ALLOW = ALLOW_EVENT
"""Upstream chio-prefect 0.1.0's name of :data:`ALLOW_EVENT` (same value)."""
EVENT_DENY = DENY_EVENT
"""Upstream chio-prefect 0.1.0's name of :data:`DENY_EVENT` (same value)."""

logger = logging.getLogger("chio_prefect.events")

_EVENT_NAMESPACE = uuid.UUID("6c1f3b8e-2f0c-5a7e-9d3a-0c5f1e2b7a41")
"""Namespace of the receipt-derived Prefect event ids (:meth:`ReceiptEvent.event_id`)."""


def iso_timestamp(unix_seconds: float | None = None) -> str:
    """Format a time as ISO-8601 UTC with milliseconds and ``Z``, e.g. ``2026-04-19T20:14:02.118Z``.

    Args:
        unix_seconds: the time (default: now).

    Returns:
        The formatted time.
    """
    when = (
        _dt.datetime.now(_dt.timezone.utc)
        if unix_seconds is None
        else _dt.datetime.fromtimestamp(unix_seconds, _dt.timezone.utc)
    )
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class ReceiptEvent:
    """One decision, with the run it belongs to, ready to be emitted.

    Attributes:
        allowed: True for the kernel's allow (``chio.receipt.allow``), else a deny.
        receipt_id: the signed receipt's id; None only where nothing could record it (a mock).
        capability_id: the capability the call ran under.
        tool_server: the call's server.
        tool_name: the call's tool.
        task_name: the Prefect task (or agent call) name.
        timestamp: ISO-8601 UTC with milliseconds (:func:`iso_timestamp`).
        guard: the check that denied, on a deny.
        reason: why, on a deny.
        decision: the receipt's decision dict, on a deny.
        task_run_id: the Prefect task run, the event's resource when known.
        task_run_name: its name.
        flow_run_id: the Prefect flow run, a related resource.
        flow_run_name: its name.
        extra: merged into the payload last (upstream's ``extra=``).
        stable_id: derive the Prefect event id from the receipt (agent decisions).
    """

    allowed: bool
    receipt_id: str | None
    capability_id: str | None
    tool_server: str
    tool_name: str
    task_name: str
    timestamp: str
    guard: str | None = None
    reason: str | None = None
    decision: dict[str, Any] | None = None
    task_run_id: str | None = None
    task_run_name: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    extra: Mapping[str, Any] | None = None  # merged into the payload last (upstream's ``extra=``)
    stable_id: bool = False  # the Prefect event id derives from the receipt (agent decisions)

    @property
    def name(self) -> str:
        return ALLOW_EVENT if self.allowed else DENY_EVENT

    def event_id(self) -> uuid.UUID | None:
        """Give the Prefect event id.

        Prefect's server stores an event id once, so a decision mirrored again (a retried attempt in
        another process, an idempotent re-evaluation) does not add a second event to the timeline.

        Returns:
            An id derived from the receipt when ``stable_id`` (one decision, one event id:
            ``ChioPrefectAgent``'s events), else None (Prefect picks a random one).
        """
        if not self.stable_id or self.receipt_id is None:
            return None
        return uuid.uuid5(_EVENT_NAMESPACE, f"{self.name}:{self.receipt_id}")

    @classmethod
    def from_decision(cls, decision: Decision) -> ReceiptEvent:
        """The event for one decision; run ids and names from ``decision.where`` (task and flow run)."""
        evaluation, where = decision.evaluation, decision.where
        return cls(
            allowed=evaluation.allowed,
            receipt_id=evaluation.receipt_id,
            capability_id=decision.capability_id,
            tool_server=decision.call.tool_server,
            tool_name=decision.call.tool_name,
            task_name=where.get("task_name") or decision.call.tool_name,
            timestamp=iso_timestamp(evaluation.timestamp),
            guard=evaluation.guard,
            reason=evaluation.reason,
            decision=evaluation.decision or None,
            task_run_id=where.get("task_run_id"),
            task_run_name=where.get("task_run_name"),
            flow_run_id=where.get("flow_run_id"),
            flow_run_name=where.get("flow_run_name"),
        )

    def payload(self) -> dict[str, Any]:
        """Build the event's payload.

        Returns:
            ``receipt_id``, ``verdict``, ``capability_id``, ``tool_server``, ``tool_name``,
            ``task_name``, ``timestamp``; on a deny also ``guard``, ``reason``, ``decision``; then
            ``extra``.
        """
        payload: dict[str, Any] = {
            "receipt_id": self.receipt_id,
            "verdict": "allow" if self.allowed else "deny",
            "capability_id": self.capability_id,
            "tool_server": self.tool_server,
            "tool_name": self.tool_name,
            "task_name": self.task_name,
            "timestamp": self.timestamp,
        }
        if not self.allowed:
            payload["guard"] = self.guard
            payload["reason"] = self.reason
            payload["decision"] = dict(self.decision or {"verdict": "deny"})
        if self.extra:
            payload.update(dict(self.extra))
        return payload

    def resource(self) -> dict[str, str]:
        """Build the event's resource: the task run, else ``chio.tool.<server>.<tool>``.

        Returns:
            Prefect resource labels (``prefect.resource.id``, ``prefect.resource.name``, and
            ``prefect.flow-run.id`` when in a flow run).
        """
        if self.task_run_id:
            resource = {
                "prefect.resource.id": f"prefect.task-run.{self.task_run_id}",
                "prefect.resource.name": self.task_run_name or self.task_name,
            }
        else:
            resource = {
                "prefect.resource.id": f"chio.tool.{self.tool_server}.{self.tool_name}",
                "prefect.resource.name": self.task_name,
            }
        if self.flow_run_id:
            resource["prefect.flow-run.id"] = self.flow_run_id
        return resource

    def related(self) -> list[dict[str, str]]:
        """Build the event's related resources: the flow run (role ``flow-run``) and, as upstream names
        it too, the task run (role ``task-run``).

        Returns:
            Those of the two the decision has (none outside a run).
        """
        related: list[dict[str, str]] = []
        if self.flow_run_id:
            flow = {"prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}", "prefect.resource.role": "flow-run"}
            if self.flow_run_name:
                flow["prefect.resource.name"] = self.flow_run_name
            related.append(flow)
        if self.task_run_id:
            task = {"prefect.resource.id": f"prefect.task-run.{self.task_run_id}", "prefect.resource.role": "task-run"}
            if self.task_run_name:
                task["prefect.resource.name"] = self.task_run_name
            related.append(task)
        return related


def write_receipt_event(decision: Decision, *, stable_id: bool = False) -> Any | None:
    """Mirror a decision as a receipt event: the Prefect event writer, a decision observer.

    Args:
        decision: the decision (run ids and names from ``decision.where``).
        stable_id: derive the event id from the receipt (see :meth:`ReceiptEvent.event_id`).

    Returns:
        The emitted Prefect ``Event``, or None when it was logged instead.
    """
    event = ReceiptEvent.from_decision(decision)
    if stable_id:
        event = replace(event, stable_id=True)
    return emit_receipt_event(event)


def emit_receipt_event(event: ReceiptEvent) -> Any | None:
    """Emit a receipt event on Prefect's events backend; log the full payload if it cannot be emitted.

    Never raises: a receipt mirror must not turn an allowed call into a failure.

    Args:
        event: the decision to mirror.

    Returns:
        The Prefect ``Event`` handed to the events worker, or None when it was logged instead.
    """
    if event.task_run_id is None and event.flow_run_id is None and not _prefect_api_configured():
        # Outside any Prefect run with no API configured, Prefect's emit_event would start a whole
        # temporary server just for this event; there is no run to attach it to anyway.
        logger.info("chio receipt event %s (outside any Prefect run, no PREFECT_API_URL): %s",
                    event.name, _as_json(event))
        return None
    try:
        from prefect.events import emit_event

        emitted = emit_event(
            event=event.name,
            resource=event.resource(),
            related=event.related(),
            payload=event.payload(),
            id=event.event_id(),
        )
    except Exception as err:  # noqa: BLE001 - the mirror must never break the governed call
        _log_undelivered(event, f"{type(err).__name__}: {err}")
        return None
    if emitted is None:
        _log_undelivered(event, "no Prefect events backend accepted it")
    return emitted


def _log_undelivered(event: ReceiptEvent, why: str) -> None:
    logger.warning(
        "chio receipt event %s could not be emitted to Prefect (%s); receipt: %s",
        event.name,
        why,
        _as_json(event),
    )


def _as_json(event: ReceiptEvent) -> str:
    return json.dumps(
        {"event": event.name, "resource": event.resource(), "related": event.related(),
         "payload": event.payload()},
        sort_keys=True,
        default=str,
    )


def _prefect_api_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


# --- upstream chio-prefect 0.1.0's emitters (same names and keywords), over ReceiptEvent -----------


def emit_allow_event(
    *,
    receipt: ChioReceipt,
    task_name: str,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any | None:
    """Emit ``chio.receipt.allow`` for an allow receipt (upstream chio-prefect 0.1.0's signature).

    The event has this project's shape (resource = the task run, see the module docstring). Never
    raises.

    Args:
        receipt: the allow receipt.
        task_name: the Prefect task name.
        flow_run_id: the flow run the call belongs to.
        task_run_id: the task run the call belongs to.
        extra: merged into the payload last.

    Returns:
        The emitted Prefect ``Event``, or None when it was logged instead.
    """
    return emit_receipt_event(
        ReceiptEvent(
            allowed=True,
            receipt_id=receipt.id,
            capability_id=receipt.capability_id,
            tool_server=receipt.tool_server,
            tool_name=receipt.tool_name,
            task_name=task_name,
            timestamp=iso_timestamp(receipt.timestamp),
            task_run_id=task_run_id,
            flow_run_id=flow_run_id,
            extra=extra,
        )
    )


def emit_deny_event(
    *,
    receipt: ChioReceipt | None,
    task_name: str,
    reason: str,
    guard: str | None = None,
    receipt_id: str | None = None,
    capability_id: str | None = None,
    tool_server: str | None = None,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any | None:
    """Emit ``chio.receipt.deny`` (upstream chio-prefect 0.1.0's signature). Never raises.

    Args:
        receipt: the deny receipt, or None when there is no receipt body (then ``receipt_id`` /
            ``capability_id`` / ``tool_server`` name the call).
        task_name: the Prefect task name (also the tool name without a receipt).
        reason: why the call was denied.
        guard: the check that denied it.
        receipt_id: the receipt id, without a receipt body.
        capability_id: the capability, without a receipt body.
        tool_server: the tool server, without a receipt body.
        flow_run_id: the flow run the call belongs to.
        task_run_id: the task run the call belongs to.
        extra: merged into the payload last.

    Returns:
        The emitted Prefect ``Event``, or None when it was logged instead.
    """
    if receipt is not None:
        receipt_id, capability_id, tool_server = receipt.id, receipt.capability_id, receipt.tool_server
        tool_name = receipt.tool_name
        decision = receipt.decision.model_dump(exclude_none=True)
        timestamp = iso_timestamp(receipt.timestamp)
    else:
        tool_name = task_name
        decision = {"verdict": "deny", "guard": guard, "reason": reason}
        timestamp = iso_timestamp()
    return emit_receipt_event(
        ReceiptEvent(
            allowed=False,
            receipt_id=receipt_id,
            capability_id=capability_id,
            tool_server=tool_server or "",
            tool_name=tool_name,
            task_name=task_name,
            timestamp=timestamp,
            guard=guard,
            reason=reason,
            decision={k: v for k, v in decision.items() if v is not None},
            task_run_id=task_run_id,
            flow_run_id=flow_run_id,
            extra=extra,
        )
    )
