"""``ChioTemporalAgent``: a governed Pydantic AI agent on Temporal, in one line.

::

    agent = Agent(model, name="support", tools=[...], toolsets=[mcp])
    governed = ChioTemporalAgent(agent, capability_id="cap-support", chio_client=chio)

    @workflow.defn
    class SupportWorkflow:
        @workflow.run
        async def run(self, prompt: str) -> str:
            return (await governed.run(prompt)).output

    client = await Client.connect(..., plugins=[PydanticAIPlugin()])
    worker = Worker(client, task_queue="support", workflows=[SupportWorkflow], plugins=[governed.plugin])

How it holds the line (docs/temporal_agent.md has the details):

* The agent is made durable by pydantic-ai itself: a plain ``Agent`` gets pydantic-ai's
  ``TemporalDurability`` (options pass straight through), an agent that already carries one is used
  as it is, and an existing (deprecated) ``TemporalAgent`` is used as it is, with its activity names.
* Every model request, function-tool call, MCP tool call and MCP listing already runs in its own
  pydantic-ai activity. Evaluation happens on the **activity side**, inline, in
  :class:`ChioAgentActivityInterceptor` (a :class:`~chio_temporal.ChioActivityInterceptor` subclass):
  no workflow code calls the kernel and no activity is added to any history, so histories recorded
  before governance was added, and governed histories, replay with ``temporalio.worker.Replayer``.
* Calls map to ``(tool_server, tool_name, parameters)`` with the shared
  :class:`chio_durable.agent.CallMapper`; idempotency key = workflow id + run id + activity id +
  capability, so retry attempts of an activity reuse one receipt and replay never re-evaluates.
* A denied tool call is, by default, answered on the activity side with exactly what pydantic-ai's
  tool activity returns when a tool raises ``ToolFailed``: the model sees
  :func:`chio_durable.agent.denied_tool_message` and the run continues. ``on_deny="raise"`` (and any
  denied model request) fails the activity with the non-retryable
  ``ApplicationError(type="ChioCapabilityDenied")``, and so the workflow.
* Receipt ids ride the activity results that are already in the history: ``ModelResponse.metadata``
  and the tool return's ``metadata`` (neither is sent to the model); :meth:`ChioTemporalAgent.receipt_ids_of`
  reads them back from a run result, and the interceptor's ``chio-temporal/v1`` envelope lists every
  decision, denies included.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import temporalio.activity
import temporalio.workflow
from pydantic_ai.agent import Agent
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.agent.wrapper import WrapperAgent
from pydantic_ai.durable_exec.temporal import TemporalDurability, TemporalRunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, ModelRequest, RetryPromptPart, ToolReturn, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT
from pydantic import TypeAdapter
from temporalio.plugin import SimplePlugin
from temporalio.exceptions import ApplicationError
from temporalio.worker import ExecuteActivityInput
from temporalio.workflow import ActivityConfig

from chio_durable.agent import CallMapper, ChioGovernance, OnDeny, denied_tool_message, receipt_scope
from chio_durable.agent._denials import (
    denied_listing_message,
    listing_deny_is_a_missing_grant,
    receipt_id_in_denied_message,
)
from chio_durable._transport import ChioClientLike, is_client
from chio_durable._evaluation import Evaluation
from chio_temporal._agent_activities import (
    AgentActivity,
    classify_activity,
    governed_call,
    model_activity_actual,
    model_activity_cost,
)
from chio_durable._metering import ModelMetering, ModelPrices, ToolCost, as_metering
from chio_temporal._budgets import tool_call_cost, tool_costs_by_name, tool_costs_of
from chio_durable.agent._budget_hooks import can_declare_cost
from chio_sdk.models import MonetaryAmount
from chio_temporal._seams import agent_with_capability, registered_activity_name, replace_in_live_list
from chio_temporal.errors import CONFIG_ERROR_TYPE, ChioTemporalConfigError
from chio_temporal.grants import WorkflowGrant

log = logging.getLogger("chio_temporal.agent")
from chio_temporal.interceptor import (
    DEFAULT_MAX_PENDING_RECEIPTS,
    ActivityCall,
    ChioActivityInterceptor,
    ReceiptSink,
)

__all__ = [
    "RECEIPT_METADATA_KEY",
    "ChioAgentActivityInterceptor",
    "ChioTemporalAgent",
    "receipt_ids_in_messages",
]

RECEIPT_METADATA_KEY = "chio_receipt_id"
"""Key of the receipt id in ``ModelResponse.metadata`` and in a tool return's ``metadata``."""


def _deprecated_temporal_agent_type() -> type | None:
    # Imported lazily and only for isinstance checks: instantiating it is what warns, not naming it.
    try:
        from pydantic_ai.durable_exec.temporal import TemporalAgent
    except ImportError:  # a future pydantic-ai without the deprecated wrapper
        return None
    return TemporalAgent  # pyright: ignore[reportDeprecated]


