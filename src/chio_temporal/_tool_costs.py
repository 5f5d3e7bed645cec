"""A governed tool's reported cost and receipt id, carried into its Temporal activity.

The governance decides in workflow code and the tool body runs in pydantic-ai's ``call_tool``
activity, on a worker: the context the governance opened for the call (:func:`current_receipt_id`,
and, when the call declared a cost, :func:`chio_durable.report_cost`) does not cross that boundary
by itself. :class:`ToolCallContext` (an interceptor ``governed.plugin`` installs) carries it:

* workflow side, the ``call_tool`` activity of the agent started inside a governed call gets the
  call's receipt id (and whether it declared a cost) as a Temporal header;
* worker side, the activity body runs with that receipt id current and, if a cost was declared,
  with :func:`report_cost` collecting; a reported cost settles the hold there, at that amount (op id
  ``settle:<receipt id>``, so the workflow's own settle at the declared cost afterwards finds the hold
  settled and changes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import temporalio.activity
import temporalio.workflow
from temporalio.api.common.v1 import Payload
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from chio_durable._engine import cost_report_open, current_receipt_id, receipt_scope, reported_cost_scope, settle_hold

__all__ = ["RECEIPT_HEADER", "ToolCallContext"]

RECEIPT_HEADER = "chio-tool-call"
"""Header of a governed ``call_tool`` activity: ``{"receipt_id": ..., "cost_declared": bool}``."""


class ToolCallContext(Interceptor):
    """Carries a governed tool call's receipt id and cost report into its ``call_tool`` activity.

    Args:
        agent_name: The agent whose ``agent__<name>__...call_tool`` activities are concerned.
        transport: The governance's kernel transport (settles a reported cost's hold).
    """

    def __init__(self, agent_name: str, transport: Any) -> None:
        self.prefix = f"agent__{agent_name}__"
        self.transport = transport

    def concerns(self, activity_type: str) -> bool:
        """Whether ``activity_type`` is one of this agent's tool-call activities."""
        return activity_type.startswith(self.prefix) and activity_type.endswith("call_tool")

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """The worker side: run the tool body in the call's receipt scope, settle a reported cost."""
        return _ToolActivityInbound(next, self)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        """The workflow side: put the governed call's context on its tool activity."""
        root = self

        class _Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(_ToolCallOutbound(outbound, root))

        return _Inbound


class _ToolCallOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, root: ToolCallContext) -> None:
        super().__init__(next)
        self._root = root

    def start_activity(self, input: StartActivityInput) -> Any:
        receipt_id = current_receipt_id()
        if receipt_id and self._root.concerns(input.activity):
            value = {"receipt_id": receipt_id, "cost_declared": cost_report_open()}
            (payload,) = temporalio.workflow.payload_converter().to_payloads([value])
            input.headers = {**input.headers, RECEIPT_HEADER: payload}
        return super().start_activity(input)


def _header(headers: Mapping[str, Payload]) -> dict[str, Any] | None:
    payload = headers.get(RECEIPT_HEADER)
    if payload is None:
        return None
    (value,) = temporalio.activity.payload_converter().from_payloads([payload], [dict])
    return value if isinstance(value, dict) and isinstance(value.get("receipt_id"), str) else None


class _ToolActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ToolCallContext) -> None:
        super().__init__(next)
        self._root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        header = _header(input.headers) if self._root.concerns(temporalio.activity.info().activity_type) else None
        if header is None:
            return await self.next.execute_activity(input)
        receipt_id: str = header["receipt_id"]
        if not header.get("cost_declared"):
            with receipt_scope(receipt_id):
                return await self.next.execute_activity(input)
        with receipt_scope(receipt_id), reported_cost_scope() as report:
            result = await self.next.execute_activity(input)
        if report.amount is not None:
            await settle_hold(self._root.transport, receipt_id, report.amount)
        return result
