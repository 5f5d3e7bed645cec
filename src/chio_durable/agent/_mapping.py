"""What one model request, function-tool call or MCP call *is*, for the kernel.

:class:`CallMapper` turns each governed call of a Pydantic AI agent into a :class:`GovernedCall`
``(kind, tool_server, tool_name, parameters)`` that the kernel evaluates against the capability's
grants. The defaults below are the documented contract (``docs/agents.md``); subclass and override
any method to change how calls meet your grants.

Default mapping
---------------
======================  =====================  ==========================  =========================================
call                    ``tool_server``        ``tool_name``               ``parameters``
======================  =====================  ==========================  =========================================
model request           ``"model"``            the model's name            ``{"agent", "message_count",
                                                                           "messages_sha256", "settings_sha256"}``
function tool           the toolset's id       the tool's name             the tool's arguments, by name
                        (the agent's name for
                        the agent's own tools)
MCP tool call           the MCP server's id    the MCP tool's name         the tool's arguments, by name
MCP tool listing        the MCP server's id    ``"list_tools"``            ``{}``
output function         the agent's name       the function's name         its arguments (a dict), else
                                                                           ``{"output": value}``
======================  =====================  ==========================  =========================================

Model-request parameters stay small and deterministic: never the whole history, only its size and
digests. The messages digest ignores the fields that differ between two attempts of the same run
(``timestamp``, ``run_id``, ``conversation_id``), so a retried run reaches the same idempotency key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_ai.messages import ModelMessage

from chio_durable._call import CallKind, GovernedCall
from chio_durable._params import canonical_text, digest, jsonable

__all__ = [
    "AGENT_TOOLSET_ID",
    "MODEL_SERVER",
    "MCP_LIST_TOOL",
    "CallKind",
    "CallMapper",
    "GovernedCall",
    "canonical_json",
    "messages_digest",
    "parameter_hash",
    "settings_digest",
]


MODEL_SERVER = "model"
"""``tool_server`` of every model request under the default mapping."""

MCP_LIST_TOOL = "list_tools"
"""``tool_name`` of an MCP tool listing under the default mapping."""

AGENT_TOOLSET_ID = "<agent>"
"""The id pydantic-ai gives the toolset of an agent's own ``tools=[...]``."""

# Framework dataclass fields that differ between two attempts of one run (pydantic-ai's Prefect
# cache policy strips the same ones): left out of the messages digest. ``request_timestamp`` and
# ``duration`` are on every ModelResponse since pydantic-ai 2.7x.
_PER_ATTEMPT_FIELDS = frozenset({"timestamp", "request_timestamp", "duration", "run_id", "conversation_id"})


def canonical_json(value: Any) -> str:
    """The kernel's canonical JSON of a JSON-able view of ``value`` (stable across processes).

    One implementation: :func:`chio_durable._params.canonical_text` over ``chio_kernel.canonical``.
    Values with no JSON form fall back to their ``repr``; memory addresses in those reprs
    (``<Foo object at 0x7f...>``) are dropped so two attempts of a run hash alike.
    """
    return canonical_text(value)


def parameter_hash(parameters: Mapping[str, Any]) -> str:
    """Hash call parameters: sha256 of their canonical JSON (part of every idempotency key).

    Args:
        parameters: the call's JSON-able parameters.

    Returns:
        The sha256 hex digest.
    """
    return digest(dict(parameters))