_CALL_TOOL_RESULT: TypeAdapter[Any] | None = None


async def _tool_failed_result(message: str) -> Any:
    """What pydantic-ai's tool activity returns when the tool raises ``ToolFailed(message)``.

    Built from the public ``pydantic_ai.durable_exec.CallToolResult`` type (the recorded result of a
    tool-call activity) and the wire shape its docstring promises stays loadable for journaled runs:
    ``{"kind": "tool_failed", "message": ...}``. The workflow side unwraps it into ``ToolFailed`` and
    the model gets ``message`` as a failed tool result (tested against an in-process ``ToolFailed``).
    """
    global _CALL_TOOL_RESULT
    if _CALL_TOOL_RESULT is None:
        from pydantic_ai.durable_exec import CallToolResult

        _CALL_TOOL_RESULT = TypeAdapter(CallToolResult)
    return _CALL_TOOL_RESULT.validate_python({"kind": "tool_failed", "message": message})


def _stamp_model_response(response: ModelResponse, receipt_id: str) -> None:
    response.metadata = {**(response.metadata or {}), RECEIPT_METADATA_KEY: receipt_id}


def _stamp(result: Any, activity: AgentActivity, receipt_id: str) -> Any:
    """Put the receipt id into the activity result pydantic-ai records (metadata, never model input)."""
    if activity.kind == "model":
        if isinstance(result, ModelResponse):
            _stamp_model_response(result, receipt_id)
        elif isinstance(getattr(result, "response", None), ModelResponse):  # streamed activity result
            _stamp_model_response(result.response, receipt_id)
        return result
    if activity.kind in ("tool", "mcp") and getattr(result, "kind", None) == "tool_return":
        value = result.result
        if isinstance(value, ToolReturn):
            if value.metadata is None or isinstance(value.metadata, dict):
                value.metadata = {**(value.metadata or {}), RECEIPT_METADATA_KEY: receipt_id}
        else:
            result.result = ToolReturn(return_value=value, metadata={RECEIPT_METADATA_KEY: receipt_id})
    return result


def receipt_ids_in_messages(messages: Iterable[ModelMessage]) -> list[str]:
    """The receipt ids a governed run left in its messages, in call order, each once.

    Allowed calls: model responses carry theirs in ``ModelResponse.metadata``, tool results in the
    tool return part's ``metadata``. A denied tool call the model was told about (``on_deny="tell"``)
    carries it in the text it was told (:func:`~chio_durable.agent.denied_tool_message`; pydantic-ai's
    failed tool result has no metadata). Deterministic: safe in workflow code.
    """
    ids: dict[str, None] = {}
    for message in messages:
        if isinstance(message, ModelResponse):
            rid = (message.metadata or {}).get(RECEIPT_METADATA_KEY)
            if isinstance(rid, str):
                ids.setdefault(rid, None)
        elif isinstance(message, ModelRequest):
            for part in message.parts:
                rid = part.metadata.get(RECEIPT_METADATA_KEY) if isinstance(part, ToolReturnPart) and isinstance(
                    part.metadata, dict
                ) else None
                if not isinstance(rid, str) and isinstance(part, (ToolReturnPart, RetryPromptPart)):
                    # a failed tool result (ToolFailed: ToolReturnPart(outcome="failed")), or a retry prompt
                    rid = receipt_id_in_denied_message(part.content)
                if isinstance(rid, str):
                    ids.setdefault(rid, None)
    return list(ids)


_GOVERNED_BY: ContextVar[str | None] = ContextVar("chio_temporal_agent_governed_by", default=None)
"""Set by an agent's interceptor around each of that agent's activity executions it handles."""

_GUARD_ATTRIBUTE = "__chio_governed_agent__"


def guarded_agent_name(fn: Any) -> str | None:
    """The agent whose governed activity ``fn`` is (a :func:`guard_activity` wrapper), else ``None``."""
    return getattr(fn, _GUARD_ATTRIBUTE, None)


