"""Human approval in a governed pydantic-ai agent: a pending tool call is a deferred-tool approval.

When the kernel answers a tool call (function tool or MCP tool) with ``pending_approval``, the tool
does not run and :class:`ChioGovernance` raises pydantic-ai's ``ApprovalRequired`` with
``metadata={"chio_approval": {approval_id, expires_at, summary, parameter_hash, receipt_id}}``. A plain
agent then ends its run with ``DeferredToolRequests`` as output (``output_type`` must include it, as
for any approval-requiring tool; otherwise pydantic-ai fails the run and the tool still does not run).

The next run passes ``DeferredToolResults`` (``approvals={tool_call_id: ToolApproved()}``, and best
the ``metadata`` of the requests, which :func:`approval_results` copies). ``ToolApproved`` is only a
wake-up: the call is evaluated again with the approval id and runs only on the kernel's allow, which
requires the approval to have been approved IN THE KERNEL, for these parameters (an
``override_args`` changes them: a deny), this principal, before its expiry. A ``ToolApproved``
without any kernel resolution gets the same approval back as ``ApprovalRequired`` (the run defers
again); a kernel deny is told to the model (or raised with ``on_deny="raise"``). ``ToolDenied`` never
runs the tool (pydantic-ai does not call it).

Durable wrappers may instead wait inside the run (:attr:`ChioGovernance.approval_waiter`): the
Prefect agent pauses its flow run, as ``@chio_task`` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chio_durable._approval import PendingApproval, pending_approval
from chio_durable._decision import Evaluation

if TYPE_CHECKING:
    from pydantic_ai import DeferredToolRequests, DeferredToolResults
    from pydantic_ai.tools import RunContext

__all__ = [
    "APPROVAL_METADATA_KEY",
    "ApprovalWaiter",
    "RememberedApprovals",
    "approval_required",
    "approval_results",
    "approval_id_of",
]

APPROVAL_METADATA_KEY = "chio_approval"
"""Key of the approval's facts in ``ApprovalRequired.metadata`` / ``DeferredToolRequests.metadata[id]``."""

ApprovalWaiter = Callable[[Evaluation, str, Callable[[str], Awaitable[Evaluation]]], Awaitable[Evaluation]]
"""``(pending evaluation, label, reevaluate(approval_id)) -> final evaluation``: waits inside the run."""


class RememberedApprovals:
    """tool_call_id -> approval id of recent deferrals (so ``approvals={id: True}`` works in-process)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._ids: OrderedDict[str, str] = OrderedDict()

    def remember(self, tool_call_id: str | None, approval_id: str) -> None:
        if not tool_call_id:
            return
        self._ids[tool_call_id] = approval_id
        self._ids.move_to_end(tool_call_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def get(self, tool_call_id: str | None) -> str | None:
        return self._ids.get(tool_call_id) if tool_call_id else None


def approval_id_of(ctx: RunContext[Any], remembered: RememberedApprovals) -> str | None:
    """The kernel approval an approved (``ToolApproved``) call is re-asked under, if any is known."""
    if not ctx.tool_call_approved:
        return None
    metadata = ctx.tool_call_metadata
    facts = metadata.get(APPROVAL_METADATA_KEY) if isinstance(metadata, dict) else None
    if isinstance(facts, dict) and isinstance(facts.get("approval_id"), str):
        return str(facts["approval_id"])
    return remembered.get(ctx.tool_call_id)


def approval_required(evaluation: Evaluation) -> Exception | None:
    """pydantic-ai's ``ApprovalRequired`` for a pending evaluation (``None``: not one to wait on)."""
    from pydantic_ai.exceptions import ApprovalRequired

    pending: PendingApproval | None = pending_approval(evaluation)
    if pending is None:
        return None
    return ApprovalRequired(metadata={APPROVAL_METADATA_KEY: pending.to_dict()})


def approval_results(requests: DeferredToolRequests, *, approve: bool = True, message: str | None = None) -> DeferredToolResults:
    """Answer every approval of a run's ``DeferredToolRequests`` at once (metadata carried along).

    Args:
        requests: what the ended run asked for.
        approve: True wakes each call to be re-evaluated under its kernel approval (it runs only if
            the kernel has it approved); False denies them all.
        message: what a denied call tells the model (default ``"The tool call was denied."``).

    Returns:
        The ``DeferredToolResults`` to resume the run with.
    """
    from pydantic_ai import DeferredToolResults, ToolApproved, ToolDenied

    answers: dict[str, Any] = {}
    for call in requests.approvals:
        answers[call.tool_call_id] = ToolApproved() if approve else ToolDenied(message or "The tool call was denied.")
    metadata = {k: dict(v) for k, v in requests.metadata.items() if k in answers}
    return DeferredToolResults(approvals=answers, metadata=metadata)
