"""The governed agents the ChioTemporalAgent tests run (no tests here).

Kept out of the workflow module on purpose, as Temporal advises for anything with side effects: the
workflow module (``test_agent.py``) imports this one under ``workflow.unsafe.imports_passed_through()``,
so the sandbox does not re-execute it per workflow run and the agents, the kernel client and the
call counters below are the host's single instances.

The model is a scripted ``FunctionModel`` (no LLM): the prompt is a plan, one tool call per step,
``"lookup:A,refund:A"``; after the plan it answers with the tool results joined by ``" | "``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from datetime import timedelta
from typing import Any

from fastmcp import FastMCP
from pydantic_ai import Agent
from pydantic_ai.durable_exec.temporal import TemporalDurability
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig

from chio_temporal._agent import ChioTemporalAgent
from chio_temporal_kit import placeholder_client

CAPABILITY_ID = "cap-support"
CALLS: Counter[str] = Counter()
"""Real executions: ``model`` (scripted model calls) and one key per tool body that ran."""
SEEN_TOOLS: list[list[str]] = []
"""The tool names the model was offered, per model call."""
TOOL_RESULTS: list[Any] = []
"""Every tool-result part the model was given (``tool-return`` / ``retry-prompt``), in order."""

_ARG = {"lookup": "order_id", "refund": "order_id", "flaky": "order_id", "search_docs": "query"}


def scripted_support_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The scripted model (clearly not an LLM): follows the plan in the prompt, then summarises."""
    CALLS["model"] += 1
    SEEN_TOOLS.append([tool.name for tool in info.function_tools])
    prompt = next(
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart)
    )
    last = messages[-1] if messages else None
    if isinstance(last, ModelRequest):
        TOOL_RESULTS.extend(p for p in last.parts if p.part_kind in ("tool-return", "retry-prompt"))
    plan = [step.split(":", 1) for step in prompt.split(",") if ":" in step]
    step = sum(1 for message in messages if isinstance(message, ModelResponse))
    if step < len(plan):
        tool, arg = plan[step]
        return ModelResponse(parts=[ToolCallPart(tool, {_ARG[tool]: arg})])
    results = [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if part.part_kind in ("tool-return", "retry-prompt")
    ]
    return ModelResponse(parts=[TextPart(" | ".join(results) or "no tools")])


TOOL_RECEIPT_IDS: list[str | None] = []
"""``chio_durable.agent.current_receipt_id()`` as each ``lookup`` body saw it (in its activity)."""


async def lookup(order_id: str) -> str:
    """Look up an order."""
    from chio_durable.agent import current_receipt_id

    CALLS["lookup"] += 1
    TOOL_RECEIPT_IDS.append(current_receipt_id())
    return f"order {order_id}: shipped"


async def refund(order_id: str) -> str:
    """Refund an order."""
    CALLS["refund"] += 1
    return f"refunded {order_id}"


async def flaky(order_id: str) -> str:
    """Fails on its first attempt (a transient error), succeeds on the retry."""
    CALLS["flaky"] += 1
    if activity.info().attempt == 1:
        raise RuntimeError("transient failure, try again")
    return f"flaky ok {order_id}"


docs_server = FastMCP("docs")


@docs_server.tool
def search_docs(query: str) -> str:
    """Search the product docs."""
    CALLS["search_docs"] += 1
    return f"docs about {query}"


FAST_RETRIES = ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=3),
)

# One kernel client for the module; each test points the agents at its own kernel (use_kernel).
_placeholder = placeholder_client("chio-agent-app-")

# 1. A plain Agent: ChioTemporalAgent makes it durable (TemporalDurability) with these options.
support_agent = Agent(
    FunctionModel(scripted_support_model),
    name="support",
    tools=[lookup, refund, flaky],
    toolsets=[MCPToolset(docs_server, id="docs")],
)
governed_support = ChioTemporalAgent(
    support_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder, activity_config=FAST_RETRIES
)

