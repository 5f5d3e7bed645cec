"""Human approval on Prefect: a pending verdict PAUSES the flow run until a person resumes it.

When the kernel answers a governed task's call with ``pending_approval`` (a signed receipt; nothing
charged, the body has not run), the task calls ``pause_flow_run(wait_for_input=ApprovalInput, key=<approval id>)``:
the flow run is ``Paused`` and the Prefect UI shows the :class:`ApprovalInput` form (decision, reason).
A person resumes it from the UI or with ``resume_flow_run(flow_run_id, run_input={"decision": "approve"})``.

The resume input is only a wake-up (Prefect does not know who the person is, and the kernel's rule is
that an approval is a kernel resolution bound to the call's parameters, principal and expiry):

* ``decision="approve"``: the task re-evaluates the SAME call with ``approval_id``; it runs only on the
  kernel's allow. The person approves in the kernel first (``chio-durable approvals approve <id>``,
  ``POST /approvals/{id}/operator-respond``, or a signed approval token). A resume with no kernel
  resolution finds the approval still pending, and the flow run pauses again (key ``<id>-2``, ...):
  a forged resume never runs the task.
* ``decision="deny"``: the task is denied without running (a deny from anyone can only stop a call).
  The kernel records it (``Kernel.record_form_denial``, source ``prefect-form``): a signed deny
  receipt marked as the unauthenticated form's, and the approval shows ``denied``; the task's error
  names that receipt. (A mock or a stock ``ChioClient`` has no such route: the task is denied all
  the same, without a receipt.)
* nobody resumes before the approval expires: the pause times out and the re-evaluation is the
  kernel's deny with guard ``approval-timeout``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

from chio_durable import Evaluation
from chio_durable._engine import ApprovalWaiter, PendingApproval, pending_approval

log = logging.getLogger("chio_prefect.approvals")

__all__ = [
    "APPROVAL_POLL_INTERVAL", "ApprovalInput", "deny_by_person", "pause_key", "register_flow_run_wake",
    "wait_for_approval", "wait_for_approval_sync", "waking_approval_waiter",
]

APPROVAL_POLL_INTERVAL = 2
"""Seconds between the paused task's checks whether the flow run was resumed."""

_input_class: Any = None


def approval_input_class() -> Any:
    """:class:`ApprovalInput` (a ``prefect.input.RunInput``), built on first use: ``import chio_prefect`` stays light."""
    global _input_class
    if _input_class is None:
        from prefect.input import RunInput

        class ApprovalInput(RunInput):
            """The form the Prefect UI shows on a flow run paused for a chio approval.

            ``decision``: ``"approve"`` wakes the task to ask the kernel again (it runs only if the
            approval was approved IN THE KERNEL); ``"deny"`` denies the call without asking.
            """

            decision: Literal["approve", "deny"] = "approve"
            reason: str | None = None

        ApprovalInput.__qualname__ = "ApprovalInput"
        ApprovalInput.__module__ = "chio_prefect"
        _input_class = ApprovalInput
    return _input_class


def __getattr__(name: str) -> Any:
    if name == "ApprovalInput":
        return approval_input_class()
    raise AttributeError(name)


def pause_key(approval_id: str, attempt: int) -> str:
    """The pause key of the ``attempt``-th wait on one approval (Prefect fires each key once)."""
    return approval_id if attempt == 1 else f"{approval_id}-{attempt}"  # lowercase, digits, dashes only


def _pause_args(pending: PendingApproval, label: str, attempt: int) -> dict[str, Any]:
    description = (
        f"**chio approval {pending.approval_id}** — {label}: {pending.summary}\n\n"
        f"Approve it in the kernel first: `chio-durable approvals approve {pending.approval_id}`; then resume "
        "with decision=approve (the kernel's answer decides). decision=deny stops the call."
    )
    timeout = max(1, math.ceil(pending.expires_at - time.time()) + 1)
    return {
        "wait_for_input": approval_input_class().with_initial_data(description=description, decision="approve"),
        "timeout": timeout,
        "poll_interval": min(APPROVAL_POLL_INTERVAL, timeout),
        "key": pause_key(pending.approval_id, attempt),
    }


FORM_SOURCE = "prefect-form"
"""How the kernel's deny receipt names the resume form (``form_denial.source``)."""

def _form_denial_of(transport: Any) -> Any:
    return getattr(transport, "record_form_denial", None)


def _form_denial_sync_of(transport: Any) -> Any:
    return getattr(transport, "record_form_denial_sync", None)


def deny_by_person(evaluation: Evaluation, pending: PendingApproval, reason: str | None) -> Evaluation:
    """The deny of a call a person refused in the resume form (no kernel allow can follow it), where
    the kernel could not record it."""
    text = f"a person denied approval {pending.approval_id} when resuming the flow run: {reason or 'no reason given'}"
    return replace(
        evaluation, allowed=False, pending=False, guard="approval-denied", reason=text,
        decision={"verdict": "deny", "guard": "approval-denied", "reason": text},
    )


