"""Checked by mypy (tests/test_agent_typing.py), never run: the governed agents keep the wrapped
agent's deps and output types, so ``result.output`` is typed on both engines."""

from __future__ import annotations

from dataclasses import dataclass

from typing_extensions import assert_type

from pydantic_ai import Agent
from pydantic_ai.agent import AgentRunResult

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent
from chio_temporal import ChioTemporalAgent


@dataclass
class Order:
    order_id: str
    total_cents: int


@dataclass
class Deps:
    user: str


agent = Agent("test", name="orders", output_type=Order, deps_type=Deps)
chio = LocalChioClient()

on_prefect = ChioPrefectAgent(agent, capability_id="cap-orders", chio_client=chio)
assert_type(on_prefect, ChioPrefectAgent[Deps, Order])

on_temporal = ChioTemporalAgent(agent, capability_id="cap-orders", chio_client=chio)
assert_type(on_temporal, ChioTemporalAgent[Deps, Order])


async def prefect_output() -> None:
    result = await on_prefect.run("order A", deps=Deps("ann"))
    assert_type(result, AgentRunResult[Order])
    assert_type(result.output, Order)
    as_text = await on_prefect.run("order A", deps=Deps("ann"), output_type=str)
    assert_type(as_text.output, str)


def prefect_output_sync() -> None:
    assert_type(on_prefect.run_sync("order A", deps=Deps("ann")).output, Order)


async def temporal_output() -> None:
    result = await on_temporal.run("order A", deps=Deps("ann"))
    assert_type(result.output, Order)
