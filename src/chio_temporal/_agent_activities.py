"""What a pydantic-ai Temporal activity is, seen from the activity worker.

``TemporalDurability`` (and the deprecated ``TemporalAgent``) register one activity per durable
operation of an agent, named ``agent__<agent name>__<operation>`` — names that pydantic-ai pins as
persisted compatibility data (``TemporalOperationNamer``). The governing interceptor reads the
activity type of each execution, recognises the agent's operations, and maps the activity's own,
already decoded arguments to a :class:`chio_durable.agent.GovernedCall` with the shared
:class:`~chio_durable.agent.CallMapper`. Nothing here runs in workflow code.

Governed operations (everything that reaches a model, a tool body or an MCP server), by the part
of the activity name after ``agent__<name>__``:

* ``model_request``, ``model_request_stream``, ``model_compact_messages`` -> a model call
  (reads ``params.messages``, ``params.model_settings``, ``params.model_id``);
* ``toolset__<id>__call_tool``, ``dynamic_toolset__<id>__call_tool`` -> a function-tool call
  (reads ``params.name``, ``params.tool_args``);
* ``mcp_server__<id>__call_tool`` -> an MCP tool call (same);
* ``mcp_server__<id>__get_tools``, ``mcp_server__<id>__get_instructions`` -> an MCP listing.

Not governed (no model, tool body or MCP server is reached, or it only cancels one): argument
validation (``__validate_args``), listing function / dynamic toolsets, the event stream handler,
``model_cancel_suspended_response`` and capability operations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chio_durable.agent import CallMapper, GovernedCall

__all__ = ["AgentActivity", "classify_activity", "governed_call"]

_MODEL_OPERATIONS = frozenset({"model_request", "model_request_stream", "model_compact_messages"})
_TOOL_PREFIXES: tuple[tuple[str, Literal["tool", "mcp"]], ...] = (
    ("toolset__", "tool"),
    ("dynamic_toolset__", "tool"),
    ("mcp_server__", "mcp"),
)


@dataclass(frozen=True)
class AgentActivity:
    """One governed operation of an agent, recognised from its activity type."""

    kind: Literal["model", "tool", "mcp", "mcp_list"]
    operation: str
    """``model_request``, ``call_tool``, ``get_tools``, ``get_instructions``..."""
    toolset_id: str | None = None


def classify_activity(activity_type: str, agent_name: str) -> AgentActivity | None:
    """The governed operation ``activity_type`` is for ``agent_name``, or ``None`` if not governed."""
    prefix = f"agent__{agent_name}__"
    if not activity_type.startswith(prefix):
        return None
    rest = activity_type[len(prefix) :]
    if rest in _MODEL_OPERATIONS:
        return AgentActivity(kind="model", operation=rest)
    body, sep, operation = rest.rpartition("__")
    if not sep:
        return None
    for toolset_prefix, kind in _TOOL_PREFIXES:
        if not body.startswith(toolset_prefix):
            continue
        toolset_id = body[len(toolset_prefix) :]
        if operation == "call_tool":
            return AgentActivity(kind=kind, operation=operation, toolset_id=toolset_id)
        if kind == "mcp" and operation in ("get_tools", "get_instructions"):
            return AgentActivity(kind="mcp_list", operation=operation, toolset_id=toolset_id)
        return None
    return None


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