# 2. Same agent shape, on_deny="raise".
strict_agent = Agent(FunctionModel(scripted_support_model), name="strict", tools=[lookup, refund])
governed_strict = ChioTemporalAgent(
    strict_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder, on_deny="raise", activity_config=FAST_RETRIES
)

# 3. An existing TemporalAgent (deprecated in pydantic-ai; the user's own warning, silenced here).
with warnings.catch_warnings():
    from pydantic_ai import PydanticAIDeprecationWarning
    from pydantic_ai.durable_exec.temporal import TemporalAgent

    warnings.simplefilter("ignore", PydanticAIDeprecationWarning)

    legacy_agent = TemporalAgent(  # pyright: ignore[reportDeprecated]
        Agent(FunctionModel(scripted_support_model), name="legacy", tools=[lookup]),
        activity_config=FAST_RETRIES,
    )

# 4. A durable agent that is never wrapped (no governance), for the replay-compatibility test.
bare_agent = Agent(
    FunctionModel(scripted_support_model),
    name="bare",
    tools=[lookup, refund],
    capabilities=[TemporalDurability(activity_config=FAST_RETRIES)],
)
# 4b. An agent the user made durable, then wrapped: the governance is put on it in place and its
#     durability bound again, so every route that registers its activities registers the evaluate
#     activity with them (its calls run governed on any worker).
user_durable_agent = Agent(
    FunctionModel(scripted_support_model),
    name="userdurable",
    tools=[lookup, refund],
    capabilities=[TemporalDurability(activity_config=FAST_RETRIES)],
)
governed_bare = ChioTemporalAgent(user_durable_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder)

ALL_GOVERNED = [governed_support, governed_strict, governed_bare]


def use_kernel(chio: Any, *governed: ChioTemporalAgent[Any, Any]) -> None:
    """Point governed agents at a test's kernel (the agents are module-level)."""
    for agent in governed or ALL_GOVERNED:
        agent.transport.use(chio)
        agent.interceptor.chio_client = chio
        agent.interceptor.sidecar_url = getattr(chio, "base_url", "embedded")

# 5. The existing TemporalAgent, governed (ChioTemporalAgent never enters a deprecated code path).
governed_legacy = ChioTemporalAgent(legacy_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder)
ALL_GOVERNED.append(governed_legacy)

# 6. A worker that also runs plain activities, governed the seed-001 way by workflow grants on the
#    same interceptor (govern_other_activities=True).


@activity.defn
async def audit_note(text: str) -> str:
    """A plain (non-agent) activity."""
    CALLS["audit_note"] += 1
    return f"noted {text}"


mixed_agent = Agent(FunctionModel(scripted_support_model), name="mixed", tools=[lookup])
governed_mixed = ChioTemporalAgent(
    mixed_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder, govern_other_activities=True
)
ALL_GOVERNED.append(governed_mixed)

# 7. Streamed model requests: with an event_stream_handler (a TemporalDurability option passed
#    through), model requests run in the `model_request_stream` activity.
STREAM_EVENTS: list[str] = []


async def scripted_support_stream(messages: list[ModelMessage], info: AgentInfo) -> Any:
    """The scripted model, streamed: the same answer as ``scripted_support_model``, as deltas."""
    import json

    from pydantic_ai.models.function import DeltaToolCall

    response = scripted_support_model(messages, info)
    part = response.parts[0]
    if isinstance(part, ToolCallPart):
        yield {0: DeltaToolCall(name=part.tool_name, json_args=json.dumps(part.args))}
    else:
        yield part.content


async def record_events(ctx: Any, events: Any) -> None:
    async for event in events:
        STREAM_EVENTS.append(event.event_kind)


streaming_agent = Agent(
    FunctionModel(scripted_support_model, stream_function=scripted_support_stream), name="streamer", tools=[lookup]
)
governed_streaming = ChioTemporalAgent(
    streaming_agent, capability_id=CAPABILITY_ID, chio_client=_placeholder, event_stream_handler=record_events
)
ALL_GOVERNED.append(governed_streaming)