def _project(value: Any) -> Any:
    """A JSON-able projection of pydantic-ai messages without their per-attempt fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        module = type(value).__module__
        framework = module == "pydantic_ai" or module.startswith("pydantic_ai.")
        return {
            f.name: _project(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (framework and f.name in _PER_ATTEMPT_FIELDS)
        }
    if isinstance(value, Mapping):
        return {str(k): _project(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_project(v) for v in value]
    return value


def messages_digest(messages: Sequence[ModelMessage]) -> str:
    """Hash model messages, ignoring ``timestamp`` / ``run_id`` / ``conversation_id``.

    Args:
        messages: the pydantic-ai messages of a model request.

    Returns:
        The sha256 hex digest (the same messages on a replay give the same digest).
    """
    return digest(_project(list(messages)))


def settings_digest(model_settings: Mapping[str, Any] | None) -> str | None:
    """Hash model settings.

    Args:
        model_settings: the request's model settings, or None.

    Returns:
        The sha256 hex digest, or None when there are no settings.
    """
    if not model_settings:
        return None
    return digest(dict(model_settings))


class CallMapper:
    """Maps agent calls to :class:`GovernedCall` s. Subclass and override any method.

    Every method receives keyword arguments only, so new context can be added in later versions
    without breaking subclasses that accept ``**kwargs``.
    """

    def model_request(
        self,
        *,
        agent_name: str | None,
        model_name: str,
        messages: Sequence[ModelMessage],
        model_settings: Mapping[str, Any] | None,
    ) -> GovernedCall:
        """Map a model request to a governed call: server ``"model"``, tool = the model's name.

        Args:
            agent_name: the agent's name, or None.
            model_name: the model's name (the tool the kernel sees).
            messages: the messages sent (only their count and digest are parameters).
            model_settings: the request's model settings (only their digest is a parameter).

        Returns:
            A ``kind="model"`` call with small digest parameters: ``agent``, ``message_count``,
            ``messages_sha256``, ``settings_sha256``.
        """
        return GovernedCall(
            kind="model",
            tool_server=MODEL_SERVER,
            tool_name=model_name,
            parameters={
                "agent": agent_name,
                "message_count": len(messages),
                "messages_sha256": messages_digest(messages),
                "settings_sha256": settings_digest(model_settings),
            },
        )

    def function_tool(
        self,
        *,
        toolset_id: str | None,
        agent_name: str | None,
        tool_name: str,
        args: Mapping[str, Any],
    ) -> GovernedCall:
        """Map a function tool call: server = its toolset's id (the agent's name for the agent's own tools).

        Args:
            toolset_id: the id of the leaf toolset the tool belongs to, or None.
            agent_name: the agent's name, or None.
            tool_name: the tool.
            args: the arguments the model passed.

        Returns:
            A ``kind="tool"`` call.
        """
        if toolset_id is None or toolset_id == AGENT_TOOLSET_ID:
            server = agent_name or "agent"
        else:
            server = toolset_id
        return GovernedCall(kind="tool", tool_server=server, tool_name=tool_name, parameters=jsonable(dict(args)))

    def mcp_tool(self, *, server_id: str, tool_name: str, args: Mapping[str, Any]) -> GovernedCall:
        """Map an MCP tool call: server = the MCP server's id, tool = the MCP tool's name.

        Args:
            server_id: the MCP server's id.
            tool_name: the MCP tool.
            args: the arguments the model passed.

        Returns:
            A ``kind="mcp"`` call.
        """
        return GovernedCall(kind="mcp", tool_server=server_id, tool_name=tool_name, parameters=jsonable(dict(args)))

    def output_function(self, *, agent_name: str | None, function_name: str, output: Any) -> GovernedCall:
        """Map an output function call (``ToolOutput(func)``, ``TextOutput(func)``...): server = the agent's name.

        Args:
            agent_name: the agent's name, or None (``"agent"``).
            function_name: the output function's name.
            output: the output it is called with (a dict as is, else ``{"output": value}``).

        Returns:
            A ``kind="output"`` call.
        """
        value = jsonable(output)
        parameters = value if isinstance(value, dict) else {"output": value}
        return GovernedCall(kind="output", tool_server=agent_name or "agent", tool_name=function_name, parameters=parameters)

    def mcp_list_tools(self, *, server_id: str) -> GovernedCall:
        """Map listing an MCP server's tools: server = the MCP server's id, tool ``"list_tools"``.

        Args:
            server_id: the MCP server's id.

        Returns:
            A ``kind="mcp_list"`` call without parameters.
        """
        return GovernedCall(kind="mcp_list", tool_server=server_id, tool_name=MCP_LIST_TOOL, parameters={})
