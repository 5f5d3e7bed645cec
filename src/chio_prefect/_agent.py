"""``ChioPrefectAgent``: a governed, durable Pydantic AI agent on Prefect, in one line.

::

    agent = Agent(model, name="researcher", tools=[search, fetch], toolsets=[mcp_server])
    governed = ChioPrefectAgent(agent, capability_id="cap-researcher", chio_client=chio)
    result = governed.run_sync("...")          # or: await governed.run("...")
    governed.receipt_ids_of(result)            # the run's receipt ids, in order

Built on public seams only: each run gets pydantic-ai's non-deprecated ``PrefectDurability``
capability (model requests, tool calls and MCP calls become Prefect tasks; an agent built with its
own ``PrefectDurability`` keeps it) plus :class:`chio_prefect._governance.PrefectGovernance`, the
engine-neutral ``ChioGovernance`` whose kernel evaluation is a cached Prefect task of the flow run.
Durability capabilities are ordered innermost, so every call is evaluated *before* its durable
dispatch; a retried attempt of the flow run gets its recorded decisions back without asking the
kernel again, a new flow run asks afresh (docs/prefect_agent.md).

**Cache keys carry the receipt id.** Every guarded task (model request, function-tool call, MCP
call, MCP tool listing) gets the receipt id of its evaluation into its Prefect cache key (a
:class:`ReceiptIdCachePolicy` added to the task's cache policy reads it from
:func:`chio_durable.agent.current_receipt_id`). So: a flow retry gets the same receipts back and
hits the cache (no repeated model call, no second budget charge); two runs with equal inputs get
different receipts and never share a cache entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from prefect import flow
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy, CachePolicy
from prefect.context import FlowRunContext
from pydantic_ai.agent import AbstractAgent, AgentRun, AgentRunResult, EventStreamHandler, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability, SetToolMetadata
from pydantic_ai.durable_exec.prefect import (
    DEFAULT_PYDANTIC_AI_CACHE_POLICY,
    PrefectAgent,
    PrefectDurability,
    PrefectModel,
    TaskConfig,
)
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_ai.toolsets import WrapperToolset

from chio_durable import ChioClientLike, Decision, Evaluation, GovernedCall, KernelRejected
from chio_durable._engine import (
    REALTIME_REFUSED,
    GovernedAgentFace,
    check_realtime_hooks,
    is_mcp_toolset,
    prefect_agent_hidden_options,
    refuse_realtime,
    run_metadata,
)
from chio_durable.agent import (
    CallMapper,
    ChioGovernance,
    GovernedRecord,
    ModelMetering,
    ModelPrices,
    OnDeny,
    current_receipt_id,
)
from chio_prefect import decorators as _decorators
from chio_prefect._artifact import collect_decision, flow_run_receipts_async
from chio_prefect._approvals import waking_approval_waiter
from chio_prefect._governance import PrefectGovernance
from chio_prefect.errors import ChioPermissionError, ChioPrefectError, ChioRequestRejected
from chio_prefect._task_link import emit_or_hold, held_receipt_events
from chio_prefect._budgets import release_flow_run_holds, with_release_hooks

__all__ = [
    "ChioPrefectAgent",
    "ReceiptIdCachePolicy",
    "prefect_run_identity",
    "with_receipt_cache_key",
]


ReceiptIdCachePolicy: type[CachePolicy] = _decorators.ChioReceiptCachePolicy
"""The one receipt-id cache policy (``chio_prefect.decorators.ChioReceiptCachePolicy``), under its agent-layer name.

Alone (no ``inner``) it adds the receipt id of the governed call being run to a task's cache key:
it reads :func:`chio_durable.agent.current_receipt_id` (set by ``ChioGovernance`` around the
governed call, in the same context the task engine computes the key in). Outside a governed call it
contributes nothing, so the rest of the policy decides alone.
"""

RECEIPT_ID = ReceiptIdCachePolicy()


def _no_cache(policy: Any) -> bool:
    """``None``, ``NO_CACHE`` or ``NONE``: Prefect's "no cache" policies are equal to one another."""
    return policy is None or policy == NO_CACHE


