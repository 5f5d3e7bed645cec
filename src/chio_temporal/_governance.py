"""The Temporal flavour of :class:`chio_durable.agent.ChioGovernance` that ``ChioTemporalAgent`` puts on an agent.

With pydantic-ai's ``TemporalDurability`` on the agent, the governance's kernel checks are durable
operations, each its own Temporal activity (``agent__<name>__capability__chio__evaluate``,
``__settle``, ``__approval_wake``) run on the worker's copy of this capability; everything else
here runs in workflow code and stays deterministic:

* the run identity is the workflow id + run id, and ``{workflow_id, run_id}`` is signed into every
  receipt's metadata;
* a deny that fails the run is :class:`ChioTemporalDenied`, both the ``PermissionError`` the core
  raises and the non-retryable ``ApplicationError(type="ChioCapabilityDenied")`` that fails the
  workflow (not the workflow task);
* the receipt id of each allowed call is stamped, after the call, on what the run records:
  ``ModelResponse.metadata`` and the tool return's ``metadata`` (never sent to the model);
* a kernel that refuses a request fails the evaluate activity non-retryably
  (``ChioRequestRejected``); a kernel that cannot be reached fails it retryably (``ChioSidecarError``),
  per the activity's retry policy; either way the governed call does not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import temporalio.activity
import temporalio.workflow
from chio_sdk.models import MonetaryAmount
from pydantic_ai.messages import ModelResponse, ToolReturn
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool
from temporalio.exceptions import ApplicationError

from chio_durable import (
    ChioClientLike,
    Decision,
    Evaluation,
    GovernedCall,
    HoldConflict,
    KernelRejected,
    KernelUnavailable,
    ToolCost,
    as_transport,
)
from chio_durable._engine import is_client, notify
from chio_durable.agent import COST_METADATA_KEY, ChioGovernance, current_receipt_id
from chio_temporal._approvals import ApprovalWaits
from chio_temporal.errors import DENIED_ERROR_TYPE, REJECTED_ERROR_TYPE, SIDECAR_ERROR_TYPE

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import WrapModelRequestHandler
    from pydantic_ai.models import ModelRequestContext

__all__ = [
    "RECEIPT_METADATA_KEY",
    "ChioTemporalDenied",
    "TemporalGovernance",
    "TemporalTransport",
    "temporal_run_identity",
    "temporal_run_metadata",
    "temporal_wake_fields",
]

log = logging.getLogger("chio_temporal.agent")

RECEIPT_METADATA_KEY = "chio_receipt_id"
"""Key of the receipt id in ``ModelResponse.metadata`` and in a tool return's ``metadata``."""


class ChioTemporalDenied(ApplicationError, PermissionError):
    """A denied call that fails the run: a ``PermissionError`` (as the core raises off Temporal) that
    is also the non-retryable ``ApplicationError(type="ChioCapabilityDenied")``, so raised in workflow
    code it fails the workflow with that type instead of retrying the workflow task."""

    def __init__(self, message: str, facts: Mapping[str, Any] | None = None) -> None:
        """Build the error.

        Args:
            message: What was denied, by which guard, with the receipt id.
            facts: ``details[0]``: ``tool_server``, ``tool_name``, ``guard``, ``reason``, ``receipt_id``,
                ``capability_id``, ``workflow_id``, ``run_id`` (as the seed-001 deny carries them).
        """
        ApplicationError.__init__(self, message, dict(facts or {}), type=DENIED_ERROR_TYPE, non_retryable=True)


def temporal_run_identity(ctx: RunContext[Any]) -> str | None:
    """The run part of idempotency keys: ``<workflow id>/<run id>`` in a workflow or activity, else ``None``.

    Args:
        ctx: The agent's run context (unused: Temporal's own info names the run).

    Returns:
        The workflow run's identity, or ``None`` outside Temporal (the agent run id is used then).
    """
    if temporalio.workflow.in_workflow():
        info = temporalio.workflow.info()
        return f"{info.workflow_id}/{info.run_id}"
    return None


def temporal_run_metadata(ctx: RunContext[Any]) -> Mapping[str, str] | None:
    """The run context signed into each receipt: ``{"workflow_id", "run_id"}`` in a workflow.

    Args:
        ctx: The agent's run context (unused).

    Returns:
        The metadata, or ``None`` outside a workflow.
    """
    if temporalio.workflow.in_workflow():
        info = temporalio.workflow.info()
        return {"workflow_id": info.workflow_id, "run_id": info.run_id}
    return None


