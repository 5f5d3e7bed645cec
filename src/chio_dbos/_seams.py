"""The one place ``chio_dbos`` touches pydantic-ai names that have no public seam.

pydantic-ai 2.78's DBOS durability registers the DBOS steps of a capability's
``@durable_operation`` methods only for capabilities present when ``DBOSDurability`` is bound to
the agent (``for_agent``); a capability passed to a run inside a workflow is refused (or, next to a
per-run ``DBOSDurability``, its operations silently run inline, unrecorded). ``ChioGovernance``
must therefore be on the agent itself, and there is no public way to add a capability to a built
``Agent``. :func:`agent_with_capabilities` makes a shallow copy and sets its root capability (one
private write), binding each new capability through the public ``for_agent`` in the order
``Agent.__init__`` does (durability last, so it sees governance's durable operations).

:func:`dbos_agent_options` reads the three options of the deprecated ``DBOSAgent`` that have no
public read path. Both refuse loudly when the names moved (``tests/dbos/test_seams.py`` pins them),
rather than build an agent that would run ungoverned or drop a user's option.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability, CombinedCapability
from pydantic_ai.exceptions import UserError

from chio_durable._engine import set_root_capability

__all__ = ["DBOS_AGENT_HIDDEN_OPTIONS", "agent_with_capabilities", "agent_without", "dbos_agent_options"]

_UPGRADE = "(pydantic-ai changed an internal chio_dbos relies on: install a pydantic-ai-slim inside chio-durable's tested range)"

DBOS_AGENT_HIDDEN_OPTIONS = {
    "model_step_config": "_model_step_config",
    "mcp_step_config": "_mcp_step_config",
    "parallel_execution_mode": "_parallel_execution_mode",
}
"""``DBOSAgent`` constructor options with no public read path -> the attribute that holds them."""


def agent_with_capabilities(
    agent: Agent[Any, Any], capabilities: Sequence[AbstractCapability[Any]], durability: AbstractCapability[Any]
) -> Agent[Any, Any]:
    """A shallow copy of ``agent`` that also carries ``capabilities`` and then ``durability``, bound to it.

    Args:
        agent: A built ``Agent`` (left untouched) without a durability capability.
        capabilities: Capabilities to add (bound first, in this order).
        durability: The durability capability, bound last so it registers the durable operations of
            every capability already on the copy.

    Returns:
        The copy.

    Raises:
        UserError: The agent's root capability cannot be replaced any more (pydantic-ai changed).
    """
    durable = copy.copy(agent)
    existing = list(agent.root_capability.capabilities)
    bound = [capability.for_agent(durable) for capability in capabilities]
    _set_root(durable, CombinedCapability([*existing, *bound]))
    bound_durability = durability.for_agent(durable)
    _set_root(durable, CombinedCapability([*existing, *bound, bound_durability]))
    return durable


def agent_without(agent: Agent[Any, Any], capability: AbstractCapability[Any]) -> Agent[Any, Any]:
    """A shallow copy of ``agent`` whose root capability no longer holds ``capability`` (a direct child).

    Args:
        agent: A built ``Agent`` (left untouched).
        capability: One of ``agent.root_capability.capabilities``.

    Returns:
        The copy.

    Raises:
        UserError: The agent's root capability cannot be replaced any more (pydantic-ai changed).
    """
    plain = copy.copy(agent)
    _set_root(plain, CombinedCapability([c for c in agent.root_capability.capabilities if c is not capability]))
    return plain


def _set_root(agent: Agent[Any, Any], root: CombinedCapability[Any]) -> None:
    set_root_capability(agent, root)  # the pydantic-ai seam (chio_durable.agent._seams)


def dbos_agent_options(dbos_agent: Any) -> dict[str, Any]:
    """The step configs and parallel mode a (deprecated) ``DBOSAgent`` was built with.

    Args:
        dbos_agent: A ``pydantic_ai.durable_exec.dbos.DBOSAgent``.

    Returns:
        ``{"model_step_config", "mcp_step_config", "parallel_execution_mode"}``.

    Raises:
        UserError: An attribute moved (the option would otherwise be dropped silently).
    """
    found: dict[str, Any] = {}
    for option, attribute in DBOS_AGENT_HIDDEN_OPTIONS.items():
        try:
            found[option] = getattr(dbos_agent, attribute)
        except AttributeError:
            raise UserError(
                f"chio: cannot read the {option}= this DBOSAgent was built with {_UPGRADE}; wrap the plain "
                f"Agent (dbos_agent.wrapped) and pass {option}=... to ChioDBOSAgent"
            ) from None
    return found