def guard_activity(fn: Callable[..., Any], agent_name: str) -> Callable[..., Any]:
    """``fn`` (a pydantic-ai activity of ``agent_name``) as an activity that refuses to run ungoverned.

    Same activity name, parameters and type hints (Temporal decodes the arguments from them). The
    body only runs when this agent's :class:`ChioAgentActivityInterceptor` handled the execution; on
    a worker without ``governed.plugin`` (e.g. the activities registered with a plain
    ``PydanticAIPlugin``/``AgentPlugin``) it fails with the non-retryable ``ChioTemporalConfigError``.
    Workflow code and histories are unchanged (the activity name is the same; replay never runs it).
    """
    if guarded_agent_name(fn) is not None:
        return fn
    activity_name = registered_activity_name(fn)
    if activity_name is None or not inspect.iscoroutinefunction(fn):
        raise ChioTemporalConfigError(f"cannot guard {fn!r}: not an async pydantic-ai activity with a name")

    async def governed_activity(*args: Any) -> Any:
        if _GOVERNED_BY.get() != agent_name:
            raise ApplicationError(
                f"activity {activity_name!r} of the Chio-governed agent {agent_name!r} ran on a worker without "
                "its governance: add the agent's plugin to the worker, "
                "Worker(client, ..., plugins=[governed.plugin]) (ChioTemporalAgent(...).plugin), instead of "
                "registering its activities with a plain PydanticAIPlugin/AgentPlugin or activities=[...]",
                type=CONFIG_ERROR_TYPE,
                non_retryable=True,
            )
        return await fn(*args)

    governed_activity.__name__ = getattr(fn, "__name__", "activity")
    governed_activity.__qualname__ = getattr(fn, "__qualname__", governed_activity.__name__)
    governed_activity.__doc__ = getattr(fn, "__doc__", None)
    governed_activity.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    governed_activity.__annotations__ = typing.get_type_hints(fn)
    setattr(governed_activity, _GUARD_ATTRIBUTE, agent_name)
    return temporalio.activity.defn(name=activity_name)(governed_activity)


def _plugin_activities(agent: AbstractAgent[Any, Any]) -> list[Callable[..., Any]]:
    """The activities pydantic-ai's ``AgentPlugin(agent)`` puts on a worker (read through its public
    ``configure_worker``)."""
    from pydantic_ai.durable_exec.temporal import AgentPlugin

    config = AgentPlugin(agent).configure_worker({"activities": [], "workflows": []})
    return list(config.get("activities") or [])


def guard_agent_activities(
    agent: AbstractAgent[Any, Any], durability: TemporalDurability[Any] | None, agent_name: str
) -> list[Callable[..., Any]]:
    """Guard ``agent``'s activities where pydantic-ai keeps them, then check every route hands them out.

    ``durability`` is the agent's bound ``TemporalDurability`` (``None`` for a ``TemporalAgent``). The
    activity entries of its backend's ``registrations()`` (child-workflow *types* are kept as they
    are) — or the ``TemporalAgent``'s ``temporal_activities`` — are replaced in place by guarded ones
    (:func:`guard_activity`), so every route that registers them gets the guarded functions:
    ``governed.plugin``, ``PydanticAIPlugin`` with ``__pydantic_ai_agents__``, ``AgentPlugin``,
    ``activities=durability.temporal_activities``. Then each public route is read back; if one still
    yields an unguarded activity (pydantic-ai changed where it keeps them), this raises
    :class:`ChioTemporalConfigError`: refuse to run rather than run ungoverned.
    """

    def guard(entry: Any) -> Any:
        return entry if isinstance(entry, type) else guard_activity(entry, agent_name)

    if durability is None:
        replace_in_live_list(agent.temporal_activities, guard)  # type: ignore[attr-defined]
        routes: dict[str, list[Callable[..., Any]]] = {
            "TemporalAgent.temporal_activities": list(agent.temporal_activities),  # type: ignore[attr-defined]
        }
    else:
        # public (tests/temporal/test_seams.py) but left out of the package's __all__
        from pydantic_ai.durable_exec.temporal import worker_registrations  # type: ignore[attr-defined]

        replace_in_live_list(durability.get_durable_operation_backend().registrations(), guard)
        activities, child_workflows = worker_registrations(durability)
        if child_workflows:
            raise ChioTemporalConfigError(
                f"agent {agent_name!r} runs tools as Temporal child workflows, which no activity interceptor "
                "sees: run its tools as activities (the default) to govern them"
            )
        routes = {"worker_registrations(durability)": activities}
    routes["AgentPlugin(agent)"] = _plugin_activities(agent)
    for route, fns in routes.items():
        unguarded = [fn for fn in fns if guarded_agent_name(fn) is None]
        if unguarded or not fns:
            raise ChioTemporalConfigError(
                f"cannot guard the activities of agent {agent_name!r}: {route} still hands out "
                f"{[registered_activity_name(fn) for fn in unguarded] or 'nothing'} "
                "(pydantic-ai changed where it keeps them; pin the tested pydantic-ai version)"
            )
    return routes["AgentPlugin(agent)"]


class _GovernedAgentPlugin(SimplePlugin):
    """``governed.plugin``: the agent's activities + its interceptor, linked to the other governed
    agents' interceptors on the same worker (per worker, not per process)."""

    def configure_worker(self, config: Any) -> Any:
        config = super().configure_worker(config)
        agents = [i for i in config.get("interceptors") or () if isinstance(i, ChioAgentActivityInterceptor)]
        for interceptor in agents:
            interceptor.peer_agent_names.update(
                other.agent_name for other in agents if other.agent_name != interceptor.agent_name
            )
        return config


