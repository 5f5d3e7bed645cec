"""Loud tests of the third-party seams we depend on (chio_durable.agent._seams, NO_CACHE).

If one of these fails after a pydantic-ai or Prefect upgrade, an internal moved: fix the seams module
before anything else. Construction of a governed agent refuses to run meanwhile (tested here too).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from prefect.cache_policies import DEFAULT, INPUTS, NO_CACHE, NONE, TASK_SOURCE
from pydantic_ai import Agent
from pydantic_ai.agent import WrapperAgent
from pydantic_ai.exceptions import UserError
from pydantic_ai.models.test import TestModel

from chio_durable.agent import _seams as seams
from chio_kernel import LocalChioClient


def _legacy(**options: Any) -> Any:
    from pydantic_ai._warnings import PydanticAIDeprecationWarning
    from pydantic_ai.durable_exec.prefect import PrefectAgent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticAIDeprecationWarning)
        return PrefectAgent(Agent(TestModel(), name="legacy"), **options)


def test_wrapper_agent_still_delegates_realtime_through_the_hooks_we_refuse() -> None:
    seams.check_realtime_hooks()  # raises if a hook is gone
    for name in seams.REALTIME_HOOKS:
        assert name in vars(WrapperAgent), f"WrapperAgent no longer defines {name}: seams.refuse_realtime is dead"


def test_a_realtime_session_through_another_wrapper_is_refused(tmp_path: Any) -> None:
    from chio_prefect._agent import ChioPrefectAgent

    governed = ChioPrefectAgent(Agent(TestModel(), name="rt"), capability_id="cap-rt",
                                chio_client=LocalChioClient(tmp_path))
    outer = WrapperAgent(governed)  # its realtime() is pydantic-ai's own, not our override

    async def open_session() -> None:
        async with outer.realtime("openai:gpt-realtime").session():
            pass  # pragma: no cover - must not be reached

    import asyncio

    with pytest.raises(UserError, match="realtime sessions"):
        asyncio.run(open_session())
    with pytest.raises(UserError, match="realtime sessions"):
        asyncio.run(outer.realtime("openai:gpt-realtime").hang_up("call-1"))


def test_construction_refuses_when_a_realtime_hook_is_gone(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from chio_prefect._agent import ChioPrefectAgent

    monkeypatch.delattr(WrapperAgent, "_open_realtime_session")
    with pytest.raises(UserError, match="refusing to build it"):
        ChioPrefectAgent(Agent(TestModel(), name="rt"), capability_id="cap", chio_client=LocalChioClient(tmp_path))


def test_prefect_agent_hidden_options_are_where_the_seams_module_reads_them() -> None:
    from pydantic_ai.durable_exec.prefect import TaskConfig

    legacy = _legacy(tool_task_config_by_name={"search": None, "fetch": TaskConfig(retries=4)},
                     event_stream_handler_task_config=TaskConfig(retries=7))
    found = seams.prefect_agent_hidden_options(legacy, {})
    assert found["tool_task_config_by_name"] == {"search": None, "fetch": {"retries": 4}}
    assert found["event_stream_handler_task_config"]["retries"] == 7
    # options given explicitly are not read at all
    assert seams.prefect_agent_hidden_options(legacy, {"tool_task_config_by_name": {},
                                                         "event_stream_handler_task_config": {}}) == {}


def test_construction_refuses_when_a_prefect_agent_option_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from pydantic_ai.durable_exec.prefect import PrefectAgent

    from chio_prefect._agent import ChioPrefectAgent

    legacy = _legacy()
    monkeypatch.delattr(legacy, "_tool_task_config_by_name")  # what a pydantic-ai refactor would do
    assert isinstance(legacy, PrefectAgent)
    chio = LocalChioClient(tmp_path)
    with pytest.raises(UserError, match=r"tool_task_config_by_name=\.\.\. to ChioPrefectAgent explicitly"):
        ChioPrefectAgent(legacy, capability_id="cap", chio_client=chio)
    # ... and passing it explicitly is the way out
    governed = ChioPrefectAgent(legacy, capability_id="cap", chio_client=chio, tool_task_config_by_name={})
    assert governed.name == "legacy"


def test_prefect_agent_public_reads() -> None:
    from pydantic_ai.durable_exec.prefect import PrefectModel, TaskConfig
    from pydantic_ai.toolsets import FunctionToolset, WrapperToolset

    legacy = _legacy(model_task_config=TaskConfig(retries=3), tool_task_config=TaskConfig(retries=2))
    assert legacy.name == "legacy"
    assert isinstance(legacy.model, PrefectModel) and legacy.model.task_config["retries"] == 3
    durable = [t for t in legacy.toolsets if isinstance(t, WrapperToolset) and isinstance(t.wrapped, FunctionToolset)]
    assert durable and all(t.durable_config["retries"] == 2 for t in durable)  # type: ignore[attr-defined]


def test_no_cache_policies_are_equal_to_no_cache() -> None:
    from chio_prefect._agent import _no_cache
    from chio_prefect._cache_policies import caches as _caches

    assert NONE == NO_CACHE and type(NO_CACHE)() == NO_CACHE
    for off in (None, NO_CACHE, NONE, type(NO_CACHE)()):
        assert _no_cache(off) and not _caches(off)
    for on in (INPUTS, DEFAULT, TASK_SOURCE, INPUTS + TASK_SOURCE):
        assert not _no_cache(on) and _caches(on)


def test_the_root_capability_of_a_built_agent_can_still_be_replaced() -> None:
    # chio_durable.agent._seams.set_root_capability: the one write of Agent._root_capability, which the
    # Temporal and DBOS agents need to put the governance before the durability. If pydantic-ai
    # renames or freezes it, this fails here, and building a governed agent refuses (UserError).
    import copy

    from pydantic_ai import Agent
    from pydantic_ai.capabilities import CombinedCapability
    from pydantic_ai.models.test import TestModel

    from chio_durable.agent._seams import set_root_capability

    agent = Agent(TestModel())
    plain = copy.copy(agent)
    root = CombinedCapability([*agent.root_capability.capabilities])
    set_root_capability(plain, root)
    assert plain.root_capability is root
    assert agent.root_capability is not root  # the user's agent is untouched
