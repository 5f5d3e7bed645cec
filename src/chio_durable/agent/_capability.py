"""``ChioGovernance``: Chio governance as a plain pydantic-ai capability, for any agent.

It sees every call through public seams only:

* model requests through ``wrap_model_request``;
* output functions (``ToolOutput(func)`` & co.) through ``wrap_output_process``;
* function-tool calls, MCP tool calls and MCP tool listings through a wrapper toolset
  (``get_wrapper_toolset``) placed around each leaf toolset, *outside* any durable wrapper a
  durability capability installed (durability capabilities are ordered innermost, so their toolset
  wrappers are applied first and ours goes around them).

Every call is evaluated before it runs, on every attempt (never cached), with an idempotency key
made of the run identity, the call's position in the run, the capability, the call and its
parameter hash, so a retried run gets back the same receipts without a second budget charge.
While the governed call runs, its receipt id is readable through :func:`current_receipt_id` —
engine wrappers put it into the cache key of the durable unit (Prefect) or into the unit's result
(Temporal), so a cached result is never served across an authorization boundary.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from chio_sdk.models import MonetaryAmount
from pydantic_ai.capabilities import AbstractCapability, durable_operation
from pydantic_ai.exceptions import ToolFailed, UserError
from pydantic_ai.external_events import ExternalEventError, wait_for_external_event
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import AbstractToolset, CombinedToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from chio_durable.agent._denials import (
    DenyErrorFactory,
    GovernedRecord,
    default_deny_error,
    denied_listing_message,
    denied_tool_message,
    listing_deny_is_a_missing_grant,
    permission_error,
    run_receipt_ids,
)
from chio_durable._approval import evaluate_under
from chio_durable._call import GovernedCall, call_key
from chio_durable._decision import Evaluation
from chio_durable.agent._approvals import ApprovalWaiter, RememberedApprovals, approval_id_of, approval_required
from chio_durable._errors import KernelRejected
from chio_durable._scope import current_receipt_id, receipt_scope
from chio_durable._telemetry import follow
from chio_durable._transport import ChioClientLike, TransportSlot, is_client
from chio_durable.agent._seams import agent_instrument_all
from chio_durable.agent import _budget_hooks
from chio_durable._metering import ModelMetering, ModelPrices, as_metering
from chio_durable.agent._mapping import CallMapper

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import WrapModelRequestHandler, WrapOutputProcessHandler
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.output import OutputContext

__all__ = [
    "ChioGovernance",
    "GovernedToolset",
    "OnDeny",
    "current_receipt_id",
    "receipt_scope",
]

log = logging.getLogger("chio_durable.agent")

follow(agent_instrument_all)  # pydantic-ai's Agent.instrument_all() also traces the Chio decisions

OnDeny = Literal["tell_model", "raise"]

DEFAULT_ID = "chio"
"""The default :attr:`ChioGovernance.id`: part of the persisted names of its durable operations."""

WakeFields = Callable[[str], Mapping[str, Any]]
"""``token -> wake`` for the kernel (``{"engine": ..., ...}``): what wakes a run waiting on an approval
through pydantic-ai's external events, given the resume token the engine handed out. Set by the
engine wrapper; called inside the ``approval_wake`` durable operation (worker side)."""

REALTIME_REFUSED = (
    "Chio governance does not support realtime sessions (agent.realtime(...)): pydantic-ai runs no "
    "model-request hooks there, so the model traffic could not be evaluated by the Chio kernel. "
    "Use run()/run_sync()/iter() for a governed agent, or a separate agent without ChioGovernance "
    "for realtime (ungoverned)."
)

def approval_poll_seconds() -> float:
    """How long one durable wait for an approval lasts before the run re-asks the kernel
    (``$CHIO_APPROVAL_POLL_SECONDS``, default 300): the fallback when no wake reaches the run."""
    try:
        return max(1.0, float(os.environ.get("CHIO_APPROVAL_POLL_SECONDS", "300")))
    except ValueError:
        return 300.0


def _is_mcp_toolset(toolset: AbstractToolset[Any]) -> bool:
    """Whether ``toolset`` is a ``pydantic_ai.mcp.MCPToolset`` (or a subclass), without importing that
    module: an instance means it is loaded already, and importing it here, inside a Temporal workflow
    on its first run, took longer than Temporal's 2 s deadlock detector on a loaded machine (fastmcp
    and mcp are large), which failed the workflow task with ``TMPRL1101``."""
    return any(c.__name__ == "MCPToolset" and c.__module__ == "pydantic_ai.mcp" for c in type(toolset).__mro__)


class ChioGovernance(TransportSlot, AbstractCapability[Any]):
    """Evaluate every model request, tool call and MCP call of an agent with a Chio kernel first.

    Args:
        capability_id: The capability token every call is evaluated against.
        chio_client: ``chio_kernel.LocalChioClient``, a real ``chio_sdk.ChioClient`` (sidecar), or a
            ``chio_sdk.testing`` mock.
        mapper: How calls map to ``(tool_server, tool_name, parameters)``; default :class:`CallMapper`.
        on_deny: ``"tell_model"`` (default): a denied tool call becomes a failed tool result the
            model sees (:func:`denied_tool_message`) and the run continues; a denied MCP listing hides
            that server's tools. ``"raise"``: a denied tool call fails the run with ``PermissionError``.
            A denied model request always fails the run with ``PermissionError``.
        run_identity: Supplied by engine wrappers: the run identity that goes into idempotency keys
            (flow run id for Prefect; workflow id + run id for Temporal). Default: the agent run id.
        on_evaluation: Called after every evaluation (engine wrappers emit events from here).
        deny_error: Builds the ``__cause__`` of the ``PermissionError`` (default :class:`GovernanceDenied`).
        permission_error_class: The ``PermissionError`` (sub)class raised for a deny.
        rejected_error: Builds the error raised (``from`` the :class:`~chio_durable.KernelRejected`)
            when the kernel refuses a call's request as malformed; default: the ``KernelRejected``
            itself. Either way the call does not run and the run fails.
        max_runs_remembered: How many recent runs' receipts :meth:`receipts_of` keeps.
        id: The capability's stable id (pydantic-ai ``AbstractCapability.id``), default ``"chio"``. It
            names the durable operations the kernel checks run as (``evaluate``, ``settle``,
            ``approval_wake``) in an engine's history, so keep it stable across deployments.
        model_prices: How model requests are metered (docs/budgets.md): each request declares an
            estimated cost (the model's price x its ``max_tokens``) and is settled with the actual
            usage afterwards. Prices come from ``genai-prices``; pass ``{model_name: TokenPrice}``, a
            callable ``model_name -> TokenPrice | None`` or a ``ModelMetering`` for models it does
            not know (``FunctionModel``, ``TestModel``) or to change the default token limit.
        run_metadata: Supplied by engine wrappers: the run context signed into each receipt's
            ``metadata`` (``{"flow_run_id": ...}`` for Prefect, ``{"workflow_id", "run_id"}`` for
            Temporal), so ``chio-durable receipts list --flow-run/--workflow-id`` find the run's calls.
        instrument: One OpenTelemetry span per decision, a child of the operation it governs, and the
            decision metrics (docs/observability.md). None (default) follows pydantic-ai's
            ``Agent.instrument_all()`` and ``chio_durable.instrument_all()``; True / False force it.
    """

    def __init__(
        self,
        *,
        capability_id: str,
        chio_client: ChioClientLike,
        mapper: CallMapper | None = None,
        on_deny: OnDeny = "tell_model",
        run_identity: Callable[[RunContext[Any]], str | None] | None = None,
        on_evaluation: Callable[[GovernedRecord, RunContext[Any]], None] | None = None,
        deny_error: DenyErrorFactory | None = None,
        permission_error_class: type[PermissionError] = PermissionError,
        rejected_error: Callable[[KernelRejected, GovernedCall], BaseException] | None = None,
        max_runs_remembered: int = 1024,
        id: str | None = None,
        model_prices: ModelMetering | ModelPrices | None = None,
        run_metadata: Callable[[RunContext[Any]], Mapping[str, str] | None] | None = None,
        instrument: bool | None = None,
    ) -> None:
        if not isinstance(capability_id, str) or not capability_id:
            raise ValueError(
                f"ChioGovernance needs capability_id=<the id of a Chio capability token>, got {capability_id!r}"
            )
        if chio_client is None or not is_client(chio_client):
            raise TypeError(
                "ChioGovernance needs chio_client=LocalChioClient(...), chio_sdk.ChioClient(...) or a "
                f"chio_sdk.testing mock; got {type(chio_client).__name__}"
            )
        if on_deny not in ("tell_model", "raise"):
            raise ValueError(f"on_deny must be 'tell_model' or 'raise', got {on_deny!r}")
        if mapper is not None and not isinstance(mapper, CallMapper):
            raise TypeError(f"mapper must be a CallMapper (or subclass) instance, got {type(mapper).__name__}")
        self.id = id or DEFAULT_ID
        self.description = None
        self.defer_loading = False
        self.capability_id = capability_id
        self.chio_client = chio_client  # the transport is chosen here, once (see the property)
        self.instrument = instrument
        self.mapper = mapper or CallMapper()
        self.on_deny = on_deny
        self._run_identity = run_identity
        self._run_metadata = run_metadata
        self._on_evaluation = on_evaluation
        self._deny_error = deny_error or default_deny_error
        if not (isinstance(permission_error_class, type) and issubclass(permission_error_class, PermissionError)):
            raise TypeError("permission_error_class must be PermissionError or a subclass of it")
        self._permission_error_class = permission_error_class
        self._rejected_error = rejected_error
        self._max_runs = max(1, max_runs_remembered)
        self._records: OrderedDict[str, list[GovernedRecord]] = OrderedDict()
        self.metering: ModelMetering = as_metering(model_prices)
        # Human approval (chio_durable.agent._approvals): None = a pending tool call is deferred
        # (ApprovalRequired); a durable wrapper sets a waiter that waits inside the run instead.
        self.approval_waiter: ApprovalWaiter | None = None
        # Set by an engine whose durability supplies pydantic-ai's ExternalEventWaiter (Temporal):
        # how the kernel wakes a run waiting on an approval (see register_approval_wake).
        self.wake_fields: WakeFields | None = None
        self.approval_poll_seconds = approval_poll_seconds()
        self._approvals = RememberedApprovals()

    def __repr__(self) -> str:
        return (
            f"ChioGovernance(capability_id={self.capability_id!r}, chio_client={self.chio_client!r}, "
            f"mapper={type(self.mapper).__name__}(), on_deny={self.on_deny!r})"
        )

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live client: not spec-loadable

    # --- receipts ------------------------------------------------------------------------------

    def receipts_of(self, run: Any) -> list[GovernedRecord]:
        """List the evaluations of one run, in order.

        Args:
            run: the run result (anything with ``run_id``) or the run id.

        Returns:
            One :class:`GovernedRecord` per evaluation (MCP listings included).

        Raises:
            TypeError: neither a run result nor a run id.
        """
        run_id = run if isinstance(run, str) else getattr(run, "run_id", None)
        if run_id is None:
            raise TypeError(f"receipts_of() needs an agent run result or a run id, got {type(run).__name__}")
        return list(self._records.get(run_id, ()))

    def receipt_ids_of(self, run: Any) -> list[str]:
        """List the receipt ids of every decision on a call of one run.

        Model requests, tool and MCP tool calls, allow and deny, in call order, each once; MCP listings are
        in :meth:`receipts_of`. The same meaning as ``ChioTemporalAgent.receipt_ids_of``.

        Args:
            run: the run result (anything with ``run_id``) or the run id.

        Returns:
            The receipt ids.
        """
        return run_receipt_ids(self.receipts_of(run))

    def _start_run(self, run_id: str | None) -> None:
        if run_id is None:
            return
        # A retried attempt of the same run starts over: its evaluations return the same receipts.
        self._records.pop(run_id, None)
        self._records[run_id] = []
        while len(self._records) > self._max_runs:
            self._records.popitem(last=False)

    def _remember(self, record: GovernedRecord) -> None:
        if record.run_id is None:
            return
        records = self._records.get(record.run_id)
        if records is None:
            self._start_run(record.run_id)
            records = self._records[record.run_id]
        records.append(record)

    # --- evaluation ----------------------------------------------------------------------------

    def run_identity(self, ctx: RunContext[Any]) -> str:
        """Name the run part of idempotency keys.

        Args:
            ctx: the agent run's context.

        Returns:
            The engine's run identity (flow run, workflow run) when a durable wrapper gave one, else the
            agent run id.
        """
        identity = self._run_identity(ctx) if self._run_identity is not None else None
        return identity or ctx.run_id or "run-unknown"

    async def evaluate_call(
        self,
        ctx: RunContext[Any],
        call: GovernedCall,
        *,
        position: str,
        cost: MonetaryAmount | None = None,
        approval_id: str | None = None,
    ) -> GovernedRecord:
        """Evaluate a call at its position in the run and record the decision.

        Args:
            ctx: the agent run's context.
            call: the governed call.
            position: where in the run the call stands (part of its idempotency key).
            cost: the declared cost; an allow is then a budget hold.
            approval_id: re-evaluate under this kernel approval.

        Returns:
            The :class:`GovernedRecord` of the decision (also kept for :meth:`receipts_of`).

        Raises:
            KernelUnavailable: no decision (retryable).
            KernelRejected: the kernel refused the request as malformed (or what ``rejected_error``
                builds from it).
        """
        if call.metadata is None and self._run_metadata is not None:
            call = replace(call, metadata=self._run_metadata(ctx))  # before its hashes are computed
        key = call_key(self.run_identity(ctx), position, self.capability_id, call)
        try:
            evaluation = await self.evaluate_in_kernel(ctx, call, key, cost, approval_id)
        except KernelRejected as err:
            if self._rejected_error is None:
                raise
            raise self._rejected_error(err, call) from err
        record = GovernedRecord(
            call=call, evaluation=evaluation, idempotency_key=key, run_id=ctx.run_id, position=position,
            capability_id=self.capability_id,
        )
        self._remember(record)
        if cost is not None and record.allowed and record.receipt_id:
            _budget_hooks.hold_opened(self.run_identity(ctx), record.receipt_id, self.transport)
        if self._on_evaluation is not None:
            try:
                self._on_evaluation(record, ctx)
            except Exception:  # an observer failing must not hide the decision; say so loudly
                log.exception("chio: on_evaluation observer failed for receipt %s", record.receipt_id)
        return record

    # --- the kernel calls, as pydantic-ai durable operations -------------------------------------
    #
    # With a durability capability on the agent (Temporal, Prefect, DBOS...), each call below runs as
    # its own activity / task / step of this capability (named after ``self.id``), recorded in the
    # engine's history: a replay or a retried run hands back the recorded decision, with no second
    # evaluation and no second charge. Without durability they run inline. Their arguments and
    # results cross the durable boundary, so they are plain data: the call, its key, its cost.

    @durable_operation(name="evaluate")
    async def evaluate_in_kernel(
        self,
        ctx: RunContext[Any],
        call: GovernedCall,
        idempotency_key: str,
        cost: MonetaryAmount | None = None,
        approval_id: str | None = None,
    ) -> Evaluation:
        """Ask the kernel about ``call`` (under ``idempotency_key``; declaring ``cost``; re-asked under
        the approval ``approval_id``): the kernel's signed answer.

        Args:
            ctx: The run context (selects the engine's durable unit).
            call: What is asked: ``(tool_server, tool_name, parameters)`` and its run metadata.
            idempotency_key: The call's key: the same key gets the same receipt back.
            cost: The estimated cost the call declares (an allow is then a hold on the budget).
            approval_id: The kernel approval a pending call is re-asked under.

        Returns:
            The kernel's evaluation (allow, deny or pending approval) with its receipt.

        Raises:
            KernelUnavailable: The kernel gave no decision (retryable).
            KernelRejected: The kernel refused the request as malformed.
        """
        return await evaluate_under(
            self.transport, call, capability_id=self.capability_id, idempotency_key=idempotency_key,
            approval_id=approval_id, cost=cost,
        )

    @durable_operation(name="settle")
    async def settle_in_kernel(self, ctx: RunContext[Any], receipt_id: str, amount: MonetaryAmount) -> bool:
        """Settle the budget hold of the allow ``receipt_id`` at ``amount``.

        Args:
            ctx: The run context (selects the engine's durable unit).
            receipt_id: The allow receipt whose hold is settled.
            amount: What the call really cost.

        Returns:
            True (the result is recorded by the engine, so a replay does not settle twice).
        """
        await _budget_hooks.settle_now(self.transport, receipt_id, amount)
        return True

    @durable_operation(name="approval_wake")
    async def register_approval_wake(self, ctx: RunContext[Any], approval_id: str, token: str) -> dict[str, Any] | None:
        """Tell the kernel how to wake this run when ``approval_id`` is answered: the resume ``token``
        of pydantic-ai's external event, wrapped by the engine's :data:`WakeFields`.

        Args:
            ctx: The run context (selects the engine's durable unit).
            approval_id: The kernel approval the run waits on.
            token: The resume token the engine handed out for the wait.

        Returns:
            ``{"status": ...}`` when the approval was already answered (the wait then ends at once),
            else ``None`` (the run waits until the kernel's answer wakes it).
        """
        if self.wake_fields is None:
            raise UserError("chio: this run waits for an approval through external events, but no engine set wake_fields")
        registered = await self.transport.register_approval_wake(approval_id, dict(self.wake_fields(token)))
        if not registered:
            log.warning(
                "chio: the kernel client cannot register a wake for approval %s; the run re-asks the kernel "
                "every %s s instead", approval_id, self.approval_poll_seconds,
            )
        return None  # wait: the kernel's answer wakes the run (or the poll interval ends the wait)

    async def pending_tool_call(
        self, ctx: RunContext[Any], call: GovernedCall, record: GovernedRecord, position: str,
        *, cost: MonetaryAmount | None = None,
    ) -> GovernedRecord:
        """Wait for a person's answer to a tool call the kernel put up for approval.

        A durable wrapper waits in the run (:attr:`approval_waiter`, or the kernel's approval wake);
        otherwise the run ends with ``DeferredToolRequests``. A pending answer without an approval id is
        returned as is: not allowed, so denied (fail closed).

        Args:
            ctx: the agent run's context.
            call: the tool call.
            record: its pending decision.
            position: its position in the run.
            cost: its declared cost.

        Returns:
            The kernel's final decision on the call.

        Raises:
            ApprovalRequired: the run must end and ask for approval (``DeferredToolRequests``).
        """
        if self.wake_fields is not None and record.evaluation.approval_id is not None:
            return await self._wait_for_kernel_approval(ctx, call, record, position, cost=cost)
        if self.approval_waiter is not None:

            async def reevaluate(approval_id: str) -> Evaluation:
                again = await self.evaluate_call(ctx, call, position=position, cost=cost, approval_id=approval_id)
                return again.evaluation

            final = await self.approval_waiter(record.evaluation, call.label, reevaluate)
            return replace(record, evaluation=final)
        deferral = approval_required(record.evaluation)
        if deferral is None:
            return record
        if record.evaluation.approval_id is not None:
            self._approvals.remember(ctx.tool_call_id, record.evaluation.approval_id)
        raise deferral

    async def _wait_for_kernel_approval(
        self, ctx: RunContext[Any], call: GovernedCall, record: GovernedRecord, position: str,
        *, cost: MonetaryAmount | None,
    ) -> GovernedRecord:
        """Wait through pydantic-ai's external events (the engine's durable wait) until the kernel
        answers the approval, then re-evaluate under it: only the kernel's allow runs the call.

        The wait's ``ask`` registers the resume token with the kernel (``approval_wake``), so the
        person's one answer in the kernel (CLI, sidecar, signed token) also wakes the run. Each wait
        also ends after :func:`approval_poll_seconds` (or at the approval's expiry), when the run
        re-asks the kernel: a client that cannot register a wake still resumes.
        """
        approval_id = record.evaluation.approval_id
        assert approval_id is not None
        # A fixed interval (read at construction), never the wall clock: this runs in workflow code.
        timeout = timedelta(seconds=self.approval_poll_seconds)
        for attempt in range(1, 1_000_000):
            try:
                await wait_for_external_event(
                    f"chio-approval-{approval_id}-{attempt}",
                    ask=partial(self.register_approval_wake, ctx, approval_id),
                    timeout=timeout,
                )
            except ExternalEventError:
                pass  # the poll interval ended: ask the kernel again
            again = await self.evaluate_call(ctx, call, position=position, cost=cost, approval_id=approval_id)
            if not again.evaluation.pending:
                return again
        raise AssertionError("unreachable")  # pragma: no cover

    def denied(self, record: GovernedRecord) -> PermissionError:
        """Build the error a denied call raises.

        Args:
            record: the deny decision.

        Returns:
            The ``PermissionError`` (of the configured class, with its cause attached) to raise.
        """
        return permission_error(record.evaluation, record.call, self._deny_error, self._permission_error_class)

    # --- hooks ---------------------------------------------------------------------------------

    async def before_run(self, ctx: RunContext[Any]) -> None:
        """Start recording a run; refuse a realtime session (its model traffic would not be evaluated).

        Args:
            ctx: the agent run's context.

        Raises:
            UserError: the run is a realtime session.
        """
        if ctx.realtime:
            # A realtime session runs no model-request hooks: the model traffic would not be evaluated.
            raise UserError(REALTIME_REFUSED)
        self._start_run(ctx.run_id)

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: WrapModelRequestHandler,
    ) -> ModelResponse:
        """Evaluate a model request before it is sent; settle its cost after.

        Args:
            ctx: the agent run's context.
            request_context: the request (model, messages, settings).
            handler: sends the request.

        Returns:
            The model's response.

        Raises:
            PermissionError: the kernel denied the request (it is not sent).
        """
        call = self.mapper.model_request(
            agent_name=ctx.agent.name if ctx.agent is not None else None,
            model_name=request_context.model.model_name,
            messages=request_context.messages,
            model_settings=request_context.model_settings,
        )
        cost = _budget_hooks.model_request_cost(self, request_context)
        record = await self.evaluate_call(ctx, call, position=f"model#{ctx.run_step}", cost=cost)
        if not record.allowed:
            raise self.denied(record)
        with receipt_scope(record.receipt_id):
            response = await handler(request_context)
        await _budget_hooks.settle_model_request(self, ctx, record, cost, request_context, response)
        return response

    async def wrap_output_process(
        self,
        ctx: RunContext[Any],
        *,
        output_context: OutputContext,
        output: Any,
        handler: WrapOutputProcessHandler,
    ) -> Any:
        """Evaluate an output function before it runs (also on partial, streamed output).

        Output functions are not in any toolset the wrapper sees, so they are governed here. A deny
        always fails the run.

        Args:
            ctx: the agent run's context.
            output_context: the output being processed.
            output: the output value.
            handler: processes it (runs the output function).

        Returns:
            What the handler returns.

        Raises:
            PermissionError: the kernel denied the output function.
        """
        # Output functions are not in any toolset our wrapper sees (pydantic-ai adds the output
        # toolset after get_wrapper_toolset): govern them here, before the function runs. Also on
        # partial (streamed) output, since the function runs then too. A deny always fails the run.
        if not output_context.has_function:
            return await handler(output)
        tool_def = output_context.tool_def
        name = output_context.function_name or (tool_def.name if tool_def is not None else None) or "output"
        call = self.mapper.output_function(
            agent_name=ctx.agent.name if ctx.agent is not None else None, function_name=name, output=output
        )
        record = await self.evaluate_call(ctx, call, position=f"output#{ctx.run_step}#{name}")
        if not record.allowed:
            raise self.denied(record)
        with receipt_scope(record.receipt_id):
            return await handler(output)

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        """Wrap each leaf toolset so its tool calls and MCP listings are evaluated.

        Args:
            toolset: the agent's toolset.

        Returns:
            The toolset with every leaf wrapped in a :class:`GovernedToolset`.
        """
        return _govern_toolset(toolset, self)


def _single_leaf(toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
    leaves: list[AbstractToolset[Any]] = []
    toolset.apply(leaves.append)
    return leaves[0] if len(leaves) == 1 else None


def _govern_toolset(toolset: AbstractToolset[Any], governance: ChioGovernance) -> AbstractToolset[Any]:
    """Wrap every maximal single-leaf subtree (e.g. ``DurableMCPToolset(MCPServer)``) in a GovernedToolset.

    Wrapping the whole subtree rather than the leaf keeps governance outside durable wrappers, so the
    evaluation runs inline on every attempt and never inside a cached durable unit. Combined and
    wrapper toolsets are opened; any other toolset holding several leaves is governed as a whole.
    """
    if isinstance(toolset, GovernedToolset):
        return toolset
    leaf = _single_leaf(toolset)
    if leaf is not None:
        mcp = _is_mcp_toolset(leaf)
        return (GovernedMCPToolset if mcp else GovernedToolset)(
            wrapped=toolset,
            governance=governance,
            kind="mcp" if mcp else "tool",
            leaf_id=leaf.id,
            leaf_label=leaf.label,
        )
    if isinstance(toolset, CombinedToolset):
        return replace(toolset, toolsets=[_govern_toolset(t, governance) for t in toolset.toolsets])
    if isinstance(toolset, WrapperToolset):
        return replace(toolset, wrapped=_govern_toolset(toolset.wrapped, governance))
    # A container we do not know how to open (several leaves, neither Combined nor Wrapper): govern
    # it as a whole, fail closed. Its calls are function-tool calls on a server named by its id (else
    # its label), never the agent's own server, so only a grant for that container lets them run.
    return GovernedToolset(
        wrapped=toolset,
        governance=governance,
        kind="tool",
        leaf_id=toolset.id or toolset.label,
        leaf_label=toolset.label,
    )


@dataclass
class GovernedToolset(WrapperToolset[Any]):
    """Evaluates each tool call (and each MCP tool listing) of one leaf toolset before it runs.

    Attributes:
        wrapped: the leaf toolset.
        governance: the :class:`ChioGovernance` that evaluates.
        kind: ``"tool"`` (function tools) or ``"mcp"`` (an MCP server).
        leaf_id: the leaf toolset's id, or None.
        leaf_label: the leaf toolset's label (the server id when it has no id).
    """

    governance: ChioGovernance = field(repr=False, kw_only=True)
    kind: Literal["tool", "mcp"] = field(kw_only=True)
    leaf_id: str | None = field(kw_only=True)
    leaf_label: str = field(kw_only=True)

    @property
    def server_id(self) -> str:
        return self.leaf_id or self.leaf_label

    def visit_and_replace(self, visitor: Callable[[AbstractToolset[Any]], AbstractToolset[Any]]) -> AbstractToolset[Any]:
        """Apply a visitor to the wrapped toolset, keeping this wrapper around the result.

        Args:
            visitor: replaces a toolset.

        Returns:
            A copy of this wrapper around the visited toolset.
        """
        return replace(self, wrapped=self.wrapped.visit_and_replace(visitor))

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        """List the tools; an MCP server's listing is evaluated first, once per run.

        Args:
            ctx: the agent run's context.

        Returns:
            The tools by name; none when the listing was denied and the model is told instead.

        Raises:
            PermissionError: the listing was denied and ``on_deny="raise"``.
        """
        if self.kind != "mcp":
            return await self.wrapped.get_tools(ctx)
        gov = self.governance
        call = gov.mapper.mcp_list_tools(server_id=self.server_id)
        # One position per run: every step re-checks the listing (a revocation is seen at the next
        # step) but gets the same receipt back while allowed, so listing is charged once per run.
        record = await gov.evaluate_call(ctx, call, position=f"list#{self.server_id}")
        if not record.allowed:
            if gov.on_deny == "raise":
                raise gov.denied(record)
            log.log(
                logging.WARNING if listing_deny_is_a_missing_grant(record.evaluation) else logging.INFO,
                "chio: listing %s denied (receipt %s); the model is told its tools are not available: %s",
                call.label, record.receipt_id, denied_listing_message(record.evaluation),
            )
            return {}
        with receipt_scope(record.receipt_id):
            return await self.wrapped.get_tools(ctx)


    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        """Evaluate a tool call, then run it only if the kernel allowed it.

        Args:
            name: the tool.
            tool_args: the arguments the model passed.
            ctx: the agent run's context.
            tool: the tool's definition.

        Returns:
            What the tool returns.

        Raises:
            PermissionError: denied and ``on_deny="raise"``.
            ToolFailed: denied and ``on_deny="tell_model"`` (the model is told why).
            ApprovalRequired: a person must approve the call (the run ends with ``DeferredToolRequests``).
        """
        gov = self.governance
        if self.kind == "mcp":
            call = gov.mapper.mcp_tool(server_id=self.server_id, tool_name=name, args=tool_args)
        else:
            call = gov.mapper.function_tool(
                toolset_id=self.leaf_id,
                agent_name=ctx.agent.name if ctx.agent is not None else None,
                tool_name=name,
                args=tool_args,
            )
        position = f"tool#{ctx.run_step}#{ctx.tool_call_id or name}"
        cost = _budget_hooks.tool_cost(gov, tool, tool_args)
        approval_id = approval_id_of(ctx, gov._approvals)  # ToolApproved: re-ask the kernel under its approval
        record = await gov.evaluate_call(ctx, call, position=position, cost=cost, approval_id=approval_id)
        if record.evaluation.pending:
            record = await gov.pending_tool_call(ctx, call, record, position, cost=cost)
        if not record.allowed:
            if gov.on_deny == "raise":
                raise gov.denied(record)
            raise ToolFailed(denied_tool_message(record.evaluation))
        if cost is None:
            with receipt_scope(record.receipt_id):
                return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        with receipt_scope(record.receipt_id), _budget_hooks.reported_cost_scope() as report:
            result = await self.wrapped.call_tool(name, tool_args, ctx, tool)
        await _budget_hooks.settle_tool(gov, ctx, record, report.amount or cost)
        return result


@dataclass
class GovernedMCPToolset(GovernedToolset):
    """A :class:`GovernedToolset` around an MCP server: after a denied listing, the model is told why.

    A subclass (not a branch of ``GovernedToolset``) so that only MCP servers author instructions
    here: pydantic-ai treats a wrapper that overrides ``get_instructions`` as the author of its
    subtree's instructions, which function toolsets must not change.
    """

    async def get_instructions(self, ctx: RunContext[Any]) -> Any:
        # pydantic-ai lists tools (get_tools) before it gathers instructions for a model request:
        # after a denied listing of this MCP server, tell the model which grant is missing instead of
        # the server's own instructions (reading those is a listing-class call that was denied).
        denied = self._denied_listing(ctx)
        if denied is not None:
            return denied_listing_message(denied.evaluation)
        return await super().get_instructions(ctx)

    def _denied_listing(self, ctx: RunContext[Any]) -> GovernedRecord | None:
        position = f"list#{self.server_id}"
        records = [r for r in self.governance.receipts_of(ctx.run_id) if r.position == position] if ctx.run_id else []
        return records[-1] if records and not records[-1].allowed else None