class ChioAgentActivityInterceptor(ChioActivityInterceptor):
    """Governs the activities of one Pydantic AI agent with one capability, inline on the activity side.

    Recognises the agent's activities by their pydantic-ai names (``agent__<name>__...``), maps each to
    a :class:`~chio_durable.agent.GovernedCall` with the shared ``CallMapper`` and evaluates it with
    ``capability_id`` through :class:`~chio_temporal.ChioActivityInterceptor`'s enforcement path (same
    idempotency key, receipts, envelope, errors). Other activities on the worker pass through
    untouched, unless ``govern_other_activities=True``: then they are governed the seed-001 way, by
    the workflow grants registered on this interceptor (activities of other governed agents are
    always left to their own interceptor).

    Usually built by :class:`ChioTemporalAgent`; reachable as ``governed.interceptor``.
    """

    def __init__(
        self,
        chio_client: ChioClientLike,
        *,
        agent_name: str,
        capability_id: str,
        mapper: CallMapper | None = None,
        on_deny: OnDeny = "tell_model",
        default_model_name: str = "default",
        model_names: Mapping[str, str] | None = None,
        receipt_ids_in_results: bool = True,
        govern_other_activities: bool = False,
        sidecar_url: str | None = None,
        receipt_sink: ReceiptSink | None = None,
        default_tool_server: str | None = None,
        activity_tool_server_map: Mapping[str, str] | None = None,
        max_pending_receipts: int = DEFAULT_MAX_PENDING_RECEIPTS,
        model_prices: ModelMetering | ModelPrices | None = None,
        tool_costs: Mapping[str, ToolCost] | None = None,
    ) -> None:
        super().__init__(
            chio_client=chio_client,
            sidecar_url=sidecar_url,
            default_tool_server=default_tool_server,
            activity_tool_server_map=activity_tool_server_map,
            receipt_sink=receipt_sink,
            max_pending_receipts=max_pending_receipts,
        )
        if on_deny not in ("tell_model", "raise"):
            raise ChioTemporalConfigError(f"on_deny= must be 'tell_model' or 'raise', got {on_deny!r}")
        if not isinstance(capability_id, str) or not capability_id:
            raise ChioTemporalConfigError(
                f"capability_id= must be the id of a Chio capability token (str), got {capability_id!r}"
            )
        if mapper is not None and not isinstance(mapper, CallMapper):
            raise ChioTemporalConfigError(
                f"mapper= must be a chio_durable.agent.CallMapper (or subclass) instance, got {type(mapper).__name__}"
            )
        self.agent_name = agent_name
        self.capability_id = capability_id
        self.mapper = mapper or CallMapper()
        self.on_deny: OnDeny = on_deny
        self.default_model_name = default_model_name
        self.model_names = dict(model_names or {})
        self.receipt_ids_in_results = receipt_ids_in_results
        self.govern_other_activities = govern_other_activities
        # Agents governed by other interceptors on the same worker(s) (linked by their plugins):
        # their activities are left to them, even with govern_other_activities=True.
        self.peer_agent_names: set[str] = set()
        self._parsed_types: dict[str, AgentActivity | None] = {}
        self.metering: ModelMetering = as_metering(model_prices)
        self.tool_costs: dict[str, ToolCost] = dict(tool_costs or {})  # by tool name (chio_temporal._budgets)

    def agent_activity(self, info: temporalio.activity.Info) -> AgentActivity | None:
        """The governed agent operation this execution is, or ``None`` (another activity, or ungoverned).

        An activity type is parsed once (then remembered): every hook of one execution asks this.
        """
        try:
            return self._parsed_types[info.activity_type]
        except KeyError:
            parsed = self._parsed_types[info.activity_type] = classify_activity(info.activity_type, self.agent_name)
            return parsed

    def _is_agent_activity_type(self, activity_type: str) -> bool:
        return activity_type.startswith(f"agent__{self.agent_name}__")

    async def govern(self, input: ExecuteActivityInput, proceed: Callable[[], Any]) -> Any:
        # Mark this agent's executions as handled here: its guarded activities refuse to run otherwise.
        if not self._is_agent_activity_type(temporalio.activity.info().activity_type):
            return await super().govern(input, proceed)
        token = _GOVERNED_BY.set(self.agent_name)
        try:
            return await super().govern(input, proceed)
        finally:
            _GOVERNED_BY.reset(token)

    # --- ChioActivityInterceptor extension points -------------------------------------------

    def governs(self, info: temporalio.activity.Info, input: ExecuteActivityInput) -> bool:
        if self.agent_activity(info) is not None:
            return True
        if self._is_agent_activity_type(info.activity_type):
            return False  # the allow-list (_agent_activities): validation, local listings, events, cancel
        other = guarded_agent_name(input.fn)
        if other is not None and other != self.agent_name:
            return False  # another governed agent's activity: its own interceptor governs it (or it refuses)
        if any(info.activity_type.startswith(f"agent__{name}__") for name in self.peer_agent_names):
            return False  # an agent whose interceptor is on this worker too
        return self.govern_other_activities and super().governs(info, input)

    def resolve_grant(self, info: temporalio.activity.Info) -> WorkflowGrant | None:
        if self.agent_activity(info) is not None:
            return None  # the agent's capability, not a workflow grant (see resolve_capability_id)
        return super().resolve_grant(info)

    def resolve_capability_id(self, info: temporalio.activity.Info, grant: WorkflowGrant | None) -> str | None:
        if self.agent_activity(info) is not None:
            return self.capability_id
        return super().resolve_capability_id(info, grant)

    def map_activity(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, grant: WorkflowGrant | None
    ) -> ActivityCall:
        activity = self.agent_activity(info)
        if activity is None:
            return super().map_activity(info, input, grant)
        call = governed_call(
            activity,
            input.args,
            mapper=self.mapper,
            agent_name=self.agent_name,
            model_name_for=self._model_name,
        )
        return ActivityCall(call.tool_server, call.tool_name, call.parameters, kind=call.kind)

    def activity_cost(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, call: ActivityCall
    ) -> MonetaryAmount | None:
        activity = self.agent_activity(info)
        if activity is None:
            return super().activity_cost(info, input, call)
        if not can_declare_cost(self.transport):
            return None
        if activity.kind == "tool" and self.tool_costs:
            return tool_call_cost(self.tool_costs, input.args)
        if activity.kind != "model":
            return None
        return model_activity_cost(self.metering, input.args, self._model_name)

    def settled_cost(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        result: Any,
        declared: MonetaryAmount,
        reported: MonetaryAmount | None,
    ) -> MonetaryAmount:
        activity = self.agent_activity(info)
        if activity is not None and activity.kind == "model":
            return model_activity_actual(self.metering, input.args, self._model_name, result) or declared
        return super().settled_cost(info, input, call, result, declared, reported)

    def _model_name(self, model_id: str | None) -> str:
        if model_id is None:
            return self.default_model_name
        return self.model_names.get(model_id, model_id)

    async def on_allowed(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        evaluation: Evaluation,
        proceed: Callable[[], Any],
    ) -> Any:
        activity = self.agent_activity(info)
        # The engine-neutral current_receipt_id() works inside tool bodies too, as on Prefect.
        with receipt_scope(evaluation.receipt_id):
            result = await super().on_allowed(info, input, call, evaluation, proceed)
        if activity is not None and self.receipt_ids_in_results and evaluation.receipt_id:
            result = _stamp(result, activity, evaluation.receipt_id)
        return result

    async def on_denied(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        evaluation: Evaluation,
    ) -> Any:
        activity = self.agent_activity(info)
        if activity is None or activity.kind in ("model", "operation") or self.on_deny == "raise":
            return await super().on_denied(info, input, call, evaluation)
        if activity.kind == "mcp_list":
            # The server's tools are hidden from the model; its instructions become the deny naming
            # the missing grant (as ChioGovernance does off Temporal); the receipt is recorded.
            message = denied_listing_message(evaluation)
            if activity.operation == "get_tools":
                level = logging.WARNING if listing_deny_is_a_missing_grant(evaluation) else logging.INFO
                log.log(level, "chio: listing %s/%s denied (receipt %s): %s", call.tool_server, call.tool_name,
                        evaluation.receipt_id, message)
                return {}
            return message
        return await _tool_failed_result(denied_tool_message(evaluation))


