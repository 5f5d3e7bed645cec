"""What a pydantic-ai Temporal activity is, seen from the activity worker.

``TemporalDurability`` (and the deprecated ``TemporalAgent``) register one activity per durable
operation of an agent, named ``agent__<agent name>__<operation>`` — names that pydantic-ai pins as
persisted compatibility data (``TemporalOperationNamer``). The governing interceptor reads the
activity type of each execution, recognises the agent's operations, and maps the activity's own,
already decoded arguments to a :class:`chio_durable.agent.GovernedCall` with the shared
:class:`~chio_durable.agent.CallMapper`. Nothing here runs in workflow code.

**Everything of the agent is governed except an explicit allow-list** (fail closed: an operation
this module does not know — a capability operation such as ``capability__workspace__call``, or
anything a future pydantic-ai adds — is governed generically, never let through). By the part of the
activity name after ``agent__<name>__``:

* ``model_request``, ``model_request_stream``, ``model_compact_messages`` -> a model call
  (reads ``params.messages``, ``params.model_settings``, ``params.model_id``);
* ``toolset__<id>__call_tool``, ``dynamic_toolset__<id>__call_tool`` -> a function-tool call
  (reads ``params.name``, ``params.tool_args``);
* ``mcp_server__<id>__call_tool`` -> an MCP tool call (same);
* ``mcp_server__<id>__get_tools``, ``mcp_server__<id>__get_instructions`` -> an MCP listing;
* anything else -> a generic operation: ``(tool_server=<agent name>, tool_name=<operation>)``, e.g.
  ``("support", "capability__workspace__call")``, parameters = the operation and a digest of its
  arguments. A denied generic operation always fails the activity (no result can be made up).

The allow-list (checked in pydantic-ai 2.59's ``durable_exec`` sources; nothing there reaches a model,
a tool body or an MCP server, or it only cancels one):

* ``<toolset>__<id>__validate_args`` (``toolset``, ``dynamic_toolset``, ``mcp_server``): runs the
  tool's argument schema and validator, never the tool body;
* ``function_toolset__<id>__get_tools`` / ``dynamic_toolset__<id>__get_tools``: lists the tools of
  local code (a dynamic toolset's factory is resolved to build the list); each call is governed;
* ``event_stream_handler``: the user's own event handler, fed events of already governed calls;
* ``model_cancel_suspended_response``: only cancels a suspended model response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import hashlib

from chio_durable.agent import CallMapper, GovernedCall
from chio_durable.agent._mapping import canonical_json
from chio_durable._metering import ModelMetering
from chio_sdk.models import MonetaryAmount

__all__ = ["AgentActivity", "classify_activity", "governed_call", "model_activity_actual", "model_activity_cost"]

_MODEL_OPERATIONS = frozenset({"model_request", "model_request_stream", "model_compact_messages"})
_UNGOVERNED_OPERATIONS = frozenset({"event_stream_handler", "model_cancel_suspended_response"})
_TOOL_PREFIXES: tuple[tuple[str, Literal["tool", "mcp"]], ...] = (
    ("toolset__", "tool"),
    ("function_toolset__", "tool"),
    ("dynamic_toolset__", "tool"),
    ("mcp_server__", "mcp"),
)
_LOCAL_LISTINGS = ("function_toolset__", "dynamic_toolset__")


@dataclass(frozen=True)
class AgentActivity:
    """One governed operation of an agent, recognised from its activity type."""

    kind: Literal["model", "tool", "mcp", "mcp_list", "operation"]
    operation: str
    """``model_request``, ``call_tool``, ``get_tools``, ``get_instructions``...; for ``kind="operation"``
    the whole name after ``agent__<name>__`` (e.g. ``capability__workspace__call``)."""
    toolset_id: str | None = None


def classify_activity(activity_type: str, agent_name: str) -> AgentActivity | None:
    """The governed operation ``activity_type`` is for ``agent_name``.

    ``None`` for an activity of another agent (or none), and for the agent's allow-listed operations
    (module docstring); every other operation of the agent is governed (``kind="operation"`` when
    it is none of the known ones).
    """
    prefix = f"agent__{agent_name}__"
    if not activity_type.startswith(prefix):
        return None
    rest = activity_type[len(prefix) :]
    if rest in _MODEL_OPERATIONS:
        return AgentActivity(kind="model", operation=rest)
    if rest in _UNGOVERNED_OPERATIONS:
        return None
    body, sep, operation = rest.rpartition("__")
    if sep:
        for toolset_prefix, kind in _TOOL_PREFIXES:
            if not body.startswith(toolset_prefix) or len(body) == len(toolset_prefix):
                continue
            toolset_id = body[len(toolset_prefix) :]
            if operation == "call_tool":
                return AgentActivity(kind=kind, operation=operation, toolset_id=toolset_id)
            if kind == "mcp" and operation in ("get_tools", "get_instructions"):
                return AgentActivity(kind="mcp_list", operation=operation, toolset_id=toolset_id)
            if operation == "validate_args":
                return None
            if operation == "get_tools" and toolset_prefix in _LOCAL_LISTINGS:
                return None
            break
    return AgentActivity(kind="operation", operation=rest)


def governed_call(
    activity: AgentActivity,
    args: Sequence[Any],
    *,
    mapper: CallMapper,
    agent_name: str,
    model_name_for: Callable[[str | None], str],
) -> GovernedCall:
    """Map the decoded activity arguments (``(params, deps)``) to the call the kernel evaluates."""
    params = args[0] if args else None
    if activity.kind == "operation":
        # An operation pydantic-ai's names do not tell us more about: the agent is the server, the
        # operation the tool; the arguments (minus deps) only as a digest (they carry the run context).
        digest = hashlib.sha256(canonical_json(params).encode()).hexdigest()
        return GovernedCall(
            kind="tool",
            tool_server=agent_name,
            tool_name=activity.operation,
            parameters={"agent": agent_name, "operation": activity.operation, "params_sha256": digest},
        )
    if activity.kind == "model":
        messages = list(getattr(params, "messages", None) or [])
        settings = getattr(params, "model_settings", None)
        return mapper.model_request(
            agent_name=agent_name,
            model_name=model_name_for(getattr(params, "model_id", None)),
            messages=messages,
            model_settings=settings if isinstance(settings, Mapping) else None,
        )
    if activity.kind == "mcp_list":
        return mapper.mcp_list_tools(server_id=activity.toolset_id or "")
    tool_name = str(getattr(params, "name", ""))
    tool_args = getattr(params, "tool_args", None)
    tool_args = tool_args if isinstance(tool_args, Mapping) else {}
    if activity.kind == "mcp":
        return mapper.mcp_tool(server_id=activity.toolset_id or "", tool_name=tool_name, args=tool_args)
    return mapper.function_tool(
        toolset_id=activity.toolset_id,
        agent_name=agent_name,
        tool_name=tool_name,
        args=tool_args,
    )


def model_activity_cost(
    metering: ModelMetering, args: Sequence[Any], model_name_for: Callable[[str | None], str]
) -> MonetaryAmount | None:
    """The estimated cost a model-request activity declares: price x its ``max_tokens`` (docs/budgets.md)."""
    params = args[0] if args else None
    settings = getattr(params, "model_settings", None)
    return metering.estimate(
        model_name_for(getattr(params, "model_id", None)), settings if isinstance(settings, Mapping) else None
    )


def model_activity_actual(
    metering: ModelMetering, args: Sequence[Any], model_name_for: Callable[[str | None], str], result: Any
) -> MonetaryAmount | None:
    """The actual cost of a model-request activity's result (its ``ModelResponse.usage``), if priced."""
    response = result if hasattr(result, "usage") else getattr(result, "response", None)
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    params = args[0] if args else None
    return metering.actual(model_name_for(getattr(params, "model_id", None)), usage)
