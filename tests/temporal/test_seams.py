"""Loud tests of ``chio_temporal._seams``: what chio-durable relies on beyond pydantic-ai's and
temporalio's public API. A failure here means the library moved: fix the seam, don't skip the test."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.durable_exec.temporal import AgentPlugin, TemporalDurability, worker_registrations
from pydantic_ai.models.function import FunctionModel
from temporalio import activity
from temporalio.common import RawValue

import test_agent_app as app
from chio_temporal import ChioTemporalConfigError
from chio_temporal._seams import (
    agent_with_capability,
    govern_durable_agent,
    registered_activity_name,
    replace_in_live_list,
)
from chio_temporal._agent import ChioTemporalAgent
from chio_temporal.interceptor import _is_dynamic


def _names(fns: Sequence[Any]) -> set[str]:
    return {name for fn in fns if (name := registered_activity_name(fn)) is not None}


# --- temporalio: the registered activity name -------------------------------------------------


def test_registered_activity_name_reads_what_activity_defn_registered():
    @activity.defn(name="custom_name")
    async def named(x: int) -> int:
        return x

    @activity.defn
    async def plain(x: int) -> int:
        return x

    @activity.defn(dynamic=True)
    async def dynamic(args: Sequence[RawValue]) -> None:
        return None

    async def undecorated() -> None:
        return None

    assert registered_activity_name(named) == "custom_name"
    assert registered_activity_name(plain) == "plain"
    assert registered_activity_name(dynamic) is None
    assert registered_activity_name(undecorated) is None


def test_dynamic_activity_recognised_by_public_types():
    @activity.defn(dynamic=True)
    async def dynamic(args: Sequence[RawValue]) -> None:
        return None

    @activity.defn
    async def typed(items: list[str]) -> None:
        return None

    assert _is_dynamic(dynamic, ([],))  # no arguments: recognised by its required signature
    assert _is_dynamic(typed, ([RawValue(payload=None)],)) is True  # type: ignore[arg-type]
    assert not _is_dynamic(typed, (["a"],))
    assert not _is_dynamic(typed, ([],))
    # what temporalio requires of a dynamic activity (the signature test relies on it)
    assert typing.get_type_hints(dynamic)["args"] == Sequence[RawValue]


# --- pydantic-ai: adding the durability to a built agent ----------------------------------------


def test_agent_with_capability_leaves_the_agent_untouched_and_names_activities_as_pydantic_ai_does():
    original = Agent(FunctionModel(app.scripted_support_model), name="seam", tools=[app.lookup])
    before = list(original.root_capability.capabilities)
    durable = agent_with_capability(original, TemporalDurability())
    assert TemporalDurability.from_agent(original) is None
    assert list(original.root_capability.capabilities) == before
    durability = TemporalDurability.from_agent(durable)
    assert durability is not None and durability.name == "seam"
    # the same activity names pydantic-ai gives an agent built with the capability
    reference = Agent(
        FunctionModel(app.scripted_support_model), name="seam", tools=[app.lookup], capabilities=[TemporalDurability()]
    )
    reference_durability = TemporalDurability.from_agent(reference)
    assert reference_durability is not None
    assert _names(durability.temporal_activities) == _names(reference_durability.temporal_activities)
    assert "agent__seam__toolset__<agent>__call_tool" in _names(durability.temporal_activities)


# --- pydantic-ai: the registrations every worker route reads are one live list ------------------


def test_backend_registrations_and_temporal_agent_activities_are_live_lists():
    agent = Agent(FunctionModel(app.scripted_support_model), name="live", tools=[app.lookup],
                  capabilities=[TemporalDurability()])
    durability = TemporalDurability.from_agent(agent)
    assert durability is not None
    registrations = durability.get_durable_operation_backend().registrations()
    assert isinstance(registrations, list)
    assert registrations is durability.get_durable_operation_backend().registrations()
    # what the routes read is that list's activities (child-workflow types are skipped)
    activities = [r for r in registrations if not isinstance(r, type)]
    assert activities and all(fn in worker_registrations(durability)[0] for fn in activities)
    assert app.legacy_agent.temporal_activities is app.legacy_agent.temporal_activities
    assert isinstance(app.legacy_agent.temporal_activities, list)


def test_replace_in_live_list_refuses_a_copy():
    items = [1, 2]
    replace_in_live_list(items, lambda x: x * 10)
    assert items == [10, 20]
    with pytest.raises(ChioTemporalConfigError, match="pin the tested"):
        replace_in_live_list((1, 2), lambda x: x)


def test_a_governed_temporal_agent_hands_out_only_retired_activities_on_every_route():
    """replace_in_live_list on TemporalAgent.temporal_activities reaches what AgentPlugin registers."""
    import warnings

    from pydantic_ai import PydanticAIDeprecationWarning
    from pydantic_ai.durable_exec.temporal import TemporalAgent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticAIDeprecationWarning)
        legacy = TemporalAgent(Agent(FunctionModel(app.scripted_support_model), name="retire", tools=[app.lookup]))
    ChioTemporalAgent(legacy, capability_id="c", chio_client=app._placeholder)
    config = AgentPlugin(legacy).configure_worker({"activities": [], "workflows": []})  # type: ignore[typeddict-item]
    for fns in (legacy.temporal_activities, config["activities"]):
        callables = [fn for fn in fns if not isinstance(fn, type)]
        assert callables and all(getattr(fn, "__chio_retired_for__", None) == "retire" for fn in callables)


# --- pydantic-ai: the governance's durable operations on every route ------------------------------

GOVERNANCE_ACTIVITIES = {"capability__chio__evaluate", "capability__chio__settle", "capability__chio__approval_wake"}


def _governance_activities(fns: Sequence[Any], agent_name: str) -> set[str]:
    prefix = f"agent__{agent_name}__"
    return {name.removeprefix(prefix) for name in _names(fns) if name.removeprefix(prefix) in GOVERNANCE_ACTIVITIES}


def test_agent_keeps_its_root_capability_where_the_seams_write_it():
    """The one private write (agent_with_capability, govern_durable_agent): pydantic-ai's Agent keeps its
    root capability in ``_root_capability``, which ``root_capability`` reads."""
    agent = Agent(FunctionModel(app.scripted_support_model), name="root")
    assert "_root_capability" in vars(agent)
    assert agent.root_capability is vars(agent)["_root_capability"]


def test_governance_then_durability_on_a_copy_registers_the_governance_activities():
    governed = ChioTemporalAgent(
        Agent(FunctionModel(app.scripted_support_model), name="copyroute", tools=[app.lookup]),
        capability_id="c", chio_client=app._placeholder,
    )
    durability = TemporalDurability.from_agent(governed.wrapped)
    assert durability is not None
    config = AgentPlugin(governed.wrapped).configure_worker({"activities": [], "workflows": []})  # type: ignore[typeddict-item]
    for fns in (durability.temporal_activities, worker_registrations(durability)[0], config["activities"]):
        assert _governance_activities(fns, "copyroute") == GOVERNANCE_ACTIVITIES


def test_govern_durable_agent_puts_the_governance_on_the_agent_and_rebinds_its_durability():
    from chio_durable.agent import ChioGovernance

    agent = Agent(FunctionModel(app.scripted_support_model), name="inplace", tools=[app.lookup],
                  capabilities=[TemporalDurability()])
    durability = TemporalDurability.from_agent(agent)
    assert durability is not None and not _governance_activities(durability.temporal_activities, "inplace")
    governance = ChioGovernance(capability_id="c", chio_client=app._placeholder)
    govern_durable_agent(agent, governance, durability)
    capabilities = list(agent.root_capability.capabilities)
    assert any(isinstance(c, ChioGovernance) for c in capabilities)
    rebound = TemporalDurability.from_agent(agent)
    assert rebound is not None and rebound is capabilities[-1]  # the durability binds last: it sees the governance
    config = AgentPlugin(agent).configure_worker({"activities": [], "workflows": []})  # type: ignore[typeddict-item]
    for fns in (rebound.temporal_activities, worker_registrations(rebound)[0], config["activities"]):
        assert _governance_activities(fns, "inplace") == GOVERNANCE_ACTIVITIES
    with pytest.raises(ChioTemporalConfigError, match="top-level"):
        govern_durable_agent(agent, ChioGovernance(capability_id="c", chio_client=app._placeholder), TemporalDurability())


def test_construction_refuses_when_pydantic_ai_does_not_register_the_evaluate_activity(monkeypatch):
    """If pydantic-ai stops registering the governance's durable operations, the governed agent is not built."""
    import pydantic_ai.durable_exec.temporal as temporal

    real = temporal.worker_registrations

    def without_governance(durability: Any, **kwargs: Any) -> Any:
        activities, workflows = real(durability, **kwargs)
        return [fn for fn in activities if "__capability__chio__" not in (registered_activity_name(fn) or "")], workflows

    monkeypatch.setattr(temporal, "worker_registrations", without_governance)
    plain = Agent(FunctionModel(app.scripted_support_model), name="unregistered", tools=[app.lookup])
    with pytest.raises(ChioTemporalConfigError, match="did not register the governance activity"):
        ChioTemporalAgent(plain, capability_id="c", chio_client=app._placeholder)