_DURABILITY_OPTIONS = (
    "models",
    "event_stream_handler",
    "name",
    "activity_config",
    "model_activity_config",
    "event_stream_handler_activity_config",
    "toolset_activity_config",
    "run_context_type",
    "non_retryable_model_errors",
)


_NAME_NEEDED = (
    "the agent needs a unique name (it names its Temporal activities): Agent(..., name='support') "
    "or ChioTemporalAgent(..., name='support')"
)


def _model_name(model: Any) -> str:
    if isinstance(model, Model):
        return model.model_name
    name = getattr(model, "model_name", None)
    if isinstance(name, str):
        return name
    return str(model) if model is not None else "default"


class ChioTemporalAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """A Pydantic AI agent, durable on Temporal and governed by a Chio capability.

    Args:
        agent: a plain ``Agent`` (made durable here with pydantic-ai's ``TemporalDurability``), an
            ``Agent`` that already carries a ``TemporalDurability`` (used as it is), or an existing
            ``TemporalAgent`` (used as it is; no deprecated code path is entered by this class).
        capability_id: the capability every model request, tool call and MCP call is evaluated against.
        chio_client: ``chio_kernel.LocalChioClient``, ``chio_sdk.ChioClient`` (sidecar) or a
            ``chio_sdk.testing`` mock, or a zero-argument factory of one (``chio_client=LocalChioClient``),
            called on first use on the worker. Only the activity worker uses it: workflow code never
            talks to the kernel.
        mapper: how calls map to ``(tool_server, tool_name, parameters)``; default ``CallMapper()``.
        on_deny: ``"tell_model"`` (default): a denied tool call returns
            ``denied_tool_message(...)`` to the model as a failed tool result and the run continues; a
            denied MCP listing hides that server's tools. ``"raise"``: the activity (and so the
            workflow) fails with the non-retryable ``ApplicationError(type="ChioCapabilityDenied")``.
            A denied model request always fails that way.
        receipt_ids_in_results: write each allowed call's receipt id into the recorded result's
            ``metadata`` (never sent to the model); read back with :meth:`receipt_ids_of`.
        govern_other_activities: also govern the worker's other activities, the seed-001 way
            (workflow grants registered on :attr:`interceptor`).
        sidecar_url, receipt_sink: passed to the interceptor (``chio-temporal/v1`` envelopes).
        max_pending_receipts: the interceptor keeps at most this many runs' envelopes in worker memory
            until flushed (default 10 000; the oldest is dropped with a WARNING). The signed receipts
            are durable in the kernel's store either way.
        models, event_stream_handler, name, activity_config, model_activity_config,
        event_stream_handler_activity_config, toolset_activity_config, run_context_type,
        non_retryable_model_errors: pydantic-ai's ``TemporalDurability`` options, passed straight
            through when this class makes a plain ``Agent`` durable. (Per-tool activity config stays
            where pydantic-ai puts it: ``metadata={"temporal": ActivityConfig(...)}`` on the tool.)
        model_prices: how model requests are metered against money budgets: each model-request
            activity declares the model's price x its ``max_tokens`` (a hold) and settles at the
            response's usage. ``genai-prices`` prices known models; pass ``{model_name: TokenPrice}``,
            a callable or a ``ModelMetering`` for others (docs/budgets.md).
        tool_costs: declared costs of the agent's function tools by tool name: a ``MonetaryAmount``
            or a callable of the tool's arguments. Tool metadata ``{"chio_cost": MonetaryAmount(...)}``
            is read too; a *callable* cannot ride Temporal's serialized tool metadata, so it goes here.
        search_attributes: upsert ``ChioCapabilityId`` / ``ChioDenyCount`` on the workflows of a
            worker built with :attr:`plugin` (opt-in: register them on the namespace first and check
            with ``await chio_temporal.require_search_attributes(client)``; ``docs/temporal.md``).
    """

    def __init__(
        self,
        agent: AbstractAgent[AgentDepsT, OutputDataT],
        *,
        capability_id: str,
        chio_client: ChioClientLike | Callable[[], ChioClientLike],
        mapper: CallMapper | None = None,
        on_deny: OnDeny = "tell_model",
        receipt_ids_in_results: bool = True,
        govern_other_activities: bool = False,
        sidecar_url: str | None = None,
        receipt_sink: ReceiptSink | None = None,
        max_pending_receipts: int = DEFAULT_MAX_PENDING_RECEIPTS,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: Any = None,
        name: str | None = None,
        activity_config: ActivityConfig | None = None,
        model_activity_config: ActivityConfig | None = None,
        event_stream_handler_activity_config: ActivityConfig | None = None,
        toolset_activity_config: dict[str, ActivityConfig] | None = None,
        run_context_type: type[TemporalRunContext[AgentDepsT]] | None = None,
        non_retryable_model_errors: Sequence[type[Exception]] = (),
        model_prices: ModelMetering | ModelPrices | None = None,
        tool_costs: Mapping[str, ToolCost] | None = None,
        search_attributes: bool = False,
    ) -> None:
        if on_deny not in ("tell_model", "raise"):
            raise ChioTemporalConfigError(f"on_deny= must be 'tell_model' or 'raise', got {on_deny!r}")
        if not isinstance(capability_id, str) or not capability_id:
            raise ChioTemporalConfigError(
                f"capability_id= must be the id of a Chio capability token (str), got {capability_id!r}"
            )
        if chio_client is None:
            raise ChioTemporalConfigError(
                "ChioTemporalAgent needs chio_client= a ChioClient('http://127.0.0.1:9090'), a LocalChioClient(...), "
                "a chio_sdk.testing mock, or a zero-argument factory of one (e.g. chio_client=LocalChioClient)"
            )
        if mapper is not None and not isinstance(mapper, CallMapper):
            raise ChioTemporalConfigError(
                f"mapper= must be a chio_durable.agent.CallMapper (or subclass) instance, got {type(mapper).__name__}"
            )
        if isinstance(agent, ChioTemporalAgent):
            raise ChioTemporalConfigError(
                "this agent is already a ChioTemporalAgent (its calls would be evaluated twice); wrap the plain Agent"
            )
        if not isinstance(agent, AbstractAgent):
            raise ChioTemporalConfigError(
                f"ChioTemporalAgent wraps a pydantic-ai Agent (or TemporalAgent); got {type(agent).__name__}"
            )
        options: dict[str, Any] = {
            "models": models,
            "event_stream_handler": event_stream_handler,
            "name": name,
            "activity_config": activity_config,
            "model_activity_config": model_activity_config,
            "event_stream_handler_activity_config": event_stream_handler_activity_config,
            "toolset_activity_config": toolset_activity_config,
            "run_context_type": run_context_type,
            "non_retryable_model_errors": tuple(non_retryable_model_errors) or None,
        }
        given = {key: value for key, value in options.items() if value is not None}

        temporal_agent_type = _deprecated_temporal_agent_type()
        durability: TemporalDurability[Any] | None = None
        if temporal_agent_type is not None and isinstance(agent, temporal_agent_type):
            self._reject_options(given, "the TemporalAgent you built")
            durable: AbstractAgent[AgentDepsT, OutputDataT] = agent
            agent_name = agent.name
            model_names: dict[str, str] = {}
        else:
            durability = TemporalDurability.from_agent(agent)
            if durability is not None:
                self._reject_options(given, "the TemporalDurability already on this agent")
                durable = agent
            elif isinstance(agent, Agent):
                if not (name or agent.name):
                    raise ChioTemporalConfigError(_NAME_NEEDED)
                durable = agent_with_capability(agent, TemporalDurability(**given))
                durability = TemporalDurability.from_agent(durable)
                if durability is None:  # the seam's own check should have caught this
                    raise ChioTemporalConfigError("could not make the agent durable (no bound TemporalDurability)")
            else:
                raise ChioTemporalConfigError(
                    f"{type(agent).__name__} is neither an Agent nor a TemporalAgent and carries no "
                    "TemporalDurability: build it as Agent(..., capabilities=[TemporalDurability(...)])"
                )
            agent_name = durability.name
            # run(model="<key>") names a model registered with TemporalDurability(models=...)
            model_names = {key: _model_name(model) for key, model in (models or {}).items()}
        if not agent_name:
            raise ChioTemporalConfigError(_NAME_NEEDED)
        # Guard the durable agent's activities wherever pydantic-ai keeps them (also an agent the user
        # made durable: once wrapped, its activities refuse to run on a worker without governed.plugin).
        activities = guard_agent_activities(durable, durability, agent_name)
        super().__init__(durable)
        self.durability = durability
        self.capability_id = capability_id
        self.temporal_activities: list[Callable[..., Any]] = activities
        self._chio_client_or_factory = chio_client
        self._chio: ChioClientLike | None = None
        self._interceptor: ChioAgentActivityInterceptor | None = None
        self._plugin: SimplePlugin | None = None
        self._local_governance: ChioGovernance | None = None
        self._interceptor_options: dict[str, Any] = {
            "agent_name": agent_name,
            "capability_id": capability_id,
            "mapper": mapper,
            "on_deny": on_deny,
            "default_model_name": _model_name(agent.model),
            "model_names": model_names,
            "receipt_ids_in_results": receipt_ids_in_results,
            "govern_other_activities": govern_other_activities,
            "sidecar_url": sidecar_url,
            "receipt_sink": receipt_sink,
            "max_pending_receipts": max_pending_receipts,
            "model_prices": model_prices,
            "tool_costs": {**tool_costs_of(agent), **tool_costs_by_name(tool_costs)},
        }
        self._on_deny: OnDeny = on_deny
        self.agent_name: str = agent_name
        # Opt-in Chio search attributes (chio_temporal._search_attributes); they must be registered
        # on the namespace: `await require_search_attributes(client)` where the worker is built.
        self.search_attributes = bool(search_attributes)

    # --- the worker side, built on first use ----------------------------------------------------
    # Workflow modules are re-executed by Temporal's sandbox for every run, so building this object
    # must stay free of I/O: the kernel client (when given as a factory), the interceptor and the
    # plugin are only made when a worker (or the caller) asks for them, on the host.

    @property
    def chio(self) -> ChioClientLike:
        """The kernel client the activity worker evaluates with (a factory is called once, here)."""
        if self._chio is None:
            candidate = self._chio_client_or_factory
            is_factory = isinstance(candidate, type) or (callable(candidate) and not is_client(candidate))
            if is_factory:
                self._chio = typing.cast("Callable[[], ChioClientLike]", candidate)()
            else:
                self._chio = typing.cast("ChioClientLike", candidate)
        return self._chio

    @property
    def interceptor(self) -> ChioAgentActivityInterceptor:
        """The activity interceptor that governs this agent's activities (a ``ChioActivityInterceptor``)."""
        if self._interceptor is None:
            self._interceptor = ChioAgentActivityInterceptor(self.chio, **self._interceptor_options)
        return self._interceptor

    @property
    def plugin(self) -> SimplePlugin:
        """Temporal worker plugin: registers the agent's activities and :attr:`interceptor`.

        ``Worker(client, task_queue=..., workflows=[...], plugins=[governed.plugin])``, with the
        client connected with ``plugins=[PydanticAIPlugin()]`` (pydantic-ai's data converter and
        sandbox settings). Also valid for ``temporalio.worker.Replayer(..., plugins=[...])``.
        """
        if self._plugin is None:
            self._plugin = _GovernedAgentPlugin(
                f"ChioTemporalAgent:{self.agent_name}",
                activities=self._add_activities,
                interceptors=[*self._search_attribute_interceptors(), self.interceptor],
            )
        return self._plugin

    def _search_attribute_interceptors(self) -> list[Any]:
        if not self.search_attributes:
            return []
        from chio_temporal._search_attributes import ChioSearchAttributes

        return [ChioSearchAttributes(self.interceptor)]

    @staticmethod
    def _reject_options(given: Mapping[str, Any], owner: str) -> None:
        if given:
            raise ChioTemporalConfigError(
                f"{sorted(given)} configure pydantic-ai's Temporal durability, which {owner} already "
                "has: set them there, or pass a plain Agent so ChioTemporalAgent adds TemporalDurability"
            )

    def _add_activities(self, existing: Sequence[Callable[..., Any]] | None) -> list[Callable[..., Any]]:
        # Skip activities already on the worker (e.g. via PydanticAIPlugin's __pydantic_ai_agents__).
        current = list(existing or [])
        return current + [fn for fn in self.temporal_activities if fn not in current]

    async def _governed_run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the agent, governed. Same arguments as ``Agent.run``.

        Inside a workflow every model request, tool call and MCP call is an activity, evaluated by
        :attr:`interceptor` on the worker. Outside a workflow pydantic-ai's Temporal durability is
        transparent (no activities, nothing for an interceptor to see), so the run gets the
        engine-neutral :class:`chio_durable.agent.ChioGovernance` capability instead: same mapping,
        same deny semantics, evaluated in-process. Never ungoverned.

        Delegates to the wrapped agent's own ``run``: a ``TemporalAgent`` implements ``run`` itself
        and refuses ``iter()`` inside workflows, which ``WrapperAgent.run`` would go through.
        """
        return await self.wrapped.run(*args, **self._outside_workflow(kwargs))

    if not TYPE_CHECKING:
        # Type checkers see the inherited, fully typed ``AbstractAgent.run`` overloads
        # (``AgentRunResult[OutputDataT]``, or the run's ``output_type=``); this is the body.
        run = _governed_run

    @asynccontextmanager
    async def iter(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """``Agent.iter``, governed like :meth:`run` (``run_stream`` & co. go through here)."""
        async with self.wrapped.iter(*args, **self._outside_workflow(kwargs)) as agent_run:
            yield agent_run

    def _outside_workflow(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if temporalio.workflow.in_workflow():
            return kwargs
        return {**kwargs, "capabilities": [*(kwargs.get("capabilities") or ()), self.local_governance]}

    @property
    def local_governance(self) -> ChioGovernance:
        """The in-process governance used for runs outside a Temporal workflow."""
        if self._local_governance is None:
            options = self._interceptor_options
            self._local_governance = ChioGovernance(
                capability_id=options["capability_id"],
                chio_client=self.chio,
                mapper=options["mapper"],
                on_deny=options["on_deny"],
                model_prices=options["model_prices"],
            )
        return self._local_governance

    @property
    def on_deny(self) -> OnDeny:
        return self._on_deny

    def receipt_ids_of(self, result: Any) -> list[str]:
        """The receipt ids of every decision on a call of the run, allow and deny, in call order, each once.

        The same meaning as ``ChioPrefectAgent.receipt_ids_of``: model requests, tool and MCP tool
        calls (a retried activity gets its receipt back and is listed once). Read from the result's
        messages, so safe in workflow code: allowed calls from the recorded results' metadata, a
        denied tool call the model was told about from the message it was told. MCP listings (not
        calls in the messages) are in the interceptor's envelope
        (``governed.interceptor.get_workflow_receipt(workflow_id, run_id)``). A run outside a
        workflow: the same list, from :attr:`local_governance`.
        """
        run_id = getattr(result, "run_id", None)
        if self._local_governance is not None and run_id and self._local_governance.receipts_of(run_id):
            return self._local_governance.receipt_ids_of(result)  # a run outside a workflow
        messages = result.all_messages() if hasattr(result, "all_messages") else result
        return receipt_ids_in_messages(messages)