def wait_for_approval_sync(
    evaluation: Evaluation,
    *,
    label: str,
    reevaluate: Callable[[str], Evaluation],
    observe: Callable[[Evaluation], None],
    transport: Any = None,
) -> Evaluation:
    """Pause the flow run while ``evaluation`` is pending; the kernel's final answer (allow or deny).

    ``reevaluate(approval_id)`` asks the kernel again under the approval; ``observe`` sees each
    intermediate (still pending) answer; ``transport`` records a deny given in the form. Outside a
    flow run there is nothing to pause: the pending evaluation is returned and the caller denies
    (fail closed).
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    attempt = 0
    while (pending := pending_approval(evaluation)) is not None:
        attempt += 1
        try:
            answer = pause_flow_run(**_pause_args(pending, label, attempt))
        except FlowPauseTimeout:
            answer = None  # expired: the kernel now answers approval-timeout
        except RuntimeError:  # not in a flow run: nobody can resume it
            return evaluation
        if answer is not None and getattr(answer, "decision", "approve") == "deny":
            record = _form_denial_sync_of(transport)
            reason = getattr(answer, "reason", None)
            recorded = record(pending.approval_id, reason, FORM_SOURCE) if callable(record) else None
            return recorded if recorded is not None else deny_by_person(evaluation, pending, reason)
        evaluation = reevaluate(pending.approval_id)
        if pending_approval(evaluation) is not None:
            observe(evaluation)
    return evaluation


async def wait_for_approval(
    evaluation: Evaluation,
    *,
    label: str,
    reevaluate: Callable[[str], Awaitable[Evaluation]],
    observe: Callable[[Evaluation], None],
    before_pause: Callable[[PendingApproval], Awaitable[bool]] | None = None,
    transport: Any = None,
) -> Evaluation:
    """:func:`wait_for_approval_sync` for async tasks (``apause_flow_run``); ``before_pause`` runs
    before each pause (the agent registers the wake that lets the kernel's answer resume the run) and
    returns True when the approval was answered already: the run then asks the kernel again at once
    instead of pausing (an answer given before the wake was registered would wake nobody)."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import apause_flow_run

    attempt = 0
    while (pending := pending_approval(evaluation)) is not None:
        attempt += 1
        if before_pause is not None and await before_pause(pending):
            evaluation = await reevaluate(pending.approval_id)
            if pending_approval(evaluation) is not None:
                observe(evaluation)
            continue
        try:
            answer = await apause_flow_run(**_pause_args(pending, label, attempt))
        except FlowPauseTimeout:
            answer = None
        except RuntimeError:
            return evaluation
        if answer is not None and getattr(answer, "decision", "approve") == "deny":
            record = _form_denial_of(transport)
            reason = getattr(answer, "reason", None)
            recorded = await record(pending.approval_id, reason, FORM_SOURCE) if callable(record) else None
            return recorded if recorded is not None else deny_by_person(evaluation, pending, reason)
        evaluation = await reevaluate(pending.approval_id)
        if pending_approval(evaluation) is not None:
            observe(evaluation)
    return evaluation


async def agent_approval_waiter(
    evaluation: Evaluation, label: str, reevaluate: Callable[[str], Awaitable[Evaluation]]
) -> Evaluation:
    """A pending tool call pauses the agent's flow run (as ``@chio_task`` does), without a wake."""
    return await wait_for_approval(evaluation, label=label, reevaluate=reevaluate, observe=lambda _: None)


def waking_approval_waiter(governance: Any) -> ApprovalWaiter:
    """``ChioGovernance.approval_waiter`` of ``ChioPrefectAgent``: pause the flow run, and register a
    wake with the kernel first, so the person's answer in the kernel alone resumes the run.

    Args:
        governance: The ``ChioGovernance`` whose kernel transport registers the wake (read at each pause).

    Returns:
        The waiter; every re-evaluation under the approval is recorded by the governance.
    """

    async def register_wake(pending: PendingApproval) -> bool:
        await register_flow_run_wake(governance.transport, pending.approval_id)
        return await approval_answered(governance.chio_client, pending.approval_id)

    async def waiter(
        evaluation: Evaluation, label: str, reevaluate: Callable[[str], Awaitable[Evaluation]]
    ) -> Evaluation:
        return await wait_for_approval(
            evaluation, label=label, reevaluate=reevaluate, observe=lambda _: None, before_pause=register_wake,
            transport=governance.transport,
        )

    return waiter


async def approval_answered(client: Any, approval_id: str) -> bool:
    """Whether the kernel behind ``client`` no longer holds ``approval_id`` pending (answered or
    expired); False when the client cannot say (a stock ``ChioClient``: the pause then waits)."""
    get = getattr(client, "get_approval", None)
    if not callable(get):
        return False
    try:
        info = await get(approval_id)
    except Exception:  # noqa: BLE001 - cannot say: pause as before, the kernel still decides
        return False
    return isinstance(info, dict) and info.get("status") not in (None, "pending")


async def register_flow_run_wake(transport: Any, approval_id: str) -> bool:
    """Register the current flow run's wake on ``approval_id`` (:func:`chio_prefect._wake.wake_fields`).

    Never raises: without a wake the run still resumes from the Prefect UI, or re-asks the kernel
    when its pause times out. Returns whether the kernel took the wake.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    from chio_prefect._wake import wake_fields

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    fields = wake_fields(context.flow_run.id, PREFECT_API_URL.value() or None)
    try:
        registered = bool(await transport.register_approval_wake(approval_id, fields))
    except Exception:  # noqa: BLE001 - the wake is a convenience; the pause and the kernel decide
        log.warning("chio: could not register the wake of approval %s; resume the flow run from the "
                    "Prefect UI after answering", approval_id, exc_info=True)
        return False
    if not registered:
        log.warning("chio: this kernel client cannot register wakes; after answering approval %s, resume "
                    "flow run %s from the Prefect UI", approval_id, context.flow_run.id)
    return registered