def with_receipt_cache_key(config: Mapping[str, Any] | None) -> TaskConfig:
    """``config`` with :data:`RECEIPT_ID` added to its cache policy (pydantic-ai's default if unset).

    A config that turned caching off (``cache_policy=NO_CACHE``) stays uncached; a ``cache_key_fn``
    becomes a ``CacheKeyFnPolicy`` composed with the receipt id.
    """
    merged = dict(config or {})
    if "cache_key_fn" in merged and merged["cache_key_fn"] is not None:
        policy: Any = CacheKeyFnPolicy(cache_key_fn=merged.pop("cache_key_fn"))
    else:
        policy = merged.get("cache_policy", DEFAULT_PYDANTIC_AI_CACHE_POLICY)
    if not _no_cache(policy):
        merged["cache_policy"] = policy + RECEIPT_ID
    return cast(TaskConfig, merged)


def prefect_run_identity(ctx: RunContext[Any]) -> str | None:
    """Flow run id + agent run id: the run part of idempotency keys inside a Prefect flow.

    The flow run id is the same on every retry of that flow run and differs between flow runs, so
    a retry re-evaluates to the same receipts while two runs never share one.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return f"prefect-flow-run:{context.flow_run.id}:{ctx.run_id}"


def prefect_run_metadata(ctx: RunContext[Any]) -> dict[str, str] | None:
    """The run context signed into each receipt of the agent's calls: ``flow_run_id`` (and the
    flow's name), so ``chio-durable receipts list --flow-run ID`` finds them (docs/prefect.md)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    flow = getattr(context, "flow", None)
    return run_metadata(flow_run_id=context.flow_run.id, flow_name=getattr(flow, "name", None))


_TASK_NAMES = {
    "model": "Model Request",
    "tool": "Call Tool",
    "mcp": "Call MCP Tool",
    "mcp_list": "Get MCP Tools",
    "output": "Output Function",  # runs inline in the flow (no Prefect task of its own)
}


def _task_name(call: GovernedCall) -> str:
    """The name of the Prefect task the governed call runs as (pydantic-ai's task names)."""
    if call.kind == "model":
        return f"Model Request: {call.tool_name}"
    if call.kind == "mcp_list":
        return f"Get MCP Tools: {call.tool_server}"
    return f"{_TASK_NAMES.get(call.kind, call.kind)}: {call.tool_name}"


def emit_agent_receipt(record: GovernedRecord, ctx: RunContext[Any] | None = None) -> None:
    """Mirror one agent evaluation as ``chio.receipt.allow`` / ``chio.receipt.deny`` on the flow run.

    The same Prefect event writer as ``@chio_task``'s, given the decision with its flow run. Inside a
    governed run, an allowed call that runs as a Prefect task is emitted once its task run exists,
    linked to that task run too (:mod:`chio_prefect._task_link`).
    """
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    where = {
        "task_name": _task_name(record.call),
        "flow_run_id": str(flow_run.id) if flow_run is not None else None,
        "flow_run_name": flow_run.name if flow_run is not None else None,
    }
    decision = Decision(record.call, record.evaluation, record.idempotency_key,
                        capability_id=record.evaluation.capability_id, where=where)
    emit_or_hold(decision)  # an allowed task call's event waits for its task run (chio_prefect._task_link)
    collect_decision(decision)  # the flow run's receipt table (chio_prefect._artifact)


def _prefect_deny_error(evaluation: Evaluation, call: GovernedCall) -> BaseException:
    return ChioPrefectError(evaluation.receipt_id, evaluation.guard, evaluation.reason, evaluation.decision)


def _prefect_rejected_error(err: KernelRejected, call: GovernedCall) -> BaseException:
    return ChioRequestRejected(err.url, err.detail, call.tool_server, call.tool_name)


