"""Money budgets on Temporal (issue 11, engines), on the real dev server with the embedded kernel.

A governed agent's model requests are metered (a hold each, settled at the actual usage), the USD
budget stops them across workflow runs, a retried model activity reuses its one hold, and a saga's
compensation releases the open hold exactly once through the release activity.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant
from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

import budget_app as app
from budget_workflows import GuardedWorkflow, SagaWorkflow, ShopWorkflow, SpendWorkflow
from chio_kernel import LocalChioClient
from chio_temporal import DENIED_ERROR_TYPE, release_holds_activity

pytestmark = pytest.mark.temporal


USD_5 = MonetaryAmount(units=500, currency="USD")


@pytest.fixture(scope="module")
async def client(temporal_env: Any) -> Client:
    target = temporal_env.client.service_client.config.target_host
    return await Client.connect(target, namespace=temporal_env.client.namespace, plugins=[PydanticAIPlugin()])


@pytest.fixture
async def chio(chio_home: Any) -> AsyncIterator[LocalChioClient]:
    async with LocalChioClient(data_dir=chio_home) as kernel:
        app.use_kernel(kernel)
        kernel.kernel.create_capability(
            subject="agent:spender",
            scope=ChioScope(
                grants=[
                    ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE], max_total_cost=USD_5),
                    ToolGrant(server_id="shopper", tool_name="buy", operations=[Operation.INVOKE], max_total_cost=USD_5),
                ]
            ),
            capability_id=app.CAPABILITY_ID,
        )
        yield kernel


@asynccontextmanager
async def worker(client: Client, chio: LocalChioClient) -> AsyncIterator[str]:
    task_queue = f"budget-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[SpendWorkflow, SagaWorkflow, GuardedWorkflow, ShopWorkflow],
        activities=[release_holds_activity(chio)],
        plugins=[governed.plugin for governed in app.ALL],
    ):
        yield task_queue


def holds(chio: LocalChioClient) -> list[dict[str, Any]]:
    found = []
    for receipt in chio.kernel.list_receipts(capability_id=app.CAPABILITY_ID):
        hold = chio.kernel.get_hold(receipt.id)
        if hold is not None:
            found.append(hold)
    return found


def budget_receipts(chio: LocalChioClient, op: str) -> list[Any]:
    return [r for r in chio.kernel.list_receipts() if r.tool_server == "chio.budget" and r.tool_name == op]


def denied(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if getattr(seen, "type", None) == DENIED_ERROR_TYPE:
            return True
        seen = seen.__cause__
    return False


async def test_agent_stops_making_model_requests_when_its_usd_budget_runs_out(client: Client, chio: LocalChioClient) -> None:
    before = app.CALLS["spend"]
    runs = 0
    async with worker(client, chio) as tq:
        with pytest.raises(WorkflowFailureError) as failure:
            for _ in range(20):  # one workflow per run: the limit holds across runs
                await client.execute_workflow(SpendWorkflow.run, "spend", id=f"spend-{uuid.uuid4().hex[:8]}", task_queue=tq)
                runs += 1
    assert denied(failure.value)
    # Each request holds 100 cents and settles at 50: the 10th needs 450 + 100 > 500.
    assert (runs, app.CALLS["spend"] - before) == (9, 9)
    found = holds(chio)
    assert [h["state"] for h in found] == ["settled"] * 9
    assert sum(h["captured_units"] for h in found) == 450
    assert chio.kernel.verify_chain().ok


async def test_saga_compensation_releases_the_retried_requests_one_hold_exactly_once(
    client: Client, chio: LocalChioClient
) -> None:
    before = app.CALLS["broken"]
    async with worker(client, chio) as tq:
        out = await client.execute_workflow(SagaWorkflow.run, "buy", id=f"saga-{uuid.uuid4().hex[:8]}", task_queue=tq)

    assert app.CALLS["broken"] - before == 2  # the model activity was retried once
    found = holds(chio)
    assert len(found) == 1  # the retry reused its hold (same receipt), never a second one
    hold = found[0]
    assert (hold["state"], hold["captured_units"]) == ("released", 0)
    assert out["first"] == [hold["receipt_id"]] and out["again"] == [hold["receipt_id"]]
    releases = budget_receipts(chio, "release")
    assert len(releases) == 1  # released exactly once: the second compensation got the same receipt
    assert chio.kernel.verify_chain().ok


async def test_a_failing_run_guarded_by_release_holds_on_failure_releases_and_still_fails(
    client: Client, chio: LocalChioClient
) -> None:
    async with worker(client, chio) as tq:
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(GuardedWorkflow.run, "buy", id=f"guarded-{uuid.uuid4().hex[:8]}", task_queue=tq)

    found = holds(chio)
    assert [(h["state"], h["captured_units"]) for h in found] == [("released", 0)]
    assert len(budget_receipts(chio, "release")) == 1


async def test_a_tool_with_a_cost_in_its_metadata_holds_and_settles_at_the_reported_cost(
    client: Client, chio: LocalChioClient
) -> None:
    async with worker(client, chio) as tq:
        out = await client.execute_workflow(ShopWorkflow.run, "buy", id=f"shop-{uuid.uuid4().hex[:8]}", task_queue=tq)

    assert out == "bought"
    found = holds(chio)
    assert [(h["amount"]["units"], h["state"], h["captured_units"]) for h in found] == [
        (100, "settled", 10),  # model request: 10 output tokens
        (30, "settled", 25),  # buy: declared 10 x 3, reported 25
        (100, "settled", 10),
    ]
    assert chio.kernel.verify_chain().ok


def test_tool_costs_are_read_from_metadata_and_checked_when_the_agent_is_built() -> None:
    from pydantic_ai import Agent, Tool
    from pydantic_ai.models.test import TestModel

    from chio_temporal import ChioTemporalAgent, ChioTemporalConfigError
    from chio_temporal._budgets import tool_costs_of

    def lookup(order: str) -> str:
        return order

    amount = MonetaryAmount(units=3, currency="USD")
    agent = Agent(TestModel(), name="costs", tools=[Tool(lookup, metadata={"chio_cost": amount})])
    assert tool_costs_of(agent) == {"lookup": amount}

    bad = Agent(TestModel(), name="bad-costs", tools=[Tool(lookup, metadata={"chio_cost": "3 dollars"})])
    with pytest.raises(ChioTemporalConfigError, match="MonetaryAmount"):
        ChioTemporalAgent(bad, capability_id="cap", chio_client=app._placeholder)
    with pytest.raises(ChioTemporalConfigError, match="tool_costs"):
        ChioTemporalAgent(agent, capability_id="cap", chio_client=app._placeholder, name="costs2", tool_costs={"lookup": -1})
