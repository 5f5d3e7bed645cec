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

* The agent carries :class:`~chio_temporal._governance.TemporalGovernance` (a
  :class:`chio_durable.agent.ChioGovernance`) and pydantic-ai's ``TemporalDurability``. A plain
  ``Agent`` is copied with both; an agent that already carries a ``TemporalDurability`` gets the
  governance in place (its durability is bound again); an existing (deprecated) ``TemporalAgent`` is
  rebuilt from its wrapped agent, and its own activities refuse to run from then on.
* The governance's hooks run in workflow code; each kernel check is one of its durable operations,
  which pydantic-ai runs as an activity of the agent (``agent__<name>__capability__chio__evaluate``,
  ``__settle``, ``__approval_wake``) on the worker's copy of the agent, with the ``chio_client``
  given. The activity's result is in the history: a retry of the run, a replay and a restarted
  worker get the recorded decision back; the governed call runs only after an allow.
* Every route that registers the agent's activities (``governed.plugin``, pydantic-ai's
  ``AgentPlugin``, ``PydanticAIPlugin`` with ``__pydantic_ai_agents__``, ``worker_registrations``)
  hands out the governance's activities with the others; a worker without them cannot run the
  workflow (the evaluate activity is not registered), so nothing runs ungoverned.
"""

from __future__ import annotations

import inspect
import typing
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import temporalio.activity
import temporalio.workflow
from pydantic_ai.agent import Agent
from pydantic_ai.agent.abstract import AbstractAgent
from pydantic_ai.agent.wrapper import WrapperAgent
from pydantic_ai.durable_exec.temporal import TemporalDurability, TemporalRunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, RetryPromptPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT
from temporalio.exceptions import ApplicationError
from temporalio.plugin import SimplePlugin
from temporalio.workflow import ActivityConfig

from chio_durable import ChioClientLike, ToolCost
from chio_durable._engine import receipt_id_in_denied_message
from chio_durable.agent import CallMapper, ChioGovernance, ModelMetering, ModelPrices, OnDeny
from chio_temporal._budgets import tool_costs_by_name, tool_costs_of
from chio_temporal._governance import (
    RECEIPT_METADATA_KEY,
    ChioTemporalDenied,
    TemporalGovernance,
    TemporalTransport,
    temporal_run_identity,
    temporal_run_metadata,
)
from chio_temporal._sandbox import with_chio_passed_through
from chio_temporal._seams import (
    agent_with_capability,
    govern_durable_agent,
    registered_activity_name,
    replace_in_live_list,
)
from chio_temporal.errors import CONFIG_ERROR_TYPE, ChioTemporalConfigError
from chio_temporal.interceptor import DEFAULT_MAX_PENDING_RECEIPTS, ChioActivityInterceptor, ReceiptSink

__all__ = [
    "RECEIPT_METADATA_KEY",
    "ChioTemporalAgent",
    "ChioTemporalDenied",
    "receipt_ids_in_messages",
]


def __getattr__(name: str) -> Any:
    # Removed with the activity-side evaluation: kept importable, deprecated.
    if name == "ChioAgentActivityInterceptor":
        warnings.warn(
            "ChioAgentActivityInterceptor is deprecated: ChioTemporalAgent evaluates through ChioGovernance's "
            "durable operations now; governed.interceptor is a plain ChioActivityInterceptor (workflow grants)",
            DeprecationWarning,
            stacklevel=2,
        )
        return ChioActivityInterceptor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _deprecated_temporal_agent_type() -> type | None:
    # Imported lazily and only for isinstance checks: instantiating it is what warns, not naming it.
    try:
        from pydantic_ai.durable_exec.temporal import TemporalAgent
    except ImportError:  # a future pydantic-ai without the deprecated wrapper
        return None
    return TemporalAgent  # pyright: ignore[reportDeprecated]


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


_RETIRED_ATTRIBUTE = "__chio_retired_for__"


def retire_activity(fn: Callable[..., Any], agent_name: str) -> Callable[..., Any]:
    """``fn`` (an activity of a deprecated ``TemporalAgent`` that ``ChioTemporalAgent`` rebuilt) as an
    activity that refuses to run: the governed copy runs the agent now, with the same names.

    Args:
        fn: The ``TemporalAgent``'s activity.
        agent_name: The agent's name.

    Returns:
        An activity of the same name and signature that fails with the non-retryable
        ``ChioTemporalConfigError``.

    Raises:
        ChioTemporalConfigError: ``fn`` is no async, named activity.
    """
    if getattr(fn, _RETIRED_ATTRIBUTE, None) is not None:
        return fn
    activity_name = registered_activity_name(fn)
    if activity_name is None or not inspect.iscoroutinefunction(fn):
        raise ChioTemporalConfigError(f"cannot retire {fn!r}: not an async pydantic-ai activity with a name")

    async def retired_activity(*args: Any) -> Any:
        raise ApplicationError(
            f"activity {activity_name!r} belongs to the TemporalAgent {agent_name!r}, which a ChioTemporalAgent "
            "governs: run the agent as governed.run(...) in the workflow and put governed.plugin on the worker",
            type=CONFIG_ERROR_TYPE,
            non_retryable=True,
        )

    retired_activity.__name__ = getattr(fn, "__name__", "activity")
    retired_activity.__qualname__ = getattr(fn, "__qualname__", retired_activity.__name__)
    retired_activity.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    retired_activity.__annotations__ = typing.get_type_hints(fn)
    setattr(retired_activity, _RETIRED_ATTRIBUTE, agent_name)
    return temporalio.activity.defn(name=activity_name)(retired_activity)


def _model_name(model: Any) -> str:
    if isinstance(model, Model):
        return model.model_name
    name = getattr(model, "model_name", None)
    if isinstance(name, str):
        return name
    return str(model) if model is not None else "default"


_NAME_NEEDED = (
    "the agent needs a unique name (it names its Temporal activities): Agent(..., name='support') "
    "or ChioTemporalAgent(..., name='support')"
)


def _worker_activities(durability: TemporalDurability[Any], agent_name: str) -> list[Callable[..., Any]]:
    """The agent's activities through pydantic-ai's public ``worker_registrations``, checked to hold the
    governance's evaluate activity (else refuse: the agent would not be governed on a worker)."""
    from pydantic_ai.durable_exec.temporal import worker_registrations  # type: ignore[attr-defined]

    activities, child_workflows = worker_registrations(durability, include_workflows=False)
    names = {registered_activity_name(fn) for fn in activities}
    evaluate = f"agent__{agent_name}__capability__chio__evaluate"
    if evaluate not in names:
        raise ChioTemporalConfigError(
            f"pydantic-ai did not register the governance activity {evaluate!r} for agent {agent_name!r} "
            "(pin the tested pydantic-ai version)"
        )
    return list(activities)


