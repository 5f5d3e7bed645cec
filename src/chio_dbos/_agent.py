"""``ChioDBOSAgent``: a governed, durable Pydantic AI agent on DBOS, in one line.

::

    agent = Agent(model, name="researcher", tools=[search], toolsets=[mcp_server])
    governed = ChioDBOSAgent(agent, capability_id="cap-researcher", chio_client=chio,
                             system_database_url="sqlite:///dbos.sqlite")
    DBOS(config={"name": "researcher", "system_database_url": "sqlite:///dbos.sqlite"}); DBOS.launch()
    result = await governed.run("...")          # its own DBOS workflow, or inside yours
    governed.receipt_ids_of(result)             # the run's receipt ids, in order

Built on pydantic-ai's public DBOS seam: the agent gets :class:`chio_durable.agent.ChioGovernance`
and pydantic-ai's ``DBOSDurability`` at construction, so the kernel checks of every call
(``evaluate``, ``settle``) run as DBOS steps of the capability
(``<agent name>__capability__chio.evaluate`` / ``.settle``), recorded in the workflow's history
next to the model and MCP steps they govern. A recovered workflow gets the recorded decisions back
and never asks the kernel again for a call already decided; a call whose evaluate step never
recorded is evaluated again under the same idempotency key (DBOS workflow id + the call's place in
the run), so the kernel answers with the same receipt and charges no budget twice.

Fail closed: when the kernel cannot be reached the evaluate step fails (DBOS records the error) and
the governed call does not run; the workflow fails.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dbos import DBOS
from pydantic_ai import Agent
from pydantic_ai.agent import AbstractAgent, AgentRunResult, EventStreamHandler, WrapperAgent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.durable_exec.dbos import DBOSDurability, StepConfig
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.output import OutputDataT
from pydantic_ai.tools import AgentDepsT, RunContext

from chio_durable import ChioClientLike, Evaluation, GovernedCall
from chio_durable._engine import (
    REALTIME_REFUSED,
    GovernedAgentFace,
    check_realtime_hooks,
    refuse_realtime,
    run_metadata,
)
from chio_durable.agent import (
    CallMapper,
    ChioGovernance,
    ModelMetering,
    ModelPrices,
    OnDeny,
    current_receipt_id,
)
from chio_dbos._approvals import dbos_approval_waiter
from chio_dbos._seams import agent_with_capabilities, agent_without, dbos_agent_options
from chio_dbos.errors import ChioDBOSError, ChioDBOSPermissionError

if TYPE_CHECKING:
    from pydantic_ai.capabilities.abstract import WrapModelRequestHandler
    from pydantic_ai.models import ModelRequestContext

__all__ = ["RECEIPT_METADATA_KEY", "ChioDBOSAgent", "dbos_run_identity", "dbos_run_metadata", "receipt_ids_in_messages"]

RECEIPT_METADATA_KEY = "chio_receipt_id"
"""Key of the receipt id in ``ModelResponse.metadata`` (never sent to the model)."""

SYSTEM_DATABASE_ENV = "DBOS_SYSTEM_DATABASE_URL"


def dbos_run_identity(ctx: RunContext[Any]) -> str | None:
    """Name the run part of idempotency keys inside a DBOS workflow: the workflow id + the agent run id.

    Both are the same on every execution of the workflow (pydantic-ai's DBOS durability derives the
    agent run id from the workflow id and its step position), so a recovered or re-run workflow
    re-evaluates to the same receipts, while two workflows never share one.

    Args:
        ctx: the agent run's context.

    Returns:
        ``"dbos-workflow:<workflow id>:<run id>"``, or None outside a workflow.
    """
    workflow_id = DBOS.workflow_id
    return None if workflow_id is None else f"dbos-workflow:{workflow_id}:{ctx.run_id}"


def dbos_run_metadata(ctx: RunContext[Any]) -> dict[str, str] | None:
    """Give the run context signed into each receipt.

    Args:
        ctx: the agent run's context (the workflow id is read from ``DBOS``).

    Returns:
        ``{"dbos_workflow_id": ...}``, or None outside a workflow.
    """
    return run_metadata(dbos_workflow_id=DBOS.workflow_id)


def receipt_ids_in_messages(messages: list[ModelMessage]) -> list[str]:
    """Collect the receipt ids the model responses of a governed run carry (``metadata["chio_receipt_id"]``).

    Args:
        messages: the run's messages (e.g. ``result.all_messages()``).

    Returns:
        The receipt ids in order, each once.
    """
    ids: list[str] = []
    for message in messages:
        if isinstance(message, ModelResponse):
            rid = (message.metadata or {}).get(RECEIPT_METADATA_KEY)
            if isinstance(rid, str) and rid not in ids:
                ids.append(rid)
    return ids


class ReceiptStamp(AbstractCapability[Any]):
    """Writes the receipt id of each model request into its ``ModelResponse.metadata`` (inside governance)."""

    def __init__(self) -> None:
        self.id = "chio-receipt-stamp"

    async def wrap_model_request(
        self, ctx: RunContext[Any], *, request_context: ModelRequestContext, handler: WrapModelRequestHandler
    ) -> ModelResponse:
        response = await handler(request_context)
        receipt_id = current_receipt_id()
        if receipt_id is not None:
            response.metadata = {**(response.metadata or {}), RECEIPT_METADATA_KEY: receipt_id}
        return response


def _deny_error(evaluation: Evaluation, call: GovernedCall) -> BaseException:
    return ChioDBOSError(evaluation.receipt_id, evaluation.guard, evaluation.reason, evaluation.decision)


def _dbos_agent_type() -> type | None:
    # Imported only for an isinstance check: building a DBOSAgent is what warns, not naming it.
    try:
        from pydantic_ai.durable_exec.dbos import DBOSAgent
    except ImportError:  # pragma: no cover - a pydantic-ai without the deprecated wrapper
        return None
    return DBOSAgent  # pyright: ignore[reportDeprecated]


def _plain_agent(wrapped: Any, options: dict[str, Any]) -> Agent[Any, Any]:
    """The plain ``Agent`` to govern; a ``DBOSAgent``'s agent and options are taken over into ``options``."""
    dbos_agent_type = _dbos_agent_type()
    if dbos_agent_type is not None and isinstance(wrapped, dbos_agent_type):
        dbos_agent: Any = wrapped
        inherited = {
            "name": dbos_agent.name, "event_stream_handler": dbos_agent.event_stream_handler,
            **dbos_agent_options(dbos_agent),
        }
        for key, value in inherited.items():
            if options.get(key) is None:
                options[key] = value
        wrapped = dbos_agent.wrapped
    if not isinstance(wrapped, Agent):
        raise TypeError(f"ChioDBOSAgent wraps a pydantic_ai Agent (or DBOSAgent), got {type(wrapped).__name__}")
    return wrapped


