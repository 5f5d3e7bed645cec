"""Money budgets on Prefect (issue 11, engines): metered model requests, task costs, failure hooks.

Real Prefect API (ephemeral), real embedded kernel, a scripted ``FunctionModel`` whose responses
carry a fixed usage, priced with ``model_prices=`` (genai-prices does not know a FunctionModel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant
from prefect import flow
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from chio_durable import report_cost
from chio_durable.agent import TokenPrice
from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent, chio_flow, chio_task
from chio_prefect.errors import ChioPermissionError, ChioPrefectConfigError

pytestmark = pytest.mark.prefect

MODEL = "function:answer:"
# $0.01 per token either way; max_tokens=100: each request holds $1.00 (100 cents) and, with 50
# output tokens, captures $0.50.
PRICE = TokenPrice(input_per_mtok=0, output_per_mtok=10_000)
USD_5 = MonetaryAmount(units=500, currency="USD")


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="budget-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


def holds(chio: LocalChioClient, cap: str) -> list[dict[str, Any]]:
    """The holds of the capability's allow receipts, in order."""
    found = []
    for receipt in chio.kernel.list_receipts(capability_id=cap):
        hold = chio.kernel.get_hold(receipt.id)
        if hold is not None:
            found.append(hold)
    return found


class Counting:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def answer(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        if self.fail:
            raise RuntimeError("model backend down")
        return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=20, output_tokens=50))

    def agent(self) -> Agent[None, str]:
        return Agent(FunctionModel(self.answer), name="spender", model_settings={"max_tokens": 100})


