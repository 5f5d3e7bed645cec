"""The governed agents of the Temporal budget tests (no tests here; imported passed-through).

Scripted ``FunctionModel``s (no LLM) whose responses carry a fixed usage, priced with
``model_prices=`` (genai-prices does not know a FunctionModel): $0.01 per token, ``max_tokens=100``,
so each model request holds $1.00 and, with 50 output tokens, settles at $0.50.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from chio_sdk.models import MonetaryAmount
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig

from chio_durable import report_cost
from chio_durable.agent import COST_METADATA_KEY, TokenPrice
from chio_kernel import LocalChioClient
from chio_temporal import ChioTemporalAgent
from chio_temporal_kit import placeholder_client

CAPABILITY_ID = "cap-spend"
CALLS: Counter[str] = Counter()
PRICE = TokenPrice(input_per_mtok=0, output_per_mtok=10_000)


def spend_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    CALLS["spend"] += 1
    return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=20, output_tokens=50))


def broken_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    CALLS["broken"] += 1
    raise RuntimeError("model backend down")


RETRY_TWICE = ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=2),
)

_placeholder = placeholder_client("chio-budget-app-")

governed_spender = ChioTemporalAgent(
    Agent(FunctionModel(spend_model), name="spender", model_settings={"max_tokens": 100}),
    capability_id=CAPABILITY_ID,
    chio_client=_placeholder,
    model_prices={"function:spend_model:": PRICE},
    activity_config=RETRY_TWICE,
)

governed_broken = ChioTemporalAgent(
    Agent(FunctionModel(broken_model), name="broken", model_settings={"max_tokens": 100}),
    capability_id=CAPABILITY_ID,
    chio_client=_placeholder,
    model_prices={"function:broken_model:": PRICE},
    activity_config=RETRY_TWICE,
)

ALL = [governed_spender, governed_broken]


def use_kernel(chio: LocalChioClient) -> None:
    for governed in ALL:
        governed.transport.use(chio)  # what the governance activities evaluate with
        governed.interceptor.chio_client = chio


def shop_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    CALLS["shop"] += 1
    if any(getattr(p, "part_kind", None) == "tool-return" for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("bought")], usage=RequestUsage(input_tokens=20, output_tokens=10))
    return ModelResponse(parts=[ToolCallPart("buy", {"item": "book", "quantity": 3})], usage=RequestUsage(output_tokens=10))


def buy(item: str, quantity: int) -> str:
    """Buys; the shop billed a discount, which the hold settles at."""
    CALLS["buy"] += 1
    report_cost(MonetaryAmount(units=25, currency="USD"))
    return f"{quantity} x {item}"


governed_shopper = ChioTemporalAgent(
    Agent(
        FunctionModel(shop_model),
        name="shopper",
        model_settings={"max_tokens": 100},
        # Temporal serializes tool metadata: an amount fits there; a callable goes in tool_costs=.
        tools=[Tool(buy, metadata={COST_METADATA_KEY: MonetaryAmount(units=99, currency="USD")})],
    ),
    capability_id=CAPABILITY_ID,
    chio_client=_placeholder,
    model_prices={"function:shop_model:": PRICE},
    tool_costs={"buy": lambda item, quantity: MonetaryAmount(units=10 * quantity, currency="USD")},
    activity_config=RETRY_TWICE,
)

ALL.append(governed_shopper)
