"""The only places ``chio_temporal`` relies on something its libraries do not guarantee publicly.

One function per reliance, each with a test in ``tests/temporal/test_seams.py`` that fails loudly when
the library moves, and each raising :class:`~chio_temporal.errors.ChioTemporalConfigError` (so
construction refuses to run) instead of degrading to an ungoverned agent:

* :func:`registered_activity_name` (temporalio): temporalio has no public reader for the name an
  ``@activity.defn`` function is registered under; the guard re-registers a wrapper under it.
* :func:`agent_with_capability` (pydantic-ai): pydantic-ai has no public way to add a capability to an
  agent that is already built; a copy gets the capability bound by its own public ``for_agent``.
* :func:`govern_durable_agent` (pydantic-ai): an agent that already carries a bound
  ``TemporalDurability`` gets the governance capability in place: its root capability is replaced
  (the same write as above), and the durability is bound again (its public ``for_agent``) so that
  pydantic-ai registers the governance's durable operations as the agent's activities.
* :func:`replace_in_live_list` (pydantic-ai): ``RegisteredOperationBackend.registrations()`` and
  ``TemporalAgent.temporal_activities`` are typed as sequences, not documented as the list every
  worker route reads; the guard swaps entries in place, and the caller verifies every public route
  afterwards (``worker_registrations``, ``AgentPlugin``), refusing to run when one is not guarded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import temporalio.activity
from pydantic_ai.agent import Agent
from pydantic_ai.capabilities import AbstractCapability, CombinedCapability
from pydantic_ai.exceptions import UserError

from chio_durable._engine import set_root_capability
from chio_temporal.errors import ChioTemporalConfigError

__all__ = ["agent_with_capability", "govern_durable_agent", "registered_activity_name", "replace_in_live_list"]

T = TypeVar("T")

_UPGRADE = "(pydantic-ai / temporalio changed an internal chio-durable relies on; pin the tested versions)"


def registered_activity_name(fn: Callable[..., Any]) -> str | None:
    """The activity type ``fn`` was registered with by ``@activity.defn`` (``None``: dynamic or not an activity).

    Reads temporalio's definition record, which is what its ``Worker`` itself reads (no public reader).
    """
    try:
        definition = temporalio.activity._Definition.from_callable(fn)  # noqa: SLF001 - the one lookup
    except AttributeError as err:
        raise ChioTemporalConfigError(f"cannot read the registered name of {fn!r} {_UPGRADE}") from err
    if definition is None:
        return None
    name = getattr(definition, "name", None)
    if name is not None and not isinstance(name, str):
        raise ChioTemporalConfigError(f"unexpected activity definition on {fn!r} {_UPGRADE}")
    return name


def agent_with_capability(agent: Agent[Any, Any], capability: AbstractCapability[Any]) -> Agent[Any, Any]:
    """A shallow copy of ``agent`` that also carries ``capability``, bound to the copy; ``agent`` is untouched.

    ``capability.for_agent(copy)`` (public) binds it exactly as ``Agent.__init__`` binds the ``innermost``
    tier (durability capabilities wrap the agent's toolsets there); the capabilities the agent already
    bound stay as they are. Only the assignment of the new root capability uses the agent's attribute.
    """
    durable = copy.copy(agent)
    bound = capability.for_agent(durable)
    root = CombinedCapability([*agent.root_capability.capabilities, bound])
    _set_root(durable, root)
    return durable


def replace_in_live_list(live: Sequence[T], replace: Callable[[T], T]) -> None:
    """Replace each entry of ``live`` by ``replace(entry)``, in place (the list pydantic-ai's routes read).

    Raises :class:`ChioTemporalConfigError` when ``live`` is not a mutable list (a copy or a tuple: the
    replacement would not reach the worker routes). The caller must still verify the routes.
    """
    if not isinstance(live, list):
        raise ChioTemporalConfigError(
            f"pydantic-ai no longer hands out its activity registrations as a list ({type(live).__name__}) {_UPGRADE}"
        )
    live[:] = [replace(entry) for entry in live]


def _set_root(agent: Agent[Any, Any], root: CombinedCapability[Any]) -> None:
    """The pydantic-ai seam (``chio_durable.agent._seams``), refused as a Temporal configuration error."""
    try:
        set_root_capability(agent, root)
    except UserError as err:
        raise ChioTemporalConfigError(str(err)) from err


def govern_durable_agent(
    agent: Agent[Any, Any], governance: AbstractCapability[Any], durability: AbstractCapability[Any]
) -> None:
    """Put ``governance`` on ``agent`` (in place), which carries the bound ``durability``, and bind the
    durability again so it registers the governance's durable operations.

    Raises :class:`ChioTemporalConfigError` when the durability is not one of the agent's top-level
    capabilities (nested somewhere this function does not know) or the rebinding did not take.
    """
    current = list(agent.root_capability.capabilities)
    if not any(c is durability for c in current):  # identity: capabilities are dataclasses (equal by fields)
        raise ChioTemporalConfigError(
            f"the TemporalDurability of agent {agent.name!r} is not one of its top-level capabilities {_UPGRADE}"
        )
    others = [c for c in current if c is not durability]
    bound_governance = governance.for_agent(agent)
    _set_root(agent, CombinedCapability([*others, bound_governance]))
    rebound = durability.for_agent(agent)  # reads the root above: binds the governance's operations
    _set_root(agent, CombinedCapability([*others, bound_governance, rebound]))
