"""chio_durable budgets, engine-neutral: model prices (genai-prices and user prices), declared tool
costs in an agent's tool metadata, ``report_cost``, and ChioGovernance settling holds on a plain agent.

Kernel = the real embedded kernel; model = a scripted ``FunctionModel`` with a fixed usage.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.client import ChioClient
from chio_sdk.testing import allow_all
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from chio_durable import as_transport, report_cost, usd
from chio_durable.agent import COST_METADATA_KEY, DEFAULT_MAX_TOKENS, ChioGovernance, ModelMetering, TokenPrice
from chio_durable.agent._budget_hooks import can_declare_cost
from chio_kernel import LocalChioClient


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="core", scope=ChioScope(grants=list(grants)), capability_id=cap)
    return cap


def holds(chio: LocalChioClient, cap: str) -> list[dict[str, Any]]:
    return [h for r in chio.kernel.list_receipts(capability_id=cap) if (h := chio.kernel.get_hold(r.id)) is not None]


# --- prices ---------------------------------------------------------------------------------------


def test_genai_prices_price_a_known_model_by_its_token_limit() -> None:
    metering = ModelMetering()
    # gpt-4o: $2.50 in / $10 out per million tokens; the hold is the limit at the dearer rate, rounded up
    assert metering.estimate("gpt-4o", {"max_tokens": 1000}) == MonetaryAmount(units=1, currency="USD")
    assert metering.estimate("gpt-4o", {"max_tokens": 100_000}) == MonetaryAmount(units=100, currency="USD")
    assert metering.estimate("gpt-4o", None) == usd(Decimal(DEFAULT_MAX_TOKENS) * 10 / 1_000_000)
    actual = metering.actual("gpt-4o", RequestUsage(input_tokens=200_000, output_tokens=10_000))
    assert actual == MonetaryAmount(units=60, currency="USD")  # $0.50 + $0.10


def test_unknown_model_declares_no_cost_unless_the_user_prices_it() -> None:
    assert ModelMetering().estimate("function:answer:", {"max_tokens": 100}) is None
    priced = ModelMetering(prices={"function:answer:": TokenPrice(input_per_mtok=1, output_per_mtok="30000")})
    assert priced.estimate("function:answer:", {"max_tokens": 100}) == MonetaryAmount(units=300, currency="USD")
    by_callable = ModelMetering(prices=lambda name: TokenPrice(0, 10_000) if name == "test" else None, default_max_tokens=10)
    assert by_callable.estimate("test", {}) == MonetaryAmount(units=10, currency="USD")
    assert by_callable.estimate("gpt-4o", {"max_tokens": 1000}) == MonetaryAmount(units=1, currency="USD")  # genai-prices
    assert ModelMetering(use_genai_prices=False).estimate("gpt-4o", {}) is None


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: TokenPrice(input_per_mtok=-1, output_per_mtok=1), ValueError),
        (lambda: TokenPrice(input_per_mtok="lots", output_per_mtok=1), ValueError),
        (lambda: TokenPrice(input_per_mtok=float("nan"), output_per_mtok=1), ValueError),
        (lambda: ModelMetering(prices={"m": 3.0}), TypeError),  # type: ignore[dict-item]
        (lambda: ModelMetering(prices=42), TypeError),  # type: ignore[arg-type]
        (lambda: ModelMetering(default_max_tokens=0), ValueError),
        (lambda: ChioGovernance(capability_id="c", chio_client=allow_all(), model_prices=7), TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_prices_are_refused_at_construction(make: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="TokenPrice|model prices|default_max_tokens"):
        make()


def test_a_stock_chio_client_declares_no_cost() -> None:
    # it cannot send one: a grant with cost limits then denies (fail closed), others allow as before
    assert not can_declare_cost(as_transport(ChioClient("http://127.0.0.1:9")))


# --- ChioGovernance on a plain agent ----------------------------------------------------------------


class Script:
    def __init__(self) -> None:
        self.calls = 0

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")], usage=RequestUsage(input_tokens=10, output_tokens=30))
        return ModelResponse(
            parts=[ToolCallPart("fetch", {"url": "https://example.com/a", "pages": 3})],
            usage=RequestUsage(input_tokens=10, output_tokens=20),
        )


def fetch(url: str, pages: int) -> str:
    if pages > 2:
        report_cost(MonetaryAmount(units=2, currency="USD"))  # the fetcher billed less than declared
    return f"{pages} pages of {url}"


async def test_governance_holds_and_settles_model_requests_and_tool_calls(chio: LocalChioClient) -> None:
    cap = issue(
        chio,
        "cap-core-budget",
        grant("model", max_total_cost=MonetaryAmount(units=1000, currency="USD")),
        grant("shop", "fetch", max_total_cost=MonetaryAmount(units=100, currency="USD")),
    )
    script = Script()
    tool = Tool(fetch, metadata={COST_METADATA_KEY: lambda url, pages: MonetaryAmount(units=5 * pages, currency="USD")})
    governance = ChioGovernance(
        capability_id=cap, chio_client=chio, model_prices={"function:model:": TokenPrice(0, 10_000)}
    )
    agent = Agent(FunctionModel(script.model), name="shop", tools=[tool], model_settings={"max_tokens": 100},
                  capabilities=[governance])

    result = await agent.run("buy")

    assert result.output == "done"
    found = holds(chio, cap)
    assert [(h["amount"]["units"], h["state"], h["captured_units"]) for h in found] == [
        (100, "settled", 20),  # model request 1: 20 output tokens at a cent each
        (15, "settled", 2),  # the tool: declared 5 x 3 pages, reported 2
        (100, "settled", 30),  # model request 2
    ]
    assert [h["receipt_id"] for h in found] == governance.receipt_ids_of(result)
    assert chio.kernel.verify_chain().ok


async def test_tool_cost_over_the_budget_is_told_to_the_model(chio: LocalChioClient) -> None:
    cap = issue(
        chio,
        "cap-core-tool-deny",
        grant("model"),
        grant("shop", "fetch", max_total_cost=MonetaryAmount(units=10, currency="USD")),
    )
    script = Script()
    tool = Tool(fetch, metadata={COST_METADATA_KEY: MonetaryAmount(units=11, currency="USD")})
    governance = ChioGovernance(capability_id=cap, chio_client=chio)  # the model is priced nowhere: no cost
    agent = Agent(FunctionModel(script.model), name="shop", tools=[tool], capabilities=[governance])

    result = await agent.run("buy")

    records = governance.receipts_of(result)
    assert [(r.call.label, r.allowed) for r in records] == [
        ("model/function:model:", True), ("shop/fetch", False), ("model/function:model:", True),
    ]
    assert records[1].evaluation.guard == "cost"
    assert holds(chio, cap) == []  # nothing held: the model declared no cost, the tool was denied


async def test_bad_tool_cost_metadata_fails_the_call_clearly(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-bad-meta", grant("model"), grant("shop", "fetch"))
    tool = Tool(fetch, metadata={COST_METADATA_KEY: "five dollars"})
    agent = Agent(FunctionModel(Script().model), name="shop", tools=[tool],
                  capabilities=[ChioGovernance(capability_id=cap, chio_client=chio)])
    with pytest.raises(TypeError, match="MonetaryAmount"):
        await agent.run("buy")
