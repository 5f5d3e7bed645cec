"""Human approval on Temporal: the activity says "pending", the WORKFLOW waits durably.

An activity cannot wait for a person (its timeouts and retries are for work, not for humans), so:

* **activity side** (``ChioActivityInterceptor.govern``): a ``pending_approval`` verdict fails the
  activity with the non-retryable ``ApplicationError(type="ChioApprovalPending")`` whose
  ``details[0]`` holds the approval's facts (``approval_id``, ``expires_at``, ``summary``...). The
  body does not run and nothing is charged.
* **workflow side** (the interceptor's workflow interceptor): the activity handle sees that error,
  records the approval as pending for THIS run (query ``chio_pending_approvals``), and waits with
  ``workflow.wait_condition`` until the update ``chio_approval`` names it (its validator refuses an
  id that is not pending for this run) or the approval expires. Then it schedules the same activity
  again, with the approval id in the ``chio-approval-id`` header; that execution re-evaluates with
  ``approval_id`` and runs only on the kernel's allow. An update only wakes the workflow: the kernel
  decides (approved -> allow; denied, revoked, expired -> a deny, ``approval-timeout`` for expiry;
  still pending -> the workflow waits again).

Everything the workflow side decides on comes from its history (the activity failure's details, the
update, timers), so replay is deterministic. No update arrives before the approval is pending: the
validator rejects it, and the rejection is not written to the history.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import temporalio.converter
import temporalio.workflow
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory

from chio_durable._engine import PendingApproval

__all__ = [
    "APPROVAL_HEADER",
    "APPROVAL_PENDING_ERROR_TYPE",
    "APPROVAL_QUERY",
    "APPROVAL_UPDATE",
    "ApprovalWaits",
    "approval_id_from_headers",
    "pending_error",
]

APPROVAL_PENDING_ERROR_TYPE = "ChioApprovalPending"
"""``ApplicationError.type`` of an activity whose call waits for a person (non-retryable)."""

APPROVAL_UPDATE = "chio_approval"
"""Workflow update that wakes a run waiting on an approval: ``temporal workflow update execute --name chio_approval --input '"apr-..."'``."""

APPROVAL_QUERY = "chio_pending_approvals"
"""Workflow query listing the approvals this run waits on."""

APPROVAL_HEADER = "chio-approval-id"
"""Temporal header carrying the approval id to the re-run of a pending activity."""

#: Past ``expires_at`` the workflow waits this much longer before asking the kernel (clock skew), and
#: at least this long in any one wait (a kernel still saying "pending" is not asked in a busy loop).
_SLACK_SECONDS = 1.0

_converter = temporalio.converter.PayloadConverter.default


def approval_id_from_headers(headers: Mapping[str, Payload] | None) -> str | None:
    """The approval id a re-run activity carries (``None``: a first execution, or a foreign header)."""
    if not headers or APPROVAL_HEADER not in headers:
        return None
    try:
        value = _converter.from_payloads([headers[APPROVAL_HEADER]])[0]
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def pending_error(
    *, pending: PendingApproval, activity_type: str, tool_server: str, tool_name: str,
    workflow_id: str | None, run_id: str | None, capability_id: str | None,
) -> ApplicationError:
    """The non-retryable error of an activity whose call waits for a person; ``details[0]``: the facts."""
    details = {
        **pending.to_dict(),
        "activity_type": activity_type,
        "tool_server": tool_server,
        "tool_name": tool_name,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "capability_id": capability_id,
    }
    message = (
        f"Chio: activity {activity_type!r} ({tool_server}/{tool_name}) of workflow {workflow_id!r} waits for "
        f"approval {pending.approval_id}: {pending.summary} [receipt_id={pending.receipt_id}]"
    )
    return ApplicationError(
        message, details, type=APPROVAL_PENDING_ERROR_TYPE, non_retryable=True,
        category=ApplicationErrorCategory.BENIGN,
    )


def _pending_of(err: BaseException) -> tuple[PendingApproval, dict[str, Any]] | None:
    """The pending approval an activity failed with, or ``None`` for any other failure."""
    cause = err.cause if isinstance(err, ActivityError) else None
    if not isinstance(cause, ApplicationError) or cause.type != APPROVAL_PENDING_ERROR_TYPE:
        return None
    details = cause.details[0] if cause.details else None
    pending = PendingApproval.from_dict(details)
    if pending is None:
        return None
    return pending, dict(details) if isinstance(details, dict) else {}


class ApprovalWaits:
    """One workflow run's approvals: what it waits on, and which ones an update woke.

    Lives on the run's workflow interceptor; :meth:`install` registers the update and the query.
    """

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}
        self._woken: set[str] = set()
        # called with True when the run starts waiting on a person, False when it waits on none
        # (the ChioPendingApproval search attribute, chio_temporal._search_attributes)
        self.listeners: list[Callable[[bool], None]] = []

    def _notify(self, waiting: bool) -> None:
        for listener in self.listeners:
            listener(waiting)

    @classmethod
    def for_this_run(cls) -> ApprovalWaits:
        """The run's one instance: several chio interceptors on a worker (one per governed agent)
        share it, so the query and the update reach the waits whichever interceptor waits."""
        existing = getattr(temporalio.workflow.get_query_handler(APPROVAL_QUERY), "__self__", None)
        if isinstance(existing, ApprovalWaits):
            return existing
        waits = cls()
        waits.install()
        return waits

    def install(self) -> None:
        """Register the ``chio_approval`` update (with its validator) and the ``chio_pending_approvals`` query."""
        temporalio.workflow.set_update_handler(APPROVAL_UPDATE, self._on_update, validator=self._validate)
        temporalio.workflow.set_query_handler(APPROVAL_QUERY, self.list_pending)

    def list_pending(self) -> list[dict[str, Any]]:
        """The approvals this run waits on (query ``chio_pending_approvals``), oldest first."""
        return [dict(facts) for facts in self.pending.values()]

    def _validate(self, approval_id: str) -> None:
        if not isinstance(approval_id, str) or approval_id not in self.pending:
            raise ApplicationError(
                f"approval {approval_id!r} is not pending in this workflow run (pending: {sorted(self.pending)}); "
                "query chio_pending_approvals",
                type="ChioApprovalNotPending",
                non_retryable=True,
            )

    async def _on_update(self, approval_id: str) -> dict[str, Any]:
        # Only a wake-up: the re-run activity asks the kernel, whose resolution decides.
        self._woken.add(approval_id)
        return {
            "approval_id": approval_id,
            "woken": True,
            "note": "the activity is re-evaluated now; it runs only if the kernel has the approval approved",
        }

    async def wait_until(self, approval_id: str, facts: dict[str, Any], done: Callable[[], bool]) -> bool:
        """Listed as pending (query ``chio_pending_approvals``), wait until the update ``chio_approval``
        names ``approval_id`` or ``done()`` holds (deterministic: history only).

        Args:
            approval_id: The approval waited on.
            facts: What the query lists for it (``approval_id`` among them).
            done: The other end of the wait (e.g. the agent's own wait for the kernel's wake ended).

        Returns:
            Whether the update woke it.
        """
        self.pending[approval_id] = facts
        if len(self.pending) == 1:
            self._notify(True)
        try:
            await temporalio.workflow.wait_condition(lambda: approval_id in self._woken or done())
            return approval_id in self._woken
        finally:
            self._woken.discard(approval_id)
            self.pending.pop(approval_id, None)
            if not self.pending:
                self._notify(False)

    async def wait(self, pending: PendingApproval, facts: dict[str, Any]) -> None:
        """Wait until an update names ``pending`` or it expires (deterministic: history and timers only)."""
        approval_id = pending.approval_id
        self.pending[approval_id] = facts
        if len(self.pending) == 1:
            self._notify(True)
        try:
            remaining = pending.expires_at - temporalio.workflow.now().timestamp() + _SLACK_SECONDS
            try:
                await temporalio.workflow.wait_condition(
                    lambda: approval_id in self._woken,
                    timeout=timedelta(seconds=max(remaining, _SLACK_SECONDS)),
                    timeout_summary=f"chio approval {approval_id} expires",
                )
            except asyncio.TimeoutError:
                pass  # expired: the kernel now answers the re-run with a deny (approval-timeout)
        finally:
            self._woken.discard(approval_id)
            self.pending.pop(approval_id, None)
            if not self.pending:
                self._notify(False)


async def _run_with_approvals(
    handle: temporalio.workflow.ActivityHandle[Any],
    restart: Callable[[str], temporalio.workflow.ActivityHandle[Any]],
    waits: ApprovalWaits,
    owner: _ApprovalActivityHandle,
) -> Any:
    while True:
        owner.current = handle
        try:
            return await handle
        except ActivityError as err:
            found = _pending_of(err)
            if found is None:
                raise
        pending, facts = found
        await waits.wait(pending, facts)
        handle = restart(pending.approval_id)


class _ApprovalActivityHandle(temporalio.workflow.ActivityHandle[Any]):
    """The activity handle workflow code gets: waits on pending approvals, re-runs with the approval id."""

    def __init__(
        self,
        handle: temporalio.workflow.ActivityHandle[Any],
        restart: Callable[[str], temporalio.workflow.ActivityHandle[Any]],
        waits: ApprovalWaits,
    ) -> None:
        self.current = handle
        super().__init__(_run_with_approvals(handle, restart, waits, self))

    def cancel(self, msg: Any | None = None) -> bool:
        self.current.cancel(msg)
        return super().cancel(msg)


def with_approval_header(headers: Mapping[str, Payload], approval_id: str) -> Mapping[str, Payload]:
    """``headers`` plus the approval id for the re-run."""
    return {**headers, APPROVAL_HEADER: _converter.to_payloads([approval_id])[0]}


def waiting_handle(
    input: Any,
    start: Callable[[Any], temporalio.workflow.ActivityHandle[Any]],
    waits: ApprovalWaits,
) -> temporalio.workflow.ActivityHandle[Any]:
    """Start the activity of ``input`` (a ``StartActivityInput`` / ``StartLocalActivityInput``) with
    ``start``; if it comes back pending, wait and start it again carrying the approval id."""

    def restart(approval_id: str) -> temporalio.workflow.ActivityHandle[Any]:
        # A fresh activity id: the re-run is a new execution (a new idempotency key in the kernel).
        again = dataclasses.replace(
            input, headers=with_approval_header(input.headers, approval_id), activity_id=None
        )
        return start(again)

    return _ApprovalActivityHandle(start(input), restart, waits)
