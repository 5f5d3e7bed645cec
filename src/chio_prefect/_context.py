"""Flow-scope plumbing: what the enclosing ``@chio_flow`` grants, held in a ContextVar.

The ``@chio_flow`` wrapper sets :data:`_current_flow` for the duration of its body and resets it
after. A ContextVar (not a global, not the Flow object) is what keeps concurrent flow runs apart:
each thread starts with an empty context, each asyncio task runs in a copy of its creator's
context, and Prefect copies the caller's context into the worker thread of a ``.submit()``-ed task,
so a task always sees the governance of the flow run that called it and of no other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chio_sdk.models import ChioScope, Operation

if TYPE_CHECKING:
    from chio_durable import KernelTransport

__all__ = ["FlowGovernance", "current_flow_governance", "scope_allows", "use_flow_governance"]


@dataclass(frozen=True)
class FlowGovernance:
    """The effective governance of one running ``@chio_flow`` (already merged with its parent's).

    Attributes:
        flow_name: the flow's name (for messages).
        scope: the envelope every enclosed task must stay inside (``None``: no envelope; the
            capability's own scope at the kernel is then the only bound).
        capability_id: capability enclosed tasks evaluate against unless they name their own.
        tool_server: tool server of enclosed tasks that do not name their own.
        client: the kernel transport enclosed tasks use unless they name their own (``None``: default).
        parent: the governance of the enclosing flow, for nested flows.
    """

    flow_name: str
    scope: ChioScope | None
    capability_id: str | None
    tool_server: str | None
    client: KernelTransport | None
    parent: FlowGovernance | None = None


_current_flow: ContextVar[FlowGovernance | None] = ContextVar("chio_prefect_flow", default=None)


def current_flow_governance() -> FlowGovernance | None:
    """The governance of the ``@chio_flow`` running in this context, or ``None`` outside one."""
    return _current_flow.get()


@contextmanager
def use_flow_governance(governance: FlowGovernance) -> Iterator[FlowGovernance]:
    """Make ``governance`` the current flow governance until the block exits."""
    token = _current_flow.set(governance)
    try:
        yield governance
    finally:
        _current_flow.reset(token)


def scope_allows(
    scope: ChioScope, tool_server: str, tool_name: str, operation: Operation = Operation.INVOKE
) -> bool:
    """Whether some grant of ``scope`` covers ``operation`` on ``tool_server/tool_name``.

    ``"*"`` in a grant's ``server_id`` or ``tool_name`` matches anything, as in
    ``ToolGrant.is_subset_of``. Constraints and budgets are not judged here: the kernel does that.
    """
    for grant in scope.grants:
        if grant.server_id not in ("*", tool_server):
            continue
        if grant.tool_name not in ("*", tool_name):
            continue
        if operation in grant.operations:
            return True
    return False