def _without_durability(agent: Agent[Any, Any]) -> tuple[Agent[Any, Any], AbstractCapability[Any] | None]:
    """``agent`` without its bound ``DBOSDurability`` (returned too, to be bound again after governance)."""
    durability = DBOSDurability.from_agent(agent)
    if durability is None:
        return agent, None
    if any(isinstance(c, ChioGovernance) for c in agent.root_capability.capabilities):
        raise UserError("this agent already carries ChioGovernance; wrap the plain Agent instead")
    if durability not in agent.root_capability.capabilities:
        raise UserError(
            "this agent's DBOSDurability is nested in another capability; build the Agent without it and pass "
            "its options (model_step_config=..., mcp_step_config=...) to ChioDBOSAgent"
        )
    return agent_without(agent, durability), durability


@refuse_realtime(REALTIME_REFUSED)
class ChioDBOSAgent(GovernedAgentFace, WrapperAgent[AgentDepsT, OutputDataT]):
    """A Pydantic AI agent made durable on DBOS and governed by Chio.

    Args:
        wrapped: A plain ``Agent``; an ``Agent`` that already carries a ``DBOSDurability`` (bound
            again after governance, with its own options); or a deprecated ``DBOSAgent`` (its agent
            and DBOS options are taken over).
        capability_id: The Chio capability every call of every run is evaluated against.
        chio_client: ``LocalChioClient``, ``chio_sdk.ChioClient`` (sidecar) or a ``chio_sdk.testing`` mock.
        mapper: Call mapping (see :class:`chio_durable.agent.CallMapper`).
        on_deny: ``"tell_model"`` (default) or ``"raise"`` for denied tool calls; a denied model
            request always fails the run with :class:`~chio_dbos.ChioDBOSPermissionError`.
        name: Unique agent name for the DBOS step and workflow names (default: the agent's name).
        models, event_stream_handler, model_step_config, mcp_step_config,
        event_stream_handler_step_config, parallel_execution_mode: passed to pydantic-ai's
            ``DBOSDurability`` unchanged. ``mcp_step_config`` also configures the kernel-check steps
            (pydantic-ai gives capability operations the toolset step config).
        model_prices: how model requests are metered against money budgets (docs/budgets.md).
        system_database_url: the DBOS system database (as in ``DBOS(config=...)``, default
            ``$DBOS_SYSTEM_DATABASE_URL``): where the kernel's waker sends the answer to an
            approval a workflow waits on. Without it a waiting workflow re-asks the kernel every
            ``$CHIO_APPROVAL_POLL_SECONDS`` (300 s).

    Raises:
        UserError: The agent has no name, is already governed, or pydantic-ai moved a seam.
        TypeError: ``wrapped`` is not an ``Agent`` / ``DBOSAgent``.
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
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
        model_step_config: StepConfig | None = None,
        mcp_step_config: StepConfig | None = None,
        event_stream_handler_step_config: StepConfig | None = None,
        parallel_execution_mode: Any = None,
        model_prices: ModelMetering | ModelPrices | None = None,
        system_database_url: str | None = None,
    ) -> None:
        if isinstance(wrapped, ChioDBOSAgent):
            raise UserError("this agent is already a ChioDBOSAgent; wrap the plain Agent instead")
        check_realtime_hooks()
        options: dict[str, Any] = {
            "name": name, "event_stream_handler": event_stream_handler, "model_step_config": model_step_config,
            "mcp_step_config": mcp_step_config, "parallel_execution_mode": parallel_execution_mode,
        }
        plain, durability = _without_durability(_plain_agent(wrapped, options))
        self._agent_name: str | None = options["name"] or (getattr(durability, "name", None)) or plain.name
        if not self._agent_name:
            raise UserError(
                "ChioDBOSAgent needs a unique agent name for its DBOS steps: "
                "Agent(..., name='researcher') or ChioDBOSAgent(agent, name='researcher', ...)"
            )
        self.system_database_url = system_database_url or os.environ.get(SYSTEM_DATABASE_ENV) or None
        self.governance = self._make_governance(capability_id, chio_client, mapper, on_deny, model_prices)
        if durability is None:
            durability = DBOSDurability(
                models=models, event_stream_handler=options["event_stream_handler"], name=self._agent_name,
                model_step_config=options["model_step_config"], mcp_step_config=options["mcp_step_config"],
                event_stream_handler_step_config=event_stream_handler_step_config,
                parallel_execution_mode=options["parallel_execution_mode"] or "parallel_ordered_events",
            )
        durable = agent_with_capabilities(plain, [self.governance, ReceiptStamp()], durability)
        super().__init__(durable)
        self.durability: DBOSDurability[Any] | None = DBOSDurability.from_agent(durable)
        if self.durability is None:  # pragma: no cover - the seam's own checks should have caught this
            raise UserError("chio: could not make the agent durable (no bound DBOSDurability)")
        self._run_workflow = self._register_run_workflow()

    def _make_governance(
        self, capability_id: str, chio_client: ChioClientLike, mapper: CallMapper | None, on_deny: OnDeny,
        model_prices: ModelMetering | ModelPrices | None,
    ) -> ChioGovernance:
        governance = ChioGovernance(
            capability_id=capability_id, chio_client=chio_client, mapper=mapper, on_deny=on_deny,
            run_identity=dbos_run_identity, run_metadata=dbos_run_metadata, deny_error=_deny_error,
            permission_error_class=ChioDBOSPermissionError, model_prices=model_prices,
        )
        governance.approval_waiter = dbos_approval_waiter(
            lambda: governance.transport, lambda: self.system_database_url, lambda: governance.approval_poll_seconds
        )
        return governance

    def _register_run_workflow(self) -> Any:
        """The DBOS workflow ``<name>.chio_run`` that :meth:`run` starts when called outside a workflow.

        Registered at construction (so before ``DBOS.launch()`` when the agent is built at import
        time, as DBOS recovery needs).
        """
        agent = self.wrapped

        @DBOS.workflow(name=f"{self._agent_name}.chio_run")
        async def chio_run(user_prompt: Any, kwargs: dict[str, Any]) -> AgentRunResult[Any]:
            result: AgentRunResult[Any] = await agent.run(user_prompt, **kwargs)
            return result

        return chio_run



    async def _governed_run(self, user_prompt: Any = None, **kwargs: Any) -> AgentRunResult[Any]:
        """Run the governed agent: inside the caller's DBOS workflow, else as its own ``<name>.chio_run``.

        Args:
            user_prompt: the user's prompt.
            **kwargs: every keyword argument ``Agent.run`` takes (inputs of a workflow must pickle).

        Returns:
            The run result (``.output``; its receipts via ``receipts_of``).

        Raises:
            PermissionError: a denied model request, or a denied tool call with ``on_deny="raise"``.
        """
        if DBOS.workflow_id is not None:
            joined: AgentRunResult[Any] = await self.wrapped.run(user_prompt, **kwargs)
            return joined
        result: AgentRunResult[Any] = await self._run_workflow(user_prompt, kwargs)
        return result

    def _governed_run_sync(self, user_prompt: Any = None, **kwargs: Any) -> AgentRunResult[Any]:
        """Run the governed agent synchronously; see :meth:`run`.

        Args:
            user_prompt: the user's prompt.
            **kwargs: every keyword argument ``Agent.run_sync`` takes.

        Returns:
            The run result, as :meth:`run`.
        """
        result: AgentRunResult[Any] = super().run_sync(user_prompt, **kwargs)
        return result

    if not TYPE_CHECKING:
        run = _governed_run
        run_sync = _governed_run_sync

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
