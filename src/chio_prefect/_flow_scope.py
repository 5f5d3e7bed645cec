"""Flow scope: what one ``@chio_flow`` declared, entered (bounded by the parent flow's) for each run."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from chio_sdk.models import ChioScope

from chio_prefect._artifact import flow_run_receipts, flow_run_receipts_async
from chio_prefect._clients import ClientSpec
from chio_prefect._context import FlowGovernance, current_flow_governance, use_flow_governance
from chio_prefect._denials import FLOW_SCOPE_GUARD, envelope_error
from chio_prefect.errors import ChioPermissionError

__all__ = ["FlowConfig", "govern_flow"]


class FlowConfig:
    """What one ``@chio_flow`` declared: its name, scope, capability, tool server and client."""

    def __init__(
        self,
        name: str,
        scope: ChioScope | None,
        capability_id: str | None,
        tool_server: str | None,
        client: ClientSpec,
    ) -> None:
        self.name = name
        self.scope = scope
        self.capability_id = capability_id
        self.tool_server = tool_server
        self.client = client

    def enter(self) -> FlowGovernance:
        """This flow's effective governance, merged with (and bounded by) the enclosing flow's."""
        parent = current_flow_governance()
        if parent is not None and parent.scope is not None and self.scope is not None:
            if not self.scope.is_subset_of(parent.scope):
                reason = (
                    f"flow {self.name!r} declares a scope that is not a subset of the scope of its "
                    f"parent flow {parent.flow_name!r}"
                )
                raise ChioPermissionError(
                    f"Chio capability denied: {reason} (sub-flow {self.name!r}; guard {FLOW_SCOPE_GUARD})"
                ) from envelope_error(reason)
        client = self.client.resolve()
        return FlowGovernance(
            flow_name=self.name,
            scope=self.scope if self.scope is not None else (parent.scope if parent else None),
            capability_id=self.capability_id or (parent.capability_id if parent else None),
            tool_server=self.tool_server or (parent.tool_server if parent else None),
            client=client if client is not None else (parent.client if parent else None),
            parent=parent,
        )


def govern_flow(fn: Callable[..., Any], config: FlowConfig) -> Callable[..., Any]:
    """``fn`` wrapped so that each run enters the flow's scope and collects its receipt table.

    The wrapper keeps ``fn``'s name, docstring and signature and carries ``__chio_flow__``.
    """
    governed: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def governed_async(*args: Any, **kwargs: Any) -> Any:
            async with flow_run_receipts_async():
                with use_flow_governance(config.enter()):
                    return await fn(*args, **kwargs)

        governed = governed_async
    else:

        @functools.wraps(fn)
        def governed_sync(*args: Any, **kwargs: Any) -> Any:
            with flow_run_receipts(), use_flow_governance(config.enter()):
                return fn(*args, **kwargs)

        governed = governed_sync

    setattr(governed, "__chio_flow__", config)
    return governed