def _unwrap_prefect_agent(
    agent: PrefectAgent[Any, Any], given: dict[str, Any]
) -> tuple[AbstractAgent[Any, Any], dict[str, Any]]:
    """The plain agent inside a (deprecated) ``PrefectAgent`` and the Prefect options it was given.

    Public reads: ``.wrapped``, ``.name``, ``.model.task_config`` (its ``PrefectModel``),
    ``.event_stream_handler`` and the ``durable_config`` of its durable toolsets (``.toolsets``).
    The two options with no public read path come from :mod:`chio_durable.agent._seams`. Reads
    attributes only: no deprecated pydantic-ai code path runs, so no warning is raised.
    """
    if FlowRunContext.get() is not None:
        # Inside a flow, PrefectAgent.event_stream_handler is its per-event task dispatcher, not the handler.
        raise UserError(
            "wrap an existing PrefectAgent outside a Prefect flow (e.g. at module level, where agents are "
            "defined): inside a flow its event_stream_handler cannot be read"
        )
    model = agent.model
    if not isinstance(model, PrefectModel):
        raise UserError(
            f"this PrefectAgent's model is a {type(model).__name__}, not a PrefectModel: its model task "
            "config cannot be read. Wrap the plain Agent (prefect_agent.wrapped) with model_task_config=..."
        )
    options: dict[str, Any] = {
        "name": agent.name,
        "event_stream_handler": agent.event_stream_handler,
        "model_task_config": model.task_config,
        "mcp_task_config": None,
        "tool_task_config": None,
    }
    for toolset in agent.toolsets:
        if not isinstance(toolset, WrapperToolset):
            continue
        config = getattr(toolset, "durable_config", None)  # public attribute of pydantic-ai's durable toolsets
        if not isinstance(config, Mapping):
            continue
        key = "mcp_task_config" if is_mcp_toolset(toolset.wrapped) else "tool_task_config"
        options[key] = options[key] or dict(config)
    options.update(prefect_agent_hidden_options(agent, given))
    options["tool_task_config_by_name"] = options.get("tool_task_config_by_name") or None
    return agent.wrapped, options


def _prefect_governance(agent_name: str, **options: Any) -> PrefectGovernance:
    """The agent's governance: Prefect run identity, metadata, events, errors and approval waits.

    A tool call waiting for a person pauses the flow run and registers a wake with the kernel, so
    the person's answer there resumes it (``chio_prefect._approvals``, ``chio_prefect._wake``).
    """
    governance = PrefectGovernance(
        agent_name=agent_name,
        run_identity=prefect_run_identity,
        run_metadata=prefect_run_metadata,
        on_evaluation=emit_agent_receipt,
        deny_error=_prefect_deny_error,
        permission_error_class=ChioPermissionError,
        rejected_error=_prefect_rejected_error,
        **options,
    )
    governance.approval_waiter = waking_approval_waiter(governance)
    return governance


def _check_no_prefect_options(**options: Any) -> None:
    """Refuse Prefect options for an agent that carries its own ``PrefectDurability`` (they would be ignored)."""
    given = sorted(name for name, value in options.items() if value is not None)
    if given:
        raise UserError(
            f"this agent already has a PrefectDurability capability, which holds its Prefect options; "
            f"{', '.join(given)} would be ignored. Pass them to PrefectDurability(...) when building the Agent, "
            "or build the Agent without it and pass them to ChioPrefectAgent."
        )