async def test_agent_stops_making_model_requests_when_its_usd_budget_runs_out(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-prefect", grant("model", max_total_cost=USD_5))
    model = Counting()
    governed = ChioPrefectAgent(model.agent(), capability_id=cap, chio_client=chio, model_prices={MODEL: PRICE})

    runs = 0
    with pytest.raises(PermissionError) as denied:
        for _ in range(20):  # separate runs (separate flow runs): the limit holds across them
            await governed.run("spend")
            runs += 1
    # Each request holds 100 cents and settles at 50: the 10th needs 450 + 100 > 500.
    assert (runs, model.calls) == (9, 9)
    assert "cost" in str(denied.value.__cause__) or "cost" in str(denied.value)
    found = holds(chio, cap)
    assert [h["state"] for h in found] == ["settled"] * 9
    assert sum(h["captured_units"] for h in found) == 450
    assert all(h["amount"] == {"units": 100, "currency": "USD"} for h in found)
    assert chio.kernel.verify_chain().ok


async def test_a_failed_agent_run_releases_its_open_hold(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-prefect-fail", grant("model", max_total_cost=USD_5))
    model = Counting(fail=True)
    governed = ChioPrefectAgent(model.agent(), capability_id=cap, chio_client=chio, model_prices={MODEL: PRICE})

    with pytest.raises(Exception, match="model backend down"):
        await governed.run("spend")

    found = holds(chio, cap)
    assert len(found) == 1 and found[0]["state"] == "released"  # the flow's on_failure hook
    assert found[0]["captured_units"] == 0


def test_task_retry_reuses_its_hold_and_settles_at_the_reported_cost(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-task", grant("search-srv", max_total_cost=USD_5))
    attempts: list[int] = []

    @chio_task(cost=lambda query: MonetaryAmount(units=40 if query == "big" else 10, currency="USD"), retries=2)
    def search(query: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("flaky backend")
        report_cost(MonetaryAmount(units=7, currency="USD"))
        return f"results for {query}"

    @chio_flow(capability_id=cap, tool_server="search-srv", chio_client=chio)
    def research() -> str:
        return search("big")

    assert research() == "results for big"
    assert len(attempts) == 2
    found = holds(chio, cap)
    assert len(found) == 1  # the retry got the same receipt: one hold, never a second
    assert found[0]["amount"] == {"units": 40, "currency": "USD"}
    assert (found[0]["state"], found[0]["captured_units"]) == ("settled", 7)
    assert chio.kernel.verify_chain().ok


def test_task_that_fails_for_good_releases_its_hold(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-task-fail", grant("search-srv", max_total_cost=USD_5))

    @chio_task(cost=MonetaryAmount(units=30, currency="USD"))
    def search(query: str) -> str:
        raise RuntimeError("backend gone")

    @chio_flow(capability_id=cap, tool_server="search-srv", chio_client=chio)
    def research() -> str:
        return search("q")

    with pytest.raises(RuntimeError, match="backend gone"):
        research()
    found = holds(chio, cap)
    assert [h["state"] for h in found] == ["released"]


def test_budget_denies_a_task_once_the_money_is_held_or_spent(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-task-deny", grant("search-srv", max_total_cost=MonetaryAmount(units=25, currency="USD")))

    @chio_task(cost=MonetaryAmount(units=10, currency="USD"))
    def search(query: str) -> str:
        return query

    @chio_flow(capability_id=cap, tool_server="search-srv", chio_client=chio)
    def research() -> list[str]:
        return [search("a"), search("b"), search("c")]

    with pytest.raises(ChioPermissionError, match="cost"):
        research()
    assert [h["captured_units"] for h in holds(chio, cap)] == [10, 10]


def test_task_cost_is_checked_at_decoration() -> None:
    with pytest.raises(ChioPrefectConfigError, match="MonetaryAmount"):

        @chio_task(cost=5)  # type: ignore[arg-type]
        def search(query: str) -> str:
            return query

    with pytest.raises(ChioPrefectConfigError, match=">= 0"):

        @chio_task(cost=MonetaryAmount(units=-1, currency="USD"))
        def fetch(query: str) -> str:
            return query


def test_report_cost_outside_a_costed_call_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a governed call"):
        report_cost(MonetaryAmount(units=1, currency="USD"))


def test_budget_holds_through_the_real_sidecar_over_http(chio_home: Path, sidecar_url: str) -> None:
    """Same limit with the kernel behind the sidecar (``SidecarClient``: costs and keys on the wire)."""
    from chio_kernel import Kernel, SidecarClient

    kernel = Kernel(data_dir=chio_home)  # the sidecar's own data directory
    kernel.create_capability(
        subject="budget-test",
        scope=ChioScope(grants=[grant("model", max_total_cost=MonetaryAmount(units=200, currency="USD"))]),
        capability_id="cap-budget-sidecar",
    )
    model = Counting()
    governed = ChioPrefectAgent(
        model.agent(), capability_id="cap-budget-sidecar", chio_client=SidecarClient(sidecar_url),
        model_prices={MODEL: PRICE},
    )
    runs = 0
    with pytest.raises(PermissionError):
        for _ in range(10):
            governed.run_sync("spend")
            runs += 1
    # holds of 100, settled at 50: 3 fit (100 + 100 <= 200 after 2), the 4th does not (150 + 100)
    assert (runs, model.calls) == (3, 3)
    states = [kernel.get_hold(r.id) for r in kernel.list_receipts(capability_id="cap-budget-sidecar")]
    assert [(h["state"], h["captured_units"]) for h in states if h is not None] == [("settled", 50)] * 3
    assert kernel.verify_chain().ok


async def test_a_retried_agent_flow_run_reuses_its_model_request_hold(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-prefect-retry", grant("model", max_total_cost=USD_5))
    model = Counting()
    real_answer = model.answer

    def fail_once(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if model.calls == 0:
            model.calls += 1
            raise RuntimeError("model backend hiccup")
        return real_answer(messages, info)

    agent = Agent(FunctionModel(fail_once, model_name=MODEL), name="spender", model_settings={"max_tokens": 100})
    governed = ChioPrefectAgent(
        agent, capability_id=cap, chio_client=chio, model_prices={MODEL: PRICE},
        flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    result = await governed.run("spend")

    assert result.output == "ok" and model.calls == 2
    found = holds(chio, cap)
    assert len(found) == 1  # the flow retry re-evaluated with the same key: same receipt, same hold
    assert (found[0]["state"], found[0]["captured_units"]) == ("settled", 50)


async def test_async_task_settles_at_its_declared_cost_when_it_reports_none(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-budget-async-task", grant("search-srv", max_total_cost=USD_5))

    @chio_task(cost=MonetaryAmount(units=12, currency="USD"))
    async def search(query: str) -> str:
        return query.upper()

    @chio_flow(capability_id=cap, tool_server="search-srv", chio_client=chio)
    async def research() -> str:
        return await search("q")

    assert await research() == "Q"
    assert [(h["state"], h["captured_units"]) for h in holds(chio, cap)] == [("settled", 12)]