def temporal_wake_fields(token: str) -> Mapping[str, Any]:
    """What the kernel needs to wake this run: the worker client's target and namespace and the token.

    Called inside the ``approval_wake`` activity, so the worker's client is at hand.

    Args:
        token: The resume token pydantic-ai's external-event wait handed out.

    Returns:
        ``{"engine": "temporal", "target", "namespace", "token"}`` for :func:`chio_temporal._wake.wake`.
    """
    client = temporalio.activity.client()
    return {
        "engine": "temporal",
        "target": client.service_client.config.target_host,
        "namespace": client.namespace,
        "token": token,
    }


class TemporalTransport:
    """The kernel transport of a governed agent on Temporal: the client's own transport, chosen on
    first use (a client factory is called then, on the worker, never at import in a workflow sandbox),
    with kernel failures turned into Temporal activity errors inside activities.
    """

    def __init__(self, client_or_factory: ChioClientLike | Callable[[], ChioClientLike]) -> None:
        """Keep the client (or its factory) for the first use.

        Args:
            client_or_factory: A Chio client, or a zero-argument factory of one.
        """
        self._source = client_or_factory
        self._inner: Any = None
        self._instrument: bool | None = None
        self.observers: list[Callable[[Decision], None]] = []
        """Called with each decision made in an activity (the ``chio-temporal/v1`` envelope writer)."""

    @property
    def instrument(self) -> bool | None:
        """Trace its decisions (docs/observability.md), handed to the real client's transport."""
        return self._instrument

    @instrument.setter
    def instrument(self, value: bool | None) -> None:
        self._instrument = value
        if self._inner is not None and hasattr(self._inner, "instrument"):
            self._inner.instrument = value

    def _chosen(self, transport: Any) -> Any:
        if self._instrument is not None and hasattr(transport, "instrument"):
            transport.instrument = self._instrument
        return transport

    @property
    def inner(self) -> Any:
        """The transport of the real client (the factory is called the first time)."""
        if self._inner is None:
            candidate = self._source
            if isinstance(candidate, type) or (callable(candidate) and not is_client(candidate)):
                candidate = typing.cast("Callable[[], ChioClientLike]", candidate)()
            self._inner = self._chosen(as_transport(candidate))
        return self._inner

    def use(self, client: ChioClientLike) -> None:
        """Evaluate with ``client`` from now on (e.g. point module-level agents at a test's kernel).

        Args:
            client: A Chio client.
        """
        self._inner = self._chosen(as_transport(client))

    @property
    def client(self) -> Any:
        """The client in use (``None`` until a factory was called)."""
        return self._inner.client if self._inner is not None else None

    @property
    def url(self) -> str:
        """Where evaluations go (``"unresolved"`` until first use)."""
        return self._inner.url if self._inner is not None else "unresolved"

    @property
    def sends_idempotency_keys(self) -> bool:
        """Whether idempotency keys reach the kernel (``True`` until first use: read without resolving,
        since protocol checks read it at construction)."""
        return bool(self._inner.sends_idempotency_keys) if self._inner is not None else True

    async def evaluate(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        """The kernel's decision on ``call`` (see ``KernelTransport.evaluate``).

        Raises:
            ApplicationError: In an activity: ``ChioRequestRejected`` (non-retryable) or
                ``ChioSidecarError`` (retryable) when the kernel refused or could not decide.
            KernelRejected: Outside an activity, as the inner transport raised it.
            KernelUnavailable: Outside an activity, as the inner transport raised it.
        """
        try:
            result: Evaluation = await self.inner.evaluate(
                call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost, approval_id=approval_id
            )
        except (KernelRejected, KernelUnavailable) as err:
            raise _as_activity_error(err, self.url, call) from err
        if self.observers and temporalio.activity.in_activity():
            decision = Decision(
                call, result, idempotency_key, capability_id=capability_id,
                where={"info": temporalio.activity.info(), "headers": {}},
            )
            notify(self.observers, decision)
        return result

    def evaluate_sync(self, call: GovernedCall, **kwargs: Any) -> Evaluation:
        """:meth:`evaluate` for sync callers."""
        result: Evaluation = self.inner.evaluate_sync(call, **kwargs)
        return result

    async def run(self, make_call: Callable[[], Any]) -> Any:
        """Await another call on the client where its connections live."""
        return await self.inner.run(make_call)

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> Any:
        """Settle a budget hold (``KernelTransport.settle``).

        A hold already closed is left as it is (``None``): the tool activity settled it at the cost
        the tool reported (:mod:`chio_temporal._tool_costs`), or a compensation released it.
        """
        try:
            return await self.inner.settle(receipt_id, actual_cost, op_id)
        except HoldConflict as err:
            log.info("chio: hold %s already closed, left as it is (%s)", receipt_id, err)
            return None

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> Any:
        """Release a budget hold (``KernelTransport.release``)."""
        return await self.inner.release(receipt_id, op_id, reason)

    def settle_sync(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> Any:
        """:meth:`settle` for sync callers."""
        return self.inner.settle_sync(receipt_id, actual_cost, op_id)

    def release_sync(self, receipt_id: str, op_id: str, reason: str = "released") -> Any:
        """:meth:`release` for sync callers."""
        return self.inner.release_sync(receipt_id, op_id, reason)

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        """Register how the kernel wakes the run waiting on ``approval_id``.

        Args:
            approval_id: The pending approval.
            wake: ``{"engine": "temporal", ...}`` (:func:`temporal_wake_fields`).

        Returns:
            Whether the kernel registered it (``False``: the client cannot; the run then polls).
        """
        registered: bool = await self.inner.register_approval_wake(approval_id, wake)
        return registered

    def register_approval_wake_sync(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        """:meth:`register_approval_wake` for sync callers."""
        registered: bool = self.inner.register_approval_wake_sync(approval_id, wake)
        return registered


def _as_activity_error(err: Exception, url: str, call: GovernedCall) -> Exception:
    if not temporalio.activity.in_activity():
        return err
    if isinstance(err, KernelRejected):
        return ApplicationError(
            f"the Chio kernel at {url} rejected the request for {call.label}: {err}",
            {"sidecar_url": url, "detail": str(err)},
            type=REJECTED_ERROR_TYPE,
            non_retryable=True,
        )
    return ApplicationError(
        f"the Chio kernel at {url} gave no decision for {call.label} ({err}); the call did not run, "
        "the activity is retried per its retry policy",
        {"sidecar_url": url, "detail": str(err)},
        type=SIDECAR_ERROR_TYPE,
        non_retryable=False,
    )


class TemporalGovernance(ChioGovernance):
    """``ChioGovernance`` for Temporal (module docstring): stamps receipt ids and declares costs by tool name.

    Args:
        tool_costs: Declared costs of function tools by tool name (amounts or callables of the
            tool's arguments), for tools whose metadata cannot carry a callable.
        receipt_ids_in_results: Stamp each allowed call's receipt id on its recorded result.
        **kwargs: ``ChioGovernance`` options.
    """

    def __init__(
        self, *, tool_costs: Mapping[str, ToolCost] | None = None, receipt_ids_in_results: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.tool_costs: dict[str, ToolCost] = dict(tool_costs or {})
        self.receipt_ids_in_results = receipt_ids_in_results
        self.wake_fields = temporal_wake_fields

    async def pending_tool_call(
        self, ctx: RunContext[Any], call: GovernedCall, record: Any, position: str,
        *, cost: MonetaryAmount | None = None,
    ) -> Any:
        """``ChioGovernance.pending_tool_call`` (the wait through pydantic-ai's external events, woken by
        the kernel), which the workflow update ``chio_approval`` also wakes: the call is then
        re-evaluated under the approval at once, and runs only on the kernel's allow; still pending,
        the run waits again. The approval is listed by the query ``chio_pending_approvals`` meanwhile."""
        approval_id = record.evaluation.approval_id
        if not temporalio.workflow.in_workflow() or approval_id is None:
            return await super().pending_tool_call(ctx, call, record, position, cost=cost)
        waits = ApprovalWaits.for_this_run()
        while True:
            kernel_wait = asyncio.ensure_future(super().pending_tool_call(ctx, call, record, position, cost=cost))
            woken = await waits.wait_until(approval_id, self._pending_facts(record, call), kernel_wait.done)
            if not woken:
                return kernel_wait.result()
            kernel_wait.cancel()  # the update woke the run: stop waiting for the kernel's wake
            with contextlib.suppress(asyncio.CancelledError):
                await kernel_wait
            again = await self.evaluate_call(ctx, call, position=position, cost=cost, approval_id=approval_id)
            if not again.evaluation.pending:
                return again
            record = again

    def _pending_facts(self, record: Any, call: GovernedCall) -> dict[str, Any]:
        evaluation = record.evaluation
        signed = evaluation.pending_approval or {}
        info = temporalio.workflow.info()
        return {
            "approval_id": evaluation.approval_id, "expires_at": signed.get("expires_at"),
            "summary": signed.get("summary"), "parameter_hash": signed.get("parameter_hash"),
            "receipt_id": evaluation.receipt_id, "tool_server": call.tool_server, "tool_name": call.tool_name,
            "workflow_id": info.workflow_id, "run_id": info.run_id, "capability_id": self.capability_id,
        }

    def denied(self, record: Any) -> PermissionError:
        """The :class:`ChioTemporalDenied` for a denied record, its facts in ``details[0]``."""
        error = super().denied(record)
        evaluation = record.evaluation
        metadata = temporal_run_metadata(None) or {}  # type: ignore[arg-type]
        facts = {
            "tool_server": evaluation.tool_server, "tool_name": evaluation.tool_name, "guard": evaluation.guard,
            "reason": evaluation.reason, "receipt_id": evaluation.receipt_id, "capability_id": self.capability_id,
            "workflow_id": metadata.get("workflow_id"), "run_id": metadata.get("run_id"),
        }
        typed = ChioTemporalDenied(str(error.args[0]) if error.args else "Chio denied the call", facts)
        typed.__cause__ = error.__cause__
        return typed

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        """``ChioGovernance.wrap_model_request``, then the allow's receipt id on the response's metadata."""

        async def stamped(request: ModelRequestContext) -> ModelResponse:
            response = await handler(request)
            receipt_id = current_receipt_id()
            if self.receipt_ids_in_results and receipt_id:
                response.metadata = {**(response.metadata or {}), RECEIPT_METADATA_KEY: receipt_id}
            return response

        return await super().wrap_model_request(ctx, request_context=request_context, handler=stamped)

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        """Govern ``toolset`` with a stamping, cost-declaring wrapper inside the governed one."""
        originals: dict[str, Any] = {}
        inner = _ReceiptStampingToolset(wrapped=toolset, governance=self, originals=originals)
        governed = super().get_wrapper_toolset(inner)
        if governed is None:
            return None
        return _ReceiptStampingToolset(wrapped=governed, governance=self, outer=True, originals=originals)

    def tool_receipt_id(self, ctx: RunContext[Any], name: str) -> str | None:
        """The receipt id of the allowed tool call ``name`` at this step of the run (from the records)."""
        position = f"tool#{ctx.run_step}#{ctx.tool_call_id or name}"
        records = [r for r in self.receipts_of(ctx.run_id) if r.position == position] if ctx.run_id else []
        return records[-1].receipt_id if records and records[-1].allowed else None


@dataclass
class _ReceiptStampingToolset(WrapperToolset[Any]):
    """Around (``outer``) and inside the governed toolset: declares ``tool_costs`` for the governance
    and stamps receipt ids on results.

    The outer one puts the declared cost (``tool_costs`` by name, over a cost in the tool's metadata)
    on the tool definition the governed toolset reads; the inner one gives the activity the tool's own
    definition back. Never on the definitions ``get_tools`` lists: those ride every model-request
    activity, where a declared callable cannot be serialized.
    """

    governance: TemporalGovernance | None = None
    outer: bool = False
    originals: dict[str, Any] = field(default_factory=dict)
    """Shared by the outer and inner wrapper: each declared tool's own metadata."""

    def visit_and_replace(
        self, visitor: Callable[[AbstractToolset[Any]], AbstractToolset[Any]]
    ) -> AbstractToolset[Any]:
        return replace(self, wrapped=self.wrapped.visit_and_replace(visitor))

    def _declared(self, name: str, tool: ToolsetTool[Any]) -> ToolsetTool[Any]:
        cost = self.governance.tool_costs.get(name) if self.governance is not None else None
        if cost is None:
            return tool
        metadata = tool.tool_def.metadata
        self.originals[name] = metadata
        return replace(tool, tool_def=replace(tool.tool_def, metadata={**(metadata or {}), COST_METADATA_KEY: cost}))

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        if self.outer:
            tool = self._declared(name, tool)
        elif name in self.originals:
            tool = replace(tool, tool_def=replace(tool.tool_def, metadata=self.originals[name]))
        result = await self.wrapped.call_tool(name, tool_args, ctx, tool)
        if self.governance is None:
            return result
        receipt_id = self.governance.tool_receipt_id(ctx, name) if self.outer else current_receipt_id()
        if self.governance is None or not self.governance.receipt_ids_in_results or not receipt_id:
            return result
        if isinstance(result, ToolReturn):
            if result.metadata is None or isinstance(result.metadata, dict):
                result.metadata = {**(result.metadata or {}), RECEIPT_METADATA_KEY: receipt_id}
            return result
        return ToolReturn(return_value=result, metadata={RECEIPT_METADATA_KEY: receipt_id})