@refuse_realtime(REALTIME_REFUSED)
class ChioPrefectAgent(GovernedAgentFace, WrapperAgent[AgentDepsT, OutputDataT]):
    """A Pydantic AI agent made durable on Prefect and governed by Chio.

    Generic in the wrapped agent's deps and output types, like pydantic-ai's
    ``PrefectAgent[AgentDepsT, OutputDataT]``: ``ChioPrefectAgent(Agent(..., output_type=Order))``
    is a ``ChioPrefectAgent[None, Order]`` and ``(await governed.run(...)).output`` is an ``Order``.

    Args:
        wrapped: A plain ``Agent`` (``PrefectDurability`` is added, its task cache keys carrying the
            receipt id), an ``Agent`` built with ``PrefectDurability`` (kept as built: its task configs
            are its own, so the Prefect options below must not be given), or an existing
            ``PrefectAgent`` (its agent and Prefect options are reused).
        capability_id: The Chio capability every call of every run is evaluated against.
        chio_client: ``LocalChioClient``, ``chio_sdk.ChioClient`` (sidecar) or a ``chio_sdk.testing`` mock.
        mapper: Call mapping (see :class:`chio_durable.agent.CallMapper`).
        on_deny: ``"tell_model"`` (default) or ``"raise"`` for denied tool calls; a denied model
            request always fails the run with ``PermissionError`` (cause: ``ChioPrefectError``).
        name: Unique agent name for Prefect flow/task names (default: the agent's name).
        event_stream_handler, models, model_task_config, mcp_task_config, tool_task_config,
        event_stream_handler_task_config: passed to ``PrefectDurability`` unchanged, except that
            each task config's cache policy gains the receipt id.
        tool_task_config_by_name: per-tool task configs (``None`` = not a task), applied as
            ``metadata={'prefect': ...}`` on those tools, the non-deprecated route.
        flow_options: ``prefect.flow(...)`` options (``retries``, ``retry_delay_seconds``, ...) for
            the flow :meth:`run` starts when it is not already inside one.
        model_prices: how model requests are metered against money budgets (see
            :class:`chio_durable.agent.ChioGovernance`, docs/budgets.md).
    """

    def __init__(
        self,
        wrapped: AbstractAgent[AgentDepsT, OutputDataT],
        *,
        capability_id: str,
        chio_client: ChioClientLike,
        mapper: CallMapper | None = None,
        on_deny: OnDeny = "tell_model",
        name: str | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
        models: Mapping[str, Model] | None = None,
        model_task_config: TaskConfig | None = None,
        mcp_task_config: TaskConfig | None = None,
        tool_task_config: TaskConfig | None = None,
        tool_task_config_by_name: Mapping[str, TaskConfig | None] | None = None,
        event_stream_handler_task_config: TaskConfig | None = None,
        flow_options: Mapping[str, Any] | None = None,
        model_prices: ModelMetering | ModelPrices | None = None,
    ) -> None:
        if isinstance(wrapped, ChioPrefectAgent):
            raise UserError("this agent is already a ChioPrefectAgent; wrap the plain Agent instead")
        check_realtime_hooks()
        if isinstance(wrapped, PrefectAgent):
            wrapped, inherited = _unwrap_prefect_agent(
                wrapped,
                {
                    "tool_task_config_by_name": tool_task_config_by_name,
                    "event_stream_handler_task_config": event_stream_handler_task_config,
                },
            )
            name = name or inherited["name"]
            event_stream_handler = event_stream_handler or inherited["event_stream_handler"]
            model_task_config = model_task_config or inherited["model_task_config"]
            mcp_task_config = mcp_task_config or inherited["mcp_task_config"]
            tool_task_config = tool_task_config or inherited["tool_task_config"]
            if tool_task_config_by_name is None:
                tool_task_config_by_name = inherited.get("tool_task_config_by_name")
            if event_stream_handler_task_config is None:
                event_stream_handler_task_config = inherited.get("event_stream_handler_task_config")
        if not isinstance(wrapped, AbstractAgent):
            raise TypeError(
                f"ChioPrefectAgent wraps a pydantic_ai Agent (or PrefectAgent), got {type(wrapped).__name__}"
            )
        own_durability = PrefectDurability.from_agent(wrapped)
        if own_durability is not None:
            _check_no_prefect_options(
                models=models, event_stream_handler=event_stream_handler, model_task_config=model_task_config,
                mcp_task_config=mcp_task_config, tool_task_config=tool_task_config,
                event_stream_handler_task_config=event_stream_handler_task_config,
            )
        super().__init__(wrapped)
        self._agent_name = name or wrapped.name
        if not self._agent_name:
            raise UserError(
                "ChioPrefectAgent needs a unique agent name for its Prefect flows and tasks: "
                "Agent(..., name='researcher') or ChioPrefectAgent(agent, name='researcher', ...)"
            )
        self.governance = _prefect_governance(
            self._agent_name, capability_id=capability_id, chio_client=chio_client, mapper=mapper,
            on_deny=on_deny, model_prices=model_prices,
        )
        # An agent built with PrefectDurability keeps it (its task configs, as built); else we add ours,
        # each task config's cache policy carrying the receipt id.
        self.durability: PrefectDurability[Any] | None = None if own_durability is not None else PrefectDurability(
            models=models,
            event_stream_handler=event_stream_handler,
            name=self._agent_name,
            model_task_config=with_receipt_cache_key(model_task_config),
            mcp_task_config=with_receipt_cache_key(mcp_task_config),
            tool_task_config=with_receipt_cache_key(tool_task_config),
            event_stream_handler_task_config=event_stream_handler_task_config,
        )
        self._tool_metadata: list[AbstractCapability[Any]] = [
            SetToolMetadata(tools=[tool_name], prefect=with_receipt_cache_key(config) if config is not None else False)
            for tool_name, config in (tool_task_config_by_name or {}).items()
        ]
        self._flow_options = dict(flow_options or {})


    # --- receipts ------------------------------------------------------------------------------


    # --- runs ----------------------------------------------------------------------------------

    def _run_capabilities(self) -> list[AbstractCapability[Any]]:
        durability = [self.durability] if self.durability is not None else []
        return [*self._tool_metadata, self.governance, *durability]

    @asynccontextmanager
    async def iter(
        self,
        user_prompt: Any = None,
        *,
        capabilities: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AgentRun[Any, Any]]:
        """Iterate a run: ``Agent.iter`` with governance and Prefect durability added for this run.

        Args:
            user_prompt: the user's prompt, as ``Agent.iter`` takes it.
            capabilities: run capabilities added after the governance ones.
            **kwargs: every other keyword argument ``Agent.iter`` takes.

        Yields:
            The ``AgentRun`` to step through.
        """
        async with self.wrapped.iter(
            user_prompt, capabilities=[*(capabilities or ()), *self._run_capabilities()], **kwargs
        ) as run:
            yield run

    async def _governed_run(self, user_prompt: Any = None, **kwargs: Any) -> AgentRunResult[Any]:
        """Run the governed agent; as a Prefect flow (``"<name> Run"``) unless already inside one.

        Inside a flow the run joins it, so that flow's retries replay the run's cached tasks. A run
        that ends Failed or Crashed releases its open budget holds.

        Args:
            user_prompt: the user's prompt.
            **kwargs: every keyword argument ``Agent.run`` takes.

        Returns:
            The run result (``.output``; its receipts via ``receipts_of``).

        Raises:
            PermissionError: a denied model request, or a denied tool call with ``on_deny="raise"``.
        """
        if FlowRunContext.get() is not None:
            async with held_receipt_events():
                joined: AgentRunResult[Any] = await super().run(user_prompt, **kwargs)
            return joined

        parent_run = super().run

        # A run that ends Failed/Crashed releases its open budget holds (chio_prefect._budgets).
        @flow(name=f"{self._agent_name} Run", **with_release_hooks(self._flow_options, release_flow_run_holds))
        async def chio_agent_run() -> AgentRunResult[Any]:
            async with flow_run_receipts_async(), held_receipt_events():  # table and events, also on failure
                result: AgentRunResult[Any] = await parent_run(user_prompt, **kwargs)
            return result

        return await chio_agent_run()

    def _governed_run_sync(self, user_prompt: Any = None, **kwargs: Any) -> AgentRunResult[Any]:
        """Run the governed agent synchronously (an async Prefect flow driven to completion on this thread).

        Args:
            user_prompt: the user's prompt.
            **kwargs: every keyword argument ``Agent.run_sync`` takes.

        Returns:
            The run result, as :meth:`run`.
        """
        return super().run_sync(user_prompt, **kwargs)

    if not TYPE_CHECKING:
        # Type checkers see the inherited, fully typed ``AbstractAgent.run`` / ``run_sync`` overloads
        # (``AgentRunResult[OutputDataT]``, or the ``output_type=`` of the run); these are the bodies.
        run = _governed_run
        run_sync = _governed_run_sync

    # --- realtime: refused (its model traffic runs no model-request hooks, so it is not governed) ---
    # The delegation hooks another wrapper reaches us through are refused by
    # chio_durable.agent._seams.refuse_realtime (the class decorator above).

    def realtime(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse a realtime session: its model traffic cannot be evaluated (see ``docs/agents.md``).

        Args:
            *args: ignored.
            **kwargs: ignored.

        Returns:
            Never returns.

        Raises:
            UserError: always.
        """
        raise UserError(REALTIME_REFUSED)
