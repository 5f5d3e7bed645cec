"""A tool call waiting for a person, inside a DBOS workflow: a durable ``DBOS.recv``.

pydantic-ai 2.78's DBOS durability supplies no external-event waiter, so ``ChioDBOSAgent`` sets
``ChioGovernance.approval_waiter`` to :func:`dbos_approval_waiter`: in workflow code it

1. registers a wake with the kernel in a DBOS step (``chio.approval_wake``), so the person's one
   answer in the kernel (CLI ``chio-durable approvals approve ID``, the sidecar, a signed token)
   sends a DBOS message to this workflow (:mod:`chio_dbos._wake`);
2. waits with ``DBOS.recv(topic, timeout_seconds=<poll interval>)`` (durable: a recovered workflow
   gets the recorded message or timeout back);
3. asks the kernel again under the approval id (the ``evaluate`` step): only the kernel's allow runs
   the call; while the approval is still pending it waits again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbos import DBOS

from chio_durable import Evaluation, KernelTransport
from chio_dbos._wake import approval_topic, wake_fields

__all__ = ["WAKE_STEP", "dbos_approval_waiter"]

log = logging.getLogger("chio_dbos")

WAKE_STEP = "chio.approval_wake"
"""The name of the DBOS step that registers a wake with the kernel (persisted: keep it stable)."""

Reevaluate = Callable[[str], Awaitable[Evaluation]]


async def _register_wake(transport: KernelTransport, approval_id: str, wake: dict[str, Any]) -> bool:
    """Register ``wake`` on ``approval_id`` (False: this kernel client cannot, the workflow polls)."""
    return await transport.register_approval_wake(approval_id, wake)


def dbos_approval_waiter(
    transport: Callable[[], KernelTransport], system_database_url: Callable[[], str | None], poll_seconds: Callable[[], float]
) -> Callable[[Evaluation, str, Reevaluate], Awaitable[Evaluation]]:
    """The ``ChioGovernance.approval_waiter`` of a DBOS-governed agent.

    Args:
        transport: Returns the governance's kernel transport.
        system_database_url: Returns the DBOS system database URL the kernel's waker sends to
            (``None``: no wake is registered, the workflow re-asks the kernel every poll interval).
        poll_seconds: Returns how long one wait lasts before the workflow re-asks the kernel.

    Returns:
        ``(pending evaluation, label, reevaluate) -> final evaluation``.
    """

    async def wait(pending: Evaluation, label: str, reevaluate: Reevaluate) -> Evaluation:
        approval_id = pending.approval_id
        workflow_id = DBOS.workflow_id
        if approval_id is None or workflow_id is None or DBOS.step_id is not None:
            return pending  # nothing to wait on here: pending is not allowed, so the call is denied
        url = system_database_url()
        registered = False
        if url is not None:
            wake = wake_fields(url, workflow_id, approval_id)
            registered = await DBOS.run_step_async({"name": WAKE_STEP}, _register_wake, transport(), approval_id, wake)
        if not registered:
            log.warning(
                "chio: no wake registered for approval %s (%s); workflow %s re-asks the kernel every %s s",
                approval_id, label, workflow_id, poll_seconds(),
            )
        current = pending
        while current.pending:
            await DBOS.recv_async(approval_topic(approval_id), timeout_seconds=poll_seconds())
            current = await reevaluate(approval_id)
        return current

    return wait
