"""Denies decided before evaluation (the scope envelope) and the message every task deny carries."""

from __future__ import annotations

from chio_prefect.errors import ChioPrefectError

__all__ = ["FLOW_SCOPE_GUARD", "TASK_SCOPE_GUARD", "deny_message", "envelope_error"]

FLOW_SCOPE_GUARD = "flow-scope"
"""Guard name of a deny decided by the flow-scope envelope (before evaluation; signed by ``Kernel.record_denial``)."""

TASK_SCOPE_GUARD = "task-scope"
"""Guard name of a deny because the task's own declared scope does not grant its tool."""


def envelope_error(reason: str, guard: str = FLOW_SCOPE_GUARD) -> ChioPrefectError:
    """The error of a deny decided locally by a scope (no receipt yet)."""
    return ChioPrefectError(
        receipt_id=None,
        guard=guard,
        reason=reason,
        decision={"verdict": "deny", "guard": guard, "reason": reason},
    )


def deny_message(
    task_name: str, tool_server: str, tool_name: str, error: ChioPrefectError, capability_id: str | None = None
) -> str:
    """The ``PermissionError`` message of a task deny; fills in what ``error`` does not know yet."""
    # Starts as upstream chio-prefect's does ("Chio capability denied: <reason>"); then what was called.
    target = f"{tool_server}/{tool_name}" if tool_server else tool_name
    with_cap = f" with capability {capability_id!r}" if capability_id else ""
    receipt = f", receipt {error.receipt_id}" if error.receipt_id else ""
    error.task_name = error.task_name or task_name
    error.tool_server = error.tool_server or tool_server or None
    error.capability_id = error.capability_id or capability_id
    return (
        f"Chio capability denied: {error.reason} (task {task_name!r} calling {target}{with_cap}; "
        f"guard {error.guard}{receipt})"
    )
