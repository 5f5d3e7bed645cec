"""What a denied call looks like: to the model, to the caller, and in a record."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chio_durable._call import GovernedCall
from chio_durable._decision import Decision, Evaluation

__all__ = [
    "DenyErrorFactory",
    "GovernanceDenied",
    "GovernedRecord",
    "denied_listing_message",
    "denied_tool_message",
    "permission_error",
    "receipt_id_in_denied_message",
    "run_receipt_ids",
]


@dataclass(frozen=True)
class GovernedRecord(Decision):
    """One evaluation made for an agent run: a :class:`~chio_durable.Decision`, plus its run and position.

    Attributes:
        run_id: the agent run id, or None.
        position: where in the run the call stands (part of its idempotency key).
    """

    run_id: str | None
    position: str

    def _repr_html_(self) -> str:
        """One row of the receipt table (the same table on every engine: ``ReceiptTable``)."""
        from chio_durable.agent._display import records_html

        return records_html([self])


class GovernanceDenied(Exception):
    """The ``__cause__`` of the ``PermissionError`` a denied agent call raises (engine-neutral default).

    Engine wrappers may substitute their own error type (``ChioPrefectError``, ``ChioTemporalError``)
    through ``ChioGovernance(deny_error=...)``; it carries the same four fields.
    """

    def __init__(
        self,
        receipt_id: str | None,
        guard: str | None,
        reason: str | None,
        decision: dict[str, Any] | None = None,
        call: GovernedCall | None = None,
    ) -> None:
        self.receipt_id = receipt_id
        self.guard = guard
        self.reason = reason
        self.decision = decision or {}
        self.call = call
        where = f" {call.kind} call {call.label}" if call is not None else ""
        super().__init__(f"Chio denied{where} (guard: {guard}; receipt: {receipt_id}): {reason}")


DenyErrorFactory = Callable[[Evaluation, GovernedCall], BaseException]
"""Builds the ``__cause__`` of the ``PermissionError`` raised for a denied call."""


def default_deny_error(evaluation: Evaluation, call: GovernedCall) -> BaseException:
    return GovernanceDenied(evaluation.receipt_id, evaluation.guard, evaluation.reason, evaluation.decision, call)


def permission_error(
    evaluation: Evaluation,
    call: GovernedCall,
    factory: DenyErrorFactory | None = None,
    error_class: type[PermissionError] = PermissionError,
) -> PermissionError:
    """The ``PermissionError`` for a denied call, its ``__cause__`` built by ``factory``."""
    error = error_class(
        f"Chio denied the {call.kind} call {call.label} (guard: {evaluation.guard}, "
        f"receipt: {evaluation.receipt_id}): {evaluation.reason or 'no reason given'}"
    )
    error.__cause__ = (factory or default_deny_error)(evaluation, call)
    return error


def denied_tool_message(evaluation: Evaluation) -> str:
    """Say to the model that one of its tool calls was denied (``on_deny="tell_model"``).

    Returned to the model as a failed tool result (pydantic-ai ``ToolFailed``): the model sees it,
    the run continues, and no tool-retry budget is spent.

    Args:
        evaluation: the deny.

    Returns:
        The message: the call, the guard and reason, the receipt id, and not to retry.
    """
    guard = evaluation.guard or "policy"
    reason = evaluation.reason or "not permitted by the capability"
    return (
        f"Permission denied: the call to {evaluation.tool_server}/{evaluation.tool_name} was not run "
        f"(Chio guard '{guard}': {reason}; receipt {evaluation.receipt_id}). "
        "Do not retry this call; continue without it or tell the user it is not permitted."
    )


_DENIED_RECEIPT = re.compile(r"^Permission denied: the call to .*; receipt (\S+)\)\. Do not retry this call", re.S)


def receipt_id_in_denied_message(text: object) -> str | None:
    """The receipt id in a :func:`denied_tool_message` (what the model was told), else ``None``.

    The message is the only trace a told deny leaves in a run's messages (pydantic-ai's failed tool
    result has no metadata); its format and this parser live side by side.
    """
    if not isinstance(text, str):
        return None
    match = _DENIED_RECEIPT.match(text)
    rid = match.group(1) if match else None
    return rid if rid and rid != "None" else None


def run_receipt_ids(records: Iterable[Decision]) -> list[str]:
    """THE meaning of ``receipt_ids_of(result)`` on both engines: the receipt ids of every decision
    on a call of the run (model requests, tool and MCP tool calls), allow and deny, in call order,
    each once (a retried call gets its receipt back and is not listed twice). MCP listings are not
    calls of the run's messages: they are in ``receipts_of`` (Prefect) and the envelope (Temporal)."""
    ids: dict[str, None] = {}
    for record in records:
        if record.call.kind == "mcp_list" or record.receipt_id is None:
            continue
        ids.setdefault(record.receipt_id, None)
    return list(ids)


def denied_listing_message(evaluation: Evaluation) -> str:
    """What the model (as instructions) and the user (a WARNING) are told when an MCP listing is denied.

    A denied listing hides the whole server (``on_deny="tell_model"``): without this, the model only
    meets "Unknown tool name" when it tries one of the server's tools. Names the missing grant.
    Deterministic for a given decision (no time, no receipt id), so a replayed run says the same.
    """
    server = evaluation.tool_server
    guard = evaluation.guard or "policy"
    head = f"The tools of MCP server '{server}' are not available in this run: Chio denied listing them"
    tail = "do not try to call its tools, and tell the user if they are needed."
    if guard != "scope":  # revoked, expired, out of budget...: not a missing grant
        return f"{head} (guard '{guard}': {evaluation.reason or 'not permitted'}); {tail}"
    return (
        f"{head} (guard 'scope'). Using any tool of '{server}' needs the grant "
        f"'{server}/{evaluation.tool_name}' (listing the server) besides the grant for that tool; {tail}"
    )


def listing_deny_is_a_missing_grant(evaluation: Evaluation) -> bool:
    """A listing denied for scope: a configuration gap the user must see (logged at WARNING)."""
    return evaluation.guard == "scope"
