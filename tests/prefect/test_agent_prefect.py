"""ChioPrefectAgent on a real Prefect API with the real embedded kernel and a scripted model.

The scripted ``FunctionModel`` counts real model calls and the tool counts real invocations, so
"served from cache" and "ran again" are observed, not assumed.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect import flow
from prefect.cache_policies import RUN_ID, CompoundCachePolicy
from prefect.context import FlowRunContext
from pydantic_ai import Agent
from pydantic_ai.durable_exec.prefect import DEFAULT_PYDANTIC_AI_CACHE_POLICY, PrefectDurability, TaskConfig
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect._agent import ChioPrefectAgent, with_receipt_cache_key
from chio_prefect.errors import ChioPrefectError

pytestmark = pytest.mark.prefect

MODEL = "function:model:stream"


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


@dataclass
class Script:
    """Model: call ``search`` once, then answer with its result. Tool: may fail its first call."""

    fail_first_tool_call: bool = False
    on_failure: Any = None
    model_calls: int = 0
    tool_calls: int = 0
    seen_tool_results: list[Any] = field(default_factory=list)

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.model_calls += 1
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            self.seen_tool_results.extend(p.content for p in returns)
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "durable agents"})])

    def search(self, query: str) -> str:
        self.tool_calls += 1
        if self.fail_first_tool_call and self.tool_calls == 1:
            if self.on_failure is not None:
                self.on_failure()
            raise RuntimeError("search backend hiccup")
        return f"3 results for {query}"

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        """The same script, streamed (pydantic-ai streams when an event stream handler is set)."""
        for i, part in enumerate(self.model(messages, info).parts):
            if isinstance(part, TextPart):
                yield part.content
            else:
                yield {i: DeltaToolCall(part.tool_name, part.args_as_json_str(), tool_call_id=part.tool_call_id)}

    def agent(self, name: str = "researcher") -> Agent[None, str]:
        return Agent(FunctionModel(self.model, stream_function=self.stream), name=name, tools=[self.search])


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="agent-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


def stored_ids(chio: LocalChioClient, cap: str) -> list[str]:
    return [r.id for r in chio.kernel.list_receipts(capability_id=cap)]


async def test_allowed_run_records_receipts_and_emits_allow_events(chio: LocalChioClient, captured_events: Any) -> None:
    cap = issue(chio, "cap-pa-allow", grant("model"), grant("researcher", "search"))
    script = Script()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)
    flow_runs: list[str] = []

    @flow
    async def research() -> Any:
        flow_runs.append(str(FlowRunContext.get().flow_run.id))
        return await governed.run("find durable agents")  # joins this flow

    from pydantic_ai._warnings import PydanticAIDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = await research()

    assert not [w for w in caught if issubclass(w.category, DeprecationWarning | PydanticAIDeprecationWarning)]
    assert result.output == "answer: 3 results for durable agents"
    assert (script.model_calls, script.tool_calls) == (2, 1)
    records = governed.receipts_of(result)
    assert [(r.call.label, r.allowed) for r in records] == [
        (f"model/{MODEL}", True),
        ("researcher/search", True),
        (f"model/{MODEL}", True),
    ]
    ids = governed.receipt_ids_of(result)
    assert ids == stored_ids(chio, cap)  # exactly these signed receipts, in order, nothing else

    events = captured_events.chio()
    assert [e.event for e in events] == ["chio.receipt.allow"] * 3
    assert [e.payload["receipt_id"] for e in events] == ids
    tool_event = events[1]
    assert tool_event.payload["tool_server"] == "researcher"
    assert tool_event.payload["tool_name"] == "search"
    assert tool_event.payload["capability_id"] == cap
    assert tool_event.payload["task_name"] == "Call Tool: search"
    assert tool_event.payload["verdict"] == "allow"
    assert tool_event.payload["timestamp"].endswith("Z")
    related = [r for r in tool_event.related if r.role == "flow-run"]
    assert related and related[0].id == f"prefect.flow-run.{flow_runs[0]}"


async def test_denied_tool_is_told_to_the_model_and_the_run_continues(
    chio: LocalChioClient, captured_events: Any
) -> None:
    cap = issue(chio, "cap-pa-tell", grant("model"))  # the tool is not granted
    script = Script()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    result = await governed.run("find durable agents")

    assert script.tool_calls == 0 and script.model_calls == 2
    assert "Permission denied" in script.seen_tool_results[0]
    assert "researcher/search" in result.output
    deny = governed.receipts_of(result)[1]
    assert not deny.allowed and deny.evaluation.guard == "scope"
    deny_events = [e for e in captured_events.chio() if e.event == "chio.receipt.deny"]
    assert len(deny_events) == 1
    payload = deny_events[0].payload
    assert payload["receipt_id"] == deny.receipt_id
    assert payload["guard"] == "scope" and payload["reason"] and payload["decision"]["verdict"] == "deny"


async def test_denied_tool_with_on_deny_raise_fails_with_permission_error(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-pa-raise", grant("model"))
    script = Script()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio, on_deny="raise")

    with pytest.raises(PermissionError) as info:
        await governed.run("find durable agents")

    assert script.tool_calls == 0 and script.model_calls == 1
    cause = info.value.__cause__
    assert isinstance(cause, ChioPrefectError)
    assert cause.guard == "scope" and cause.receipt_id in stored_ids(chio, cap)


def test_flow_retry_replays_cached_model_calls_with_the_same_receipts(chio: LocalChioClient) -> None:
    # max_invocations=2 on the model: a retry that charged the first model call again would be denied.
    cap = issue(chio, "cap-pa-retry", grant("model", max_invocations=2), grant("researcher", "search"))
    script = Script(fail_first_tool_call=True)
    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio,
        flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    result = governed.run_sync("find durable agents")

    assert result.output == "answer: 3 results for durable agents"
    assert script.tool_calls == 2  # failed once, ran again on the retry
    assert script.model_calls == 2  # the first model response came from the cache on the retry
    ids = governed.receipt_ids_of(result)
    # The retry re-evaluated the first model request and the tool call with the same idempotency
    # keys: the same receipts came back, so the store holds one receipt per call position.
    assert ids == stored_ids(chio, cap) and len(ids) == 3


def test_capability_revoked_between_attempts_stops_the_next_new_decision_and_every_new_flow_run(
    chio: LocalChioClient,
) -> None:
    cap = issue(chio, "cap-pa-revoke", grant("model"), grant("researcher", "search"))
    script = Script(fail_first_tool_call=True, on_failure=lambda: chio.kernel.revoke_capability(cap))
    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio,
        flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    with pytest.raises(PermissionError) as info:
        governed.run_sync("find durable agents")

    assert isinstance(info.value.__cause__, ChioPrefectError)
    assert info.value.__cause__.guard == "revocation"
    # The retried attempt replays the decisions its flow run recorded (the evaluation tasks are
    # cached per flow run): the first model response is served from the cache and the tool call,
    # allowed before the revocation, runs again under its receipt. The next NEW decision (the second
    # model request) is asked of the kernel and denied: that model call never runs.
    assert script.model_calls == 1
    assert script.tool_calls == 2
    receipts = chio.kernel.list_receipts(capability_id=cap)
    assert [r.decision.is_allowed for r in receipts] == [True, True, False]

    # A new flow run asks the kernel afresh: denied at its first call, nothing runs.
    with pytest.raises(PermissionError):
        governed.run_sync("find durable agents")
    assert (script.model_calls, script.tool_calls) == (1, 2)
    assert [r.decision.is_allowed for r in chio.kernel.list_receipts(capability_id=cap)] == [True, True, False, False]


def _no_run_id_policy() -> TaskConfig:
    # pydantic-ai's cache policy without RUN_ID: what issues #6903/#3883 are about.
    policies = [p for p in DEFAULT_PYDANTIC_AI_CACHE_POLICY.policies if p is not RUN_ID]
    assert len(policies) == len(DEFAULT_PYDANTIC_AI_CACHE_POLICY.policies) - 1
    return TaskConfig(cache_policy=CompoundCachePolicy(policies=policies))


async def test_two_runs_with_equal_inputs_share_no_cache(chio: LocalChioClient) -> None:
    # Baseline: the bare durable agent with that policy serves run 2 from run 1's cache.
    bare_script = Script()
    bare = Agent(
        FunctionModel(bare_script.model), name="bare-researcher", tools=[bare_script.search],
        capabilities=[PrefectDurability(model_task_config=_no_run_id_policy(), tool_task_config=_no_run_id_policy())],
    )

    @flow
    async def bare_run() -> Any:
        return await bare.run("same prompt")

    await bare_run()
    await bare_run()
    assert bare_script.model_calls == 2  # the second run made no model call at all

    cap = issue(chio, "cap-pa-shared", grant("model"), grant("researcher", "search"))
    script = Script()
    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio,
        model_task_config=_no_run_id_policy(), tool_task_config=_no_run_id_policy(),
    )
    first = await governed.run("same prompt")
    second = await governed.run("same prompt")

    assert script.model_calls == 4 and script.tool_calls == 2  # the second run really ran
    assert set(governed.receipt_ids_of(first)).isdisjoint(governed.receipt_ids_of(second))


def test_existing_prefect_agent_is_accepted_without_deprecation_warnings(chio: LocalChioClient) -> None:
    from pydantic_ai._warnings import PydanticAIDeprecationWarning
    from pydantic_ai.durable_exec.prefect import PrefectAgent

    cap = issue(chio, "cap-pa-legacy", grant("model"), grant("researcher", "search"))
    script = Script()
    flaky = {"left": 1}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if flaky["left"]:
            flaky["left"] -= 1
            raise ConnectionError("provider hiccup")  # the model task's retries=1 absorbs it
        return script.model(messages, info)

    with warnings.catch_warnings():
        # The user's own construction of the deprecated wrapper warns (pydantic-ai's warning class).
        warnings.simplefilter("ignore", PydanticAIDeprecationWarning)
        legacy = PrefectAgent(
            Agent(FunctionModel(model), name="researcher", tools=[script.search]),
            model_task_config=TaskConfig(retries=1, retry_delay_seconds=0),
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        governed = ChioPrefectAgent(legacy, capability_id=cap, chio_client=chio)
        result = governed.run_sync("find durable agents")

    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning | PydanticAIDeprecationWarning)]
    assert deprecations == [], [str(w.message) for w in deprecations]
    assert result.output == "answer: 3 results for durable agents"
    assert flaky["left"] == 0 and script.model_calls == 2  # the PrefectAgent's task config carried over
    assert len(governed.receipt_ids_of(result)) == 3


async def test_existing_prefect_agent_keeps_its_task_configs_and_gets_receipt_ids_in_its_cache_keys(
    chio: LocalChioClient,
) -> None:
    from pydantic_ai._warnings import PydanticAIDeprecationWarning
    from pydantic_ai.durable_exec.prefect import PrefectAgent

    cap = issue(chio, "cap-pa-legacy-keys", grant("model"), grant("researcher", "search"))
    script = Script(fail_first_tool_call=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticAIDeprecationWarning)
        # Caches that ignore the run id (pydantic-ai #6903/#3883): only the receipt id keeps runs apart.
        legacy = PrefectAgent(
            script.agent(),
            model_task_config=_no_run_id_policy(),
            tool_task_config=_no_run_id_policy(),
            tool_task_config_by_name={"search": TaskConfig(retries=1, retry_delay_seconds=0, **_no_run_id_policy())},
        )
    governed = ChioPrefectAgent(legacy, capability_id=cap, chio_client=chio)

    first = await governed.run("same prompt")
    assert first.output == "answer: 3 results for durable agents"
    assert script.tool_calls == 2  # the per-tool config (retries=1) carried over: the task retried the tool
    second = await governed.run("same prompt")

    assert second.output == first.output
    assert script.model_calls == 4 and script.tool_calls == 3  # run 2 was evaluated and ran: no shared cache
    assert len(governed.receipt_ids_of(first)) == 3 and len(governed.receipt_ids_of(second)) == 3
    assert set(governed.receipt_ids_of(first)).isdisjoint(governed.receipt_ids_of(second))


def test_receipt_id_joins_every_task_cache_policy() -> None:
    from prefect.cache_policies import NO_CACHE

    from chio_durable.agent import receipt_scope
    from chio_prefect._agent import RECEIPT_ID

    config = with_receipt_cache_key(None)
    assert RECEIPT_ID in config["cache_policy"].policies
    assert with_receipt_cache_key(TaskConfig(cache_policy=NO_CACHE))["cache_policy"] is NO_CACHE
    assert RECEIPT_ID.compute_key(None, {}, {}) is None  # outside a governed call: no contribution
    with receipt_scope("rcpt-a"):
        a = RECEIPT_ID.compute_key(None, {}, {})
    with receipt_scope("rcpt-b"):
        b = RECEIPT_ID.compute_key(None, {}, {})
    assert a and b and a != b


def test_wrong_arguments_say_what_to_pass(chio: LocalChioClient) -> None:
    from pydantic_ai.exceptions import UserError

    with pytest.raises(UserError, match="name="):
        ChioPrefectAgent(Agent(FunctionModel(Script().model)), capability_id="cap", chio_client=chio)
    with pytest.raises(UserError, match="model_task_config would be ignored"):
        ChioPrefectAgent(
            Agent(FunctionModel(Script().model), name="x", capabilities=[PrefectDurability()]),
            capability_id="cap", chio_client=chio, model_task_config=TaskConfig(retries=2),
        )
    with pytest.raises(TypeError, match="pydantic_ai Agent"):
        ChioPrefectAgent("researcher", capability_id="cap", chio_client=chio)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capability_id"):
        ChioPrefectAgent(Script().agent(), capability_id="", chio_client=chio)


def test_an_agent_built_with_prefect_durability_is_governed_and_its_retry_replays_the_decisions(
    chio: LocalChioClient,
) -> None:
    # max_invocations=1 on the tool: a second charge would be a deny.
    cap = issue(chio, "cap-pa-own-durability", grant("model"), grant("researcher", "search", max_invocations=1))
    script = Script(fail_first_tool_call=True)
    agent = Agent(
        FunctionModel(script.model), name="researcher", tools=[script.search],
        capabilities=[PrefectDurability(tool_task_config=TaskConfig(retries=0))],
    )
    governed = ChioPrefectAgent(
        agent, capability_id=cap, chio_client=chio, flow_options={"retries": 1, "retry_delay_seconds": 0}
    )
    assert governed.durability is None  # the agent's own PrefectDurability runs the tasks

    result = governed.run_sync("find durable agents")

    assert result.output == "answer: 3 results for durable agents"
    assert (script.model_calls, script.tool_calls) == (2, 2)  # the first model response came from the cache
    ids = governed.receipt_ids_of(result)
    assert ids == stored_ids(chio, cap) and len(ids) == 3
    receipts = chio.kernel.list_receipts(capability_id=cap)
    assert all(r.decision.is_allowed for r in receipts)


async def test_unreachable_sidecar_fails_closed(chio: LocalChioClient) -> None:
    from chio_sdk.client import ChioClient

    from chio_durable import KernelUnavailable

    script = Script()
    governed = ChioPrefectAgent(
        script.agent(), capability_id="cap-anything", chio_client=ChioClient("http://127.0.0.1:9", timeout=0.5)
    )
    with pytest.raises(KernelUnavailable, match="127.0.0.1:9"):
        await governed.run("find durable agents")
    assert script.model_calls == 0 and script.tool_calls == 0


async def test_prefect_options_pass_through(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-pa-options", grant("model"), grant("researcher", "search"))
    script = Script(fail_first_tool_call=True)
    events: list[str] = []

    async def handler(ctx: Any, stream: Any) -> None:
        async for event in stream:
            events.append(type(event).__name__)

    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio,
        # Per-tool task config: the tool task's own retry absorbs the failure, no flow retry needed.
        tool_task_config_by_name={"search": TaskConfig(retries=1, retry_delay_seconds=0)},
        event_stream_handler=handler,
    )
    result = await governed.run("find durable agents")

    assert result.output == "answer: 3 results for durable agents"
    assert script.tool_calls == 2 and script.model_calls == 2
    assert "FunctionToolCallEvent" in events and "FunctionToolResultEvent" in events
    assert len(governed.receipt_ids_of(result)) == 3


async def test_run_inside_a_user_flow_joins_it_and_its_retries_replay(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-pa-user-flow", grant("model"), grant("researcher", "search"))
    script = Script(fail_first_tool_call=True)
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)
    attempts: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    async def pipeline() -> Any:
        attempts.append(str(FlowRunContext.get().flow_run.id))
        return await governed.run("find durable agents")

    result = await pipeline()

    assert len(attempts) == 2 and attempts[0] == attempts[1]  # one flow run, retried; no subflow
    assert script.model_calls == 2 and script.tool_calls == 2
    assert governed.receipt_ids_of(result) == stored_ids(chio, cap)


def test_realtime_is_refused(chio: LocalChioClient) -> None:
    from pydantic_ai.exceptions import UserError

    governed = ChioPrefectAgent(Script().agent(), capability_id="cap-rt", chio_client=chio)
    with pytest.raises(UserError, match="realtime sessions"):
        governed.realtime("openai:gpt-realtime")
    with pytest.raises(UserError, match="realtime sessions"):
        governed._check_realtime_signaling()


async def test_output_function_is_governed(chio: LocalChioClient) -> None:
    from pydantic_ai import ToolOutput

    published: list[str] = []

    def publish(title: str) -> str:
        published.append(title)
        return f"published {title}"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"title": "t1"})])

    def agent() -> Agent[None, str]:
        return Agent(FunctionModel(model), name="writer", output_type=ToolOutput(publish))

    denied = ChioPrefectAgent(agent(), capability_id=issue(chio, "cap-pa-out-deny", grant("model")), chio_client=chio)
    with pytest.raises(PermissionError, match="writer/publish") as caught:
        await denied.run("x")
    assert isinstance(caught.value.__cause__, ChioPrefectError) and published == []

    allowed = ChioPrefectAgent(
        agent(), capability_id=issue(chio, "cap-pa-out-allow", grant("model"), grant("writer", "publish")),
        chio_client=chio,
    )
    result = await allowed.run("x")
    assert result.output == "published t1" and published == ["t1"]
    assert [r.call.kind for r in allowed.receipts_of(result)] == ["model", "output"]


async def test_receipt_ids_of_is_every_decision_of_the_run_once_with_a_told_deny_and_a_retry(
    chio: LocalChioClient,
) -> None:
    # Same meaning as ChioTemporalAgent.receipt_ids_of (tests/temporal/test_agent.py): every decision
    # on a call of the run, allow and deny, in order, each once.
    cap = issue(chio, "cap-pa-ids", grant("model"), grant("ids", "search"))  # no purge
    searches: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        step = sum(isinstance(m, ModelResponse) for m in messages)
        if step == 0:
            return ModelResponse(parts=[ToolCallPart("purge", {"what": "everything"})])
        if step == 1:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "durable agents"})])
        return ModelResponse(parts=[TextPart("done")])

    def search(query: str) -> str:
        searches.append(query)
        if len(searches) == 1:
            raise RuntimeError("search backend hiccup")  # the tool task's retries=1 absorbs it
        return "3 results"

    def purge(what: str) -> str:
        raise AssertionError("a denied tool never runs")

    governed = ChioPrefectAgent(
        Agent(FunctionModel(model), name="ids", tools=[search, purge]),
        capability_id=cap,
        chio_client=chio,
        tool_task_config=TaskConfig(retries=1, retry_delay_seconds=0),
    )
    result = await governed.run("clean up, then search")

    assert result.output == "done" and len(searches) == 2
    ids = governed.receipt_ids_of(result)
    assert ids == stored_ids(chio, cap)  # every decision in the chain, in its order, once
    receipts = [chio.kernel.get_receipt(rid) for rid in ids]
    assert [(r.tool_name, r.decision.is_allowed) for r in receipts] == [
        ("function:model:", True),
        ("purge", False),  # told to the model
        ("function:model:", True),
        ("search", True),  # retried once, one receipt
        ("function:model:", True),
    ]
