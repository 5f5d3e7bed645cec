"""The pydantic-ai seams: the one place that touches pydantic-ai names that have no public seam.

Beside ``chio_temporal/_seams.py`` and ``chio_dbos/_seams.py`` (each engine's own private names).

Everything else in ``chio_durable`` / ``chio_prefect`` uses pydantic-ai's public API only. What is
here has no public equivalent in pydantic-ai 2.59 .. 2.78 (checked again on 2.78.0: ``PrefectAgent``
still keeps both options below only in private attributes), so it is isolated, checked when a
governed agent is built (construction refuses to run when a name moved, rather than run
ungoverned or silently drop a user's option), and pinned by ``tests/test_pydantic_ai_seams.py``,
which fails loudly when an internal changes:

* **Realtime hooks of ``WrapperAgent``.** A realtime session runs no model-request hooks, so a
  governed agent must refuse it. The public ``realtime()`` is overridden by the wrappers; but a
  session opened through *another* wrapper around ours (``WrapperAgent(governed).realtime(...)``)
  reaches us only through ``WrapperAgent``'s delegation hooks, which pydantic-ai documents as the
  way for a wrapper to gate realtime (see ``WrapperAgent._open_realtime_session``'s docstring).
  :func:`refuse_realtime` installs refusing overrides of exactly those hooks.
* **Two options of the deprecated ``PrefectAgent``** with no public read path:
  ``tool_task_config_by_name`` and ``event_stream_handler_task_config``
  (:func:`prefect_agent_hidden_options`). Everything else a ``PrefectAgent`` was given is read
  through public attributes in ``chio_prefect._agent``.
* **``Agent.instrument_all()``'s setting.** It is stored only in the private class attribute
  ``Agent._instrument_default`` (2.78); ``ChioGovernance`` follows it (:func:`agent_instrument_all`),
  so one ``Agent.instrument_all()`` also traces the Chio decisions (docs/observability.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic_ai.agent import Agent, WrapperAgent
from pydantic_ai.capabilities import CombinedCapability
from pydantic_ai.exceptions import UserError

__all__ = [
    "REALTIME_HOOKS",
    "agent_instrument_all",
    "set_root_capability",
    "check_realtime_hooks",
    "prefect_agent_hidden_options",
    "refuse_realtime",
]

REALTIME_HOOKS = ("_check_realtime_signaling", "_resolve_realtime_session", "_open_realtime_session")
"""``WrapperAgent``'s realtime delegation hooks: a session or WebRTC signaling reaches a wrapped agent
only through these (``AgentRealtime.session/answer_webrtc_offer/create_client_secret/hang_up``)."""

PREFECT_AGENT_HIDDEN_OPTIONS = {
    "tool_task_config_by_name": "_tool_task_config_by_name",
    "event_stream_handler_task_config": "_event_stream_handler_task_config",
}
"""``PrefectAgent`` constructor options with no public read path -> the attribute that holds them."""

A = TypeVar("A", bound=type)


def check_realtime_hooks() -> None:
    """Raise ``UserError`` unless ``WrapperAgent`` still delegates realtime through :data:`REALTIME_HOOKS`.

    If pydantic-ai renamed them, the refusing overrides would no longer be called and a realtime
    session could open ungoverned: building a governed agent refuses instead.
    """
    # Defined on WrapperAgent itself: that is the delegation that routes another wrapper's session to us.
    missing = [name for name in REALTIME_HOOKS if not callable(vars(WrapperAgent).get(name))]
    if missing:
        raise UserError(
            "chio: this pydantic-ai version no longer delegates realtime sessions through "
            f"WrapperAgent.{', '.join(missing)}, so a governed agent could not refuse them; refusing to "
            "build it. Install a pydantic-ai-slim version inside chio-durable's tested range."
        )


def refuse_realtime(message: str) -> Callable[[A], A]:
    """Class decorator: the wrapper agent class refuses every realtime entry point with ``message``."""

    def install(cls: A) -> A:
        def check_signaling(self: Any) -> None:
            raise UserError(message)

        @asynccontextmanager
        async def refuse_session(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            raise UserError(message)
            yield  # pragma: no cover

        setattr(cls, REALTIME_HOOKS[0], check_signaling)
        setattr(cls, REALTIME_HOOKS[1], refuse_session)
        setattr(cls, REALTIME_HOOKS[2], refuse_session)
        return cls

    return install


def prefect_agent_hidden_options(agent: Any, already_given: dict[str, Any]) -> dict[str, Any]:
    """The options of a ``PrefectAgent`` that pydantic-ai exposes no public read path for.

    Options the caller passed to the governed wrapper explicitly (``already_given`` not ``None``)
    are not read. Raises ``UserError`` when the attribute holding one is gone (the option would be
    dropped silently otherwise): pass it explicitly, or build the wrapper from the plain ``Agent``.
    """
    found: dict[str, Any] = {}
    for option, attribute in PREFECT_AGENT_HIDDEN_OPTIONS.items():
        if already_given.get(option) is not None:
            continue
        try:
            found[option] = getattr(agent, attribute)
        except AttributeError:
            raise UserError(
                f"chio: cannot read the {option}= this PrefectAgent was built with (this pydantic-ai "
                f"version has no {type(agent).__name__}.{attribute}). Pass {option}=... to "
                "ChioPrefectAgent explicitly ({} if you set none), or wrap the plain Agent "
                "(prefect_agent.wrapped) with its Prefect options."
            ) from None
    return found


def set_root_capability(agent: Agent[Any, Any], root: CombinedCapability[Any]) -> None:
    """Make ``root`` the root capability of the built ``agent`` (a copy the caller made).

    pydantic-ai has no public way to add a capability to an agent that is already built, and an
    engine must add the governance before the agent's durability is bound (so the kernel checks are
    the engine's durable units). This is the one write of ``Agent._root_capability`` in ``src/``.

    Args:
        agent: The agent whose root capability is replaced (a shallow copy, never the user's agent).
        root: The new root capability.

    Raises:
        UserError: pydantic-ai no longer lets the root capability be replaced this way.
    """
    try:
        agent._root_capability = root  # noqa: SLF001 - the one write: no public setter exists
    except AttributeError as err:
        raise UserError(
            "chio: cannot add a capability to a built Agent (pydantic-ai changed an internal chio-durable "
            "relies on: install a pydantic-ai-slim inside chio-durable's tested range)"
        ) from err
    if agent.root_capability is not root:
        raise UserError(
            "chio: the capability did not reach the agent (pydantic-ai changed an internal chio-durable "
            "relies on: install a pydantic-ai-slim inside chio-durable's tested range)"
        )


def agent_instrument_all() -> bool:
    """Whether pydantic-ai's ``Agent.instrument_all()`` switched instrumentation on for every agent."""
    return bool(getattr(Agent, "_instrument_default", False))