class _OtherActivitiesInterceptor(ChioActivityInterceptor):
    """``governed.interceptor``: governs the worker's activities that are no pydantic-ai agent's
    (``agent__...``) by workflow grants; the agents' own are governed by their ``ChioGovernance``."""

    def __init__(self, chio_client: Any, *, capability_id: str, **options: Any) -> None:
        super().__init__(chio_client, **options)
        self.capability_id = capability_id
        """The agent's capability (what ``ChioCapabilityId`` is set to by the search attributes)."""

    def governs(self, info: temporalio.activity.Info, input: Any) -> bool:
        """Whether this execution is governed here: not an agent's activity, and the base says so."""
        if info.activity_type.startswith("agent__"):
            return False
        return super().governs(info, input)


class _GovernedAgentPlugin(SimplePlugin):
    """``governed.plugin``: the agent's activities (the governance's among them) and child workflows,
    plus the interceptors the options ask for."""

    pass


class ChioTemporalAgent(WrapperAgent[AgentDepsT, OutputDataT]):
    """A Pydantic AI agent, durable on Temporal and governed by a Chio capability.

    Args:
        agent: a plain ``Agent`` (made durable here with pydantic-ai's ``TemporalDurability``), an
            ``Agent`` that already carries a ``TemporalDurability`` (used as it is), or an existing
            ``TemporalAgent`` (used as it is; no deprecated code path is entered by this class).
        capability_id: the capability every model request, tool call and MCP call is evaluated against.
        chio_client: ``chio_kernel.LocalChioClient``, ``chio_sdk.ChioClient`` (sidecar) or a
            ``chio_sdk.testing`` mock, or a zero-argument factory of one (``chio_client=LocalChioClient``),
            called on first use on the worker. Only the activities of the governance's durable
            operations use it, on the worker: workflow code never talks to the kernel.
        mapper: how calls map to ``(tool_server, tool_name, parameters)``; default ``CallMapper()``.
        on_deny: ``"tell_model"`` (default): a denied tool call returns
            ``denied_tool_message(...)`` to the model as a failed tool result and the run continues; a
            denied MCP listing hides that server's tools. ``"raise"``: the workflow fails with the
            non-retryable :class:`ChioTemporalDenied` (``ApplicationError(type="ChioCapabilityDenied")``).
            A denied model request always fails that way.
        receipt_ids_in_results: write each allowed call's receipt id into the recorded result's
            ``metadata`` (never sent to the model); read back with :meth:`receipt_ids_of`.
        govern_other_activities: also govern the worker's other activities, the seed-001 way
            (workflow grants registered on :attr:`interceptor`).
        sidecar_url, receipt_sink: passed to :attr:`interceptor` (``chio-temporal/v1`` envelopes of the
            worker's other activities, with ``govern_other_activities=True``).
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
        _check_arguments(agent, capability_id, chio_client, mapper, on_deny)
        given = {
            key: value
            for key, value in {
                "models": models,
                "event_stream_handler": event_stream_handler,
                "name": name,
                "activity_config": activity_config,
                "model_activity_config": model_activity_config,
                "event_stream_handler_activity_config": event_stream_handler_activity_config,
                "toolset_activity_config": toolset_activity_config,
                "run_context_type": run_context_type,
                "non_retryable_model_errors": tuple(non_retryable_model_errors) or None,
            }.items()
            if value is not None
        }
        self.transport = TemporalTransport(chio_client)
        self.governance = TemporalGovernance(
            capability_id=capability_id,
            chio_client=typing.cast(Any, self.transport),
            mapper=mapper,
            on_deny=on_deny,
            run_identity=temporal_run_identity,
            run_metadata=temporal_run_metadata,
            permission_error_class=ChioTemporalDenied,
            model_prices=model_prices,
            tool_costs={**tool_costs_of(agent), **tool_costs_by_name(tool_costs)},
            receipt_ids_in_results=receipt_ids_in_results,
        )
        durable, durability = self._governed_durable_agent(agent, given)
        agent_name = durability.name
        super().__init__(durable)
        self.durability = durability
        self.capability_id = capability_id
        self.agent_name: str = agent_name
        self.temporal_activities: list[Callable[..., Any]] = _worker_activities(durability, agent_name)
        self._on_deny: OnDeny = on_deny
        self._interceptor: ChioActivityInterceptor | None = None
        self._plugin: SimplePlugin | None = None
        self._interceptor_options: dict[str, Any] = {
            "sidecar_url": sidecar_url,
            "receipt_sink": receipt_sink,
            "max_pending_receipts": max_pending_receipts,
        }
        self.govern_other_activities = govern_other_activities
        # Opt-in Chio search attributes (chio_temporal._search_attributes); they must be registered
        # on the namespace: `await require_search_attributes(client)` where the worker is built.
        self.search_attributes = bool(search_attributes)

    def _governed_durable_agent(
        self, agent: AbstractAgent[Any, Any], given: Mapping[str, Any]
    ) -> tuple[AbstractAgent[AgentDepsT, OutputDataT], TemporalDurability[Any]]:
        """The durable agent carrying :attr:`governance`, and its bound ``TemporalDurability``."""
        temporal_agent_type = _deprecated_temporal_agent_type()
        if temporal_agent_type is not None and isinstance(agent, temporal_agent_type):
            self._reject_options(given, "the TemporalAgent you built")
            legacy_agent: Any = agent
            inner = legacy_agent.wrapped
            if not isinstance(inner, Agent):
                raise ChioTemporalConfigError("the TemporalAgent must wrap a pydantic-ai Agent to be governed")
            legacy: dict[str, Any] = {"name": agent.name, "activity_config": legacy_agent.activity_config}
            if getattr(agent, "event_stream_handler", None) is not None:
                legacy["event_stream_handler"] = agent.event_stream_handler
            # The deprecated wrapper's own activities refuse to run from now on (same names as ours).
            replace_in_live_list(legacy_agent.temporal_activities, lambda fn: fn if isinstance(fn, type) else retire_activity(fn, agent.name or ""))
            return self._governed_durable_agent(inner, legacy)
        durability = TemporalDurability.from_agent(agent)
        if durability is not None:
            self._reject_options(given, "the TemporalDurability already on this agent")
            if not isinstance(agent, Agent):
                raise ChioTemporalConfigError(f"cannot govern a {type(agent).__name__}: wrap the Agent it is built on")
            if any(isinstance(c, ChioGovernance) for c in agent.root_capability.capabilities):
                raise ChioTemporalConfigError(
                    "this agent already carries ChioGovernance (a ChioTemporalAgent was built on it): wrap it once"
                )
            govern_durable_agent(agent, self.governance, durability)
            durable: AbstractAgent[Any, Any] = agent
        elif isinstance(agent, Agent):
            if not (given.get("name") or agent.name):
                raise ChioTemporalConfigError(_NAME_NEEDED)
            governed = agent_with_capability(agent, self.governance)
            durable = agent_with_capability(governed, TemporalDurability(**given))
        else:
            raise ChioTemporalConfigError(
                f"{type(agent).__name__} is neither an Agent nor a TemporalAgent and carries no "
                "TemporalDurability: build it as Agent(..., capabilities=[TemporalDurability(...)])"
            )
        bound = TemporalDurability.from_agent(durable)
        if bound is None or not bound.name:
            raise ChioTemporalConfigError("could not make the agent durable (no bound, named TemporalDurability)")
        return durable, bound

    # --- the worker side, built on first use ----------------------------------------------------
    # Workflow modules are re-executed by Temporal's sandbox for every run, so building this object
    # must stay free of I/O: a kernel client given as a factory is only called on first use (in an
    # activity, on the worker).

    @property
    def chio(self) -> ChioClientLike:
        """The kernel client the governance activities evaluate with (a factory is called once, here)."""
        return typing.cast("ChioClientLike", self.transport.inner.client)

    @property
    def local_governance(self) -> ChioGovernance:
        """The governance on the agent (also what governs a run outside a workflow, inline)."""
        return self.governance

    @property
    def interceptor(self) -> ChioActivityInterceptor:
        """A :class:`~chio_temporal.ChioActivityInterceptor` for the worker's OTHER activities
        (``govern_other_activities=True``: governed by workflow grants registered on it)."""
        if self._interceptor is None:
            interceptor = _OtherActivitiesInterceptor(
                self.chio, capability_id=self.capability_id, **self._interceptor_options
            )
            self.transport.observers.append(interceptor.write_envelope_step)
            self._interceptor = interceptor
        return self._interceptor

    @property
    def plugin(self) -> SimplePlugin:
        """Temporal worker plugin: the agent's activities, the governance's evaluate/settle/approval_wake among them.

        ``Worker(client, task_queue=..., workflows=[...], plugins=[governed.plugin])``, with the
        client connected with ``plugins=[PydanticAIPlugin()]`` (pydantic-ai's data converter and
        sandbox settings). Also valid for ``temporalio.worker.Replayer(..., plugins=[...])``.
        """
        if self._plugin is None:
            from pydantic_ai.durable_exec.temporal import AgentPlugin

            from chio_temporal._tool_costs import ToolCallContext

            interceptors: list[Any] = [ToolCallContext(self.agent_name, self.transport)]
            interceptor = self.interceptor  # also the envelope writer of the agent's decisions
            if self.govern_other_activities:
                interceptors.append(interceptor)
            if self.search_attributes:
                from chio_temporal._search_attributes import ChioSearchAttributes

                interceptors.insert(0, ChioSearchAttributes(self.interceptor))
            agent_plugin = AgentPlugin(self.wrapped)
            self._plugin = _GovernedAgentPlugin(
                f"ChioTemporalAgent:{self.agent_name}",
                activities=lambda existing: _merge(existing, agent_plugin),
                workflows=lambda existing: _merge_workflows(existing, agent_plugin),
                interceptors=interceptors,
                workflow_runner=with_chio_passed_through,
            )
        return self._plugin

    @staticmethod
    def _reject_options(given: Mapping[str, Any], owner: str) -> None:
        if given:
            raise ChioTemporalConfigError(
                f"{sorted(given)} configure pydantic-ai's Temporal durability, which {owner} already "
                "has: set them there, or pass a plain Agent so ChioTemporalAgent adds TemporalDurability"
            )

    async def _governed_run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the agent, governed (the governance is on the agent).

        Args:
            *args: as ``Agent.run`` takes them.
            **kwargs: as ``Agent.run`` takes them.

        Returns:
            The run result.
        """
        return await self.wrapped.run(*args, **kwargs)

    if not TYPE_CHECKING:
        # Type checkers see the inherited, fully typed ``AbstractAgent.run`` overloads; this is the body.
        run = _governed_run

    @property
    def on_deny(self) -> OnDeny:
        """What a denied tool call does: ``"tell_model"`` or ``"raise"``."""
        return self._on_deny

    def receipt_ids_of(self, result: Any) -> list[str]:
        """The receipt ids of every decision on a call of the run, allow and deny, in call order, each once.

        Read from the result's messages (deterministic: safe in workflow code): allowed calls from
        the stamped ``metadata``, a denied tool call the model was told about from the message it
        was told. MCP listings are not calls in the messages: ``chio-durable receipts list
        --workflow-id`` lists them with the rest.

        Args:
            result: An agent run result (or its messages).

        Returns:
            The receipt ids.
        """
        messages = result.all_messages() if hasattr(result, "all_messages") else result
        return receipt_ids_in_messages(messages)


def _merge(existing: Sequence[Any] | None, plugin: SimplePlugin) -> list[Any]:
    config = plugin.configure_worker(typing.cast(Any, {"activities": [], "workflows": []}))
    current = list(existing or [])
    return current + [fn for fn in config.get("activities") or [] if fn not in current]


def _merge_workflows(existing: Sequence[type] | None, plugin: SimplePlugin) -> list[type]:
    config = plugin.configure_worker(typing.cast(Any, {"activities": [], "workflows": []}))
    current = list(existing or [])
    return current + [wf for wf in config.get("workflows") or [] if wf not in current]


def _check_arguments(agent: Any, capability_id: Any, chio_client: Any, mapper: Any, on_deny: Any) -> None:
    """Raise ``ChioTemporalConfigError`` saying what to pass, for each argument that cannot work."""
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
