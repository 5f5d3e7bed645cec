"""chio_durable.agent: the engine-neutral mapping, deny handling and ChioGovernance on a plain agent.

Kernel = the real embedded kernel (``LocalChioClient``); model = a scripted ``FunctionModel`` that
counts its real calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.realtime.model import RealtimeModel
from pydantic_ai.toolsets import AbstractToolset, CombinedToolset, FunctionToolset

from chio_durable import KernelUnavailable
from chio_durable.agent import (
    CallMapper,
    ChioGovernance,
    GovernanceDenied,
    GovernedCall,
    denied_tool_message,
    messages_digest,
)
from chio_kernel import LocalChioClient


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


@dataclass
class Script:
    """A scripted model: calls ``search`` once, then answers with what the tool returned."""

    model_calls: int = 0
    tool_calls: int = 0
    seen_tool_results: list[Any] = field(default_factory=list)

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.model_calls += 1
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            self.seen_tool_results.extend(p.content for p in returns)
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "durable agents"}, tool_call_id="call-search-1")])

    def search(self, query: str) -> str:
        self.tool_calls += 1
        return f"3 results for {query}"


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="agent-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


# --- mapping defaults ----------------------------------------------------------------------------


def test_default_mapping_of_each_call_kind() -> None:
    mapper = CallMapper()
    messages = [ModelRequest(parts=[UserPromptPart("hello")])]
    model = mapper.model_request(
        agent_name="researcher", model_name="gpt-4o", messages=messages, model_settings={"temperature": 0.0}
    )
    assert (model.kind, model.tool_server, model.tool_name) == ("model", "model", "gpt-4o")
    assert set(model.parameters) == {"agent", "message_count", "messages_sha256", "settings_sha256"}
    assert model.parameters["agent"] == "researcher"
    assert model.parameters["message_count"] == 1
    assert len(model.parameters["messages_sha256"]) == 64
    assert len(model.parameters["settings_sha256"]) == 64
    assert mapper.model_request(agent_name=None, model_name="m", messages=[], model_settings=None).parameters[
        "settings_sha256"
    ] is None

    own = mapper.function_tool(toolset_id="<agent>", agent_name="researcher", tool_name="search", args={"q": "x"})
    assert own == GovernedCall("tool", "researcher", "search", {"q": "x"})
    other = mapper.function_tool(toolset_id="web", agent_name="researcher", tool_name="fetch", args={"url": "u"})
    assert (other.tool_server, other.tool_name) == ("web", "fetch")
    assert mapper.mcp_tool(server_id="notes", tool_name="read", args={"path": "/a"}) == GovernedCall(
        "mcp", "notes", "read", {"path": "/a"}
    )
    assert mapper.mcp_list_tools(server_id="notes") == GovernedCall("mcp_list", "notes", "list_tools", {})


def test_messages_digest_ignores_per_attempt_fields_only() -> None:
    t1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    t2 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    a = [ModelRequest(parts=[UserPromptPart("hi", timestamp=t1)], timestamp=t1, run_id="run-a")]
    b = [ModelRequest(parts=[UserPromptPart("hi", timestamp=t2)], timestamp=t2, run_id="run-b")]
    c = [ModelRequest(parts=[UserPromptPart("hi there", timestamp=t1)], timestamp=t1, run_id="run-a")]
    assert messages_digest(a) == messages_digest(b)  # a retried attempt: same digest
    assert messages_digest(a) != messages_digest(c)  # different content: different digest


def test_denied_tool_message_names_the_call_guard_and_receipt() -> None:
    from chio_durable import Evaluation

    evaluation = Evaluation(
        allowed=False, receipt_id="rcpt-1", capability_id="cap", tool_server="web", tool_name="fetch",
        guard="scope", reason="fetch is not granted",
    )
    text = denied_tool_message(evaluation)
    for part in ("web/fetch", "scope", "fetch is not granted", "rcpt-1", "not run"):
        assert part in text


def test_bad_arguments_say_what_to_pass(chio: LocalChioClient) -> None:
    with pytest.raises(ValueError, match="capability_id="):
        ChioGovernance(capability_id="", chio_client=chio)
    with pytest.raises(TypeError, match="LocalChioClient"):
        ChioGovernance(capability_id="cap", chio_client=object())
    with pytest.raises(ValueError, match="tell_model"):
        ChioGovernance(capability_id="cap", chio_client=chio, on_deny="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CallMapper"):
        ChioGovernance(capability_id="cap", chio_client=chio, mapper=lambda **kw: None)  # type: ignore[arg-type]


# --- ChioGovernance on a plain (non-durable) agent -------------------------------------------------


async def test_allowed_run_records_a_receipt_per_call(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-allow", grant("model"), grant("researcher", "search"))
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio)
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    result = await agent.run("find durable agents")

    assert result.output == "answer: 3 results for durable agents"
    assert (script.model_calls, script.tool_calls) == (2, 1)
    records = governance.receipts_of(result)
    assert [(r.call.kind, r.call.label, r.allowed) for r in records] == [
        ("model", "model/function:model:", True),
        ("tool", "researcher/search", True),
        ("model", "model/function:model:", True),
    ]
    ids = governance.receipt_ids_of(result)
    assert len(set(ids)) == 3
    for record in records:  # each is a real signed receipt in the kernel's store
        stored = chio.kernel.get_receipt(record.receipt_id)
        assert stored is not None and stored.decision.is_allowed
        assert (stored.tool_server, stored.tool_name) == (record.call.tool_server, record.call.tool_name)
    assert chio.kernel.get_receipt(ids[1]).action.parameters == {"query": "durable agents"}


async def test_denied_tool_tells_the_model_and_the_run_continues(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-tell", grant("model"))  # no grant for the tool
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio)
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    result = await agent.run("find durable agents")

    assert script.tool_calls == 0  # the tool body never ran
    assert script.model_calls == 2  # the model was asked again, with the denial as the tool result
    told = script.seen_tool_results[0]
    assert "Permission denied" in told and "researcher/search" in told and "scope" in told
    deny = governance.receipts_of(result)[1]
    assert not deny.allowed and deny.evaluation.guard == "scope"
    assert deny.receipt_id in told
    assert not chio.kernel.get_receipt(deny.receipt_id).decision.is_allowed


async def test_denied_tool_with_on_deny_raise_fails_the_run(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-raise", grant("model"))
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio, on_deny="raise")
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    with pytest.raises(PermissionError) as info:
        await agent.run("find durable agents")

    assert script.tool_calls == 0 and script.model_calls == 1
    cause = info.value.__cause__
    assert isinstance(cause, GovernanceDenied)
    assert cause.guard == "scope" and cause.receipt_id and cause.call.label == "researcher/search"


async def test_denied_model_request_always_fails_the_run(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-model-deny", grant("researcher", "search"))  # no model grant
    script = Script()
    agent = Agent(
        FunctionModel(script.model),
        name="researcher",
        tools=[script.search],
        capabilities=[ChioGovernance(capability_id=cap, chio_client=chio)],  # tell_model: still fails
    )
    with pytest.raises(PermissionError, match="model") as info:
        await agent.run("hi")
    assert script.model_calls == 0
    assert info.value.__cause__.guard == "scope"


async def test_kernel_unavailable_fails_closed(chio: LocalChioClient) -> None:
    class Broken:
        base_url = "http://127.0.0.1:1"

        async def evaluate_tool_call(self, **kwargs: Any) -> Any:
            raise ConnectionError("connection refused")

    script = Script()
    agent = Agent(
        FunctionModel(script.model),
        name="researcher",
        tools=[script.search],
        capabilities=[ChioGovernance(capability_id="cap-x", chio_client=Broken())],
    )
    with pytest.raises(KernelUnavailable, match="127.0.0.1:1"):
        await agent.run("hi")
    assert script.model_calls == 0


async def test_overriding_the_mapper_changes_what_is_evaluated(chio: LocalChioClient) -> None:
    class ByTeam(CallMapper):
        def model_request(self, **kwargs: Any) -> GovernedCall:
            call = super().model_request(**kwargs)
            return GovernedCall("model", "llm-gateway", "chat", call.parameters)

        def function_tool(self, *, tool_name: str, args: Any, **kwargs: Any) -> GovernedCall:
            return GovernedCall("tool", "team-tools", tool_name, {"q": args["query"]})

    # Granted under the custom names only: the default names would be denied.
    cap = issue(chio, "cap-core-mapper", grant("llm-gateway", "chat"), grant("team-tools", "search"))
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio, mapper=ByTeam(), on_deny="raise")
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    result = await agent.run("x")

    assert script.tool_calls == 1
    labels = [r.call.label for r in governance.receipts_of(result)]
    assert labels == ["llm-gateway/chat", "team-tools/search", "llm-gateway/chat"]
    assert chio.kernel.get_receipt(governance.receipt_ids_of(result)[1]).action.parameters == {
        "q": "durable agents"
    }


async def test_toolset_id_is_the_server_of_its_tools(chio: LocalChioClient) -> None:
    script = Script()
    web = FunctionToolset([script.search], id="web")
    cap = issue(chio, "cap-core-toolset", grant("model"), grant("web", "search"))
    governance = ChioGovernance(capability_id=cap, chio_client=chio, on_deny="raise")
    agent = Agent(FunctionModel(script.model), name="researcher", toolsets=[web], capabilities=[governance])

    result = await agent.run("x")

    assert script.tool_calls == 1
    assert governance.receipts_of(result)[1].call.label == "web/search"


async def test_two_runs_get_different_receipts_and_a_rerun_id_reuses_them(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-idem", grant("model"), grant("researcher", "search"))
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio)
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    first = await agent.run("same prompt")
    second = await agent.run("same prompt")
    assert set(governance.receipt_ids_of(first)).isdisjoint(governance.receipt_ids_of(second))

    # The same run identity (what a durable engine supplies on a retry) gets the same receipts back.
    pinned = ChioGovernance(capability_id=cap, chio_client=chio, run_identity=lambda ctx: "engine-run-1")
    agent2 = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[pinned])
    a = await agent2.run("same prompt")
    b = await agent2.run("same prompt")
    assert pinned.receipt_ids_of(a) == pinned.receipt_ids_of(b)


def test_receipts_of_needs_a_result_or_run_id(chio: LocalChioClient) -> None:
    governance = ChioGovernance(capability_id="cap", chio_client=chio)
    assert governance.receipts_of("no-such-run") == []
    with pytest.raises(TypeError, match="run id"):
        governance.receipts_of(42)


async def test_concurrent_runs_keep_their_own_receipts(chio: LocalChioClient) -> None:
    import asyncio

    cap = issue(chio, "cap-core-concurrent", grant("model"), grant("researcher", "search"))
    script = Script()
    governance = ChioGovernance(capability_id=cap, chio_client=chio)
    agent = Agent(FunctionModel(script.model), name="researcher", tools=[script.search], capabilities=[governance])

    results = await asyncio.gather(*(agent.run(f"prompt {i}") for i in range(4)))

    all_ids = [governance.receipt_ids_of(r) for r in results]
    assert all(len(ids) == 3 for ids in all_ids)
    assert len({i for ids in all_ids for i in ids}) == 12  # no receipt shared or lost between runs
    for result in results:
        stored = [chio.kernel.get_receipt(i) for i in governance.receipt_ids_of(result)]
        assert [(r.tool_server, r.tool_name) for r in stored] == [
            ("model", "function:model:"), ("researcher", "search"), ("model", "function:model:")
        ]


async def test_kernel_lost_mid_run_stops_the_tool_even_in_tell_model_mode(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-lost", grant("model"), grant("researcher", "search"))

    class FlakyRemote:
        """Answers like a remote client for one call, then the connection is gone."""

        base_url = "http://127.0.0.1:9090"

        def __init__(self) -> None:
            self.calls = 0

        async def evaluate_tool_call(self, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError("sidecar went away")
            return chio.kernel.evaluate(
                kwargs["capability_id"], kwargs["tool_server"], kwargs["tool_name"], kwargs["parameters"]
            )

    script = Script()
    agent = Agent(
        FunctionModel(script.model),
        name="researcher",
        tools=[script.search],
        capabilities=[ChioGovernance(capability_id=cap, chio_client=FlakyRemote())],
    )
    with pytest.raises(KernelUnavailable, match="sidecar went away"):
        await agent.run("x")
    assert script.model_calls == 1 and script.tool_calls == 0  # no decision, no tool call


def test_settings_digest_is_stable_for_objects_without_a_json_form() -> None:
    from chio_durable.agent import settings_digest

    class Opaque:
        pass

    assert settings_digest({"extra": Opaque()}) == settings_digest({"extra": Opaque()})
    assert settings_digest({"temperature": 0.1}) != settings_digest({"temperature": 0.2})


# --- toolsets governance cannot open are governed whole (fail closed) ------------------------------


class Container(AbstractToolset[Any]):
    """A custom toolset holding several toolsets: neither a CombinedToolset nor a WrapperToolset."""

    def __init__(self, *members: AbstractToolset[Any], id: str | None = None) -> None:
        self.members = list(members)
        self._id = id
        self._inner = CombinedToolset(self.members)

    @property
    def id(self) -> str | None:
        return self._id

    async def get_tools(self, ctx: Any) -> dict[str, Any]:
        return await self._inner.get_tools(ctx)

    async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: Any, tool: Any) -> Any:
        return await self._inner.call_tool(name, tool_args, ctx, tool)

    def apply(self, visitor: Any) -> None:
        for member in self.members:
            member.apply(visitor)


def _danger_agent(ran: list[str], governance: ChioGovernance, container_id: str | None) -> Agent[None, str]:
    def danger() -> str:
        ran.append("danger")
        return "boom"

    def safe() -> str:
        ran.append("safe")
        return "ok"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("danger", {}, tool_call_id="call-danger")])

    container = Container(FunctionToolset([danger]), FunctionToolset([safe]), id=container_id)
    return Agent(FunctionModel(model), name="helper", toolsets=[container], capabilities=[governance])


async def test_unknown_container_toolset_is_governed_as_a_whole(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-container", grant("model"))  # grants only model/*
    seen: list[Any] = []
    governance = ChioGovernance(
        capability_id=cap, chio_client=chio, on_deny="raise", on_evaluation=lambda record, ctx: seen.append(record)
    )
    ran: list[str] = []
    with pytest.raises(PermissionError):
        await _danger_agent(ran, governance, container_id=None).run("x")
    assert ran == []  # it ran unchecked before: the container was returned ungoverned
    assert len(seen) == 2
    denied = seen[1]
    assert not denied.allowed and denied.call.label == "Container/danger"  # its label, not the agent's name

    # a grant for the container (by id) lets its tools run, each still evaluated
    cap2 = issue(chio, "cap-core-container-2", grant("model"), grant("tools-box", "danger"))
    governance2 = ChioGovernance(capability_id=cap2, chio_client=chio, on_deny="raise")
    result = await _danger_agent(ran, governance2, container_id="tools-box").run("x")
    assert ran == ["danger"]
    labels = [r.call.label for r in governance2.receipts_of(result)]
    assert labels[1] == "tools-box/danger" and all(r.allowed for r in governance2.receipts_of(result))


# --- one canonical JSON: the kernel's (chio_kernel.canonical) --------------------------------------


def test_digests_use_the_kernels_canonical_json() -> None:
    import hashlib

    from chio_durable.agent._mapping import canonical_json, parameter_hash
    from chio_durable._params import digest
    from chio_kernel.canonical import canonical_json_str
    from chio_durable import GovernedCall

    params = {"q": "café 𝄞", "whole": 1.0, "big": 1e21, "n": [3, 2.5], "z": None}
    kernel_text = canonical_json_str(params)
    assert canonical_json(params) == kernel_text  # ECMAScript numbers: 1.0 -> 1, 1e21 -> 1e+21
    assert parameter_hash(params) == hashlib.sha256(kernel_text.encode()).hexdigest()
    # every layer's call type (a Prefect task attempt too) hashes with that one canonical JSON, for its
    # idempotency key and for checking the receipt's action.parameter_hash alike
    task_call = GovernedCall("task", "srv", "search", params)
    assert task_call.parameter_hash == task_call.wire_parameter_hash == digest(params) == parameter_hash(params)
    assert digest(params) == parameter_hash(params)

    class Opaque:
        pass

    # objects with no JSON form: their repr, memory address dropped, so two attempts hash alike
    assert digest({"o": Opaque()}) == digest({"o": Opaque()})
    # no canonical form (the kernel refuses such a call): still a stable digest, distinct per value
    assert digest({"x": float("nan")}) == digest({"x": float("nan")}) != digest({"x": float("inf")})


# --- realtime sessions are refused (their model traffic runs no model-request hooks) ---------------


class FakeRealtime(RealtimeModel):
    """A realtime model that records whether a session reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = 0

    @property
    def model_name(self) -> str:
        return "fake-realtime"

    @property
    def system(self) -> str:
        return "fake"

    @asynccontextmanager
    async def connect(self, **_kwargs: Any) -> AsyncIterator[Any]:
        self.connected += 1
        raise RuntimeError("connected to the realtime model")
        yield  # pragma: no cover


async def test_realtime_session_is_refused_before_it_connects(chio: LocalChioClient) -> None:
    from pydantic_ai.exceptions import UserError

    ungoverned = FakeRealtime()
    with pytest.raises(RuntimeError, match="connected"):  # what happens without governance
        async with Agent(name="voice").realtime(ungoverned).session():
            pass
    assert ungoverned.connected == 1

    model = FakeRealtime()
    agent = Agent(name="voice", capabilities=[ChioGovernance(capability_id="cap-rt", chio_client=chio)])
    with pytest.raises(UserError, match="realtime sessions"):
        async with agent.realtime(model).session():
            pass
    assert model.connected == 0


# --- output functions are governed (wrap_output_process) -------------------------------------------


def _output_agent(ran: list[dict[str, Any]], governance: ChioGovernance) -> Agent[None, str]:
    from pydantic_ai import ToolOutput

    def publish(title: str, body: str) -> str:
        ran.append({"title": title, "body": body})
        return f"published {title}"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tool = info.output_tools[0]
        return ModelResponse(parts=[ToolCallPart(tool.name, {"title": "t1", "body": "b"}, tool_call_id="out-1")])

    return Agent(FunctionModel(model), name="writer", output_type=ToolOutput(publish), capabilities=[governance])


async def test_output_function_is_evaluated_before_it_runs(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-core-output-deny", grant("model"))  # no grant for writer/publish
    seen: list[Any] = []
    governance = ChioGovernance(
        capability_id=cap, chio_client=chio, on_evaluation=lambda record, ctx: seen.append(record)
    )
    ran: list[dict[str, Any]] = []
    with pytest.raises(PermissionError, match="writer/publish"):
        await _output_agent(ran, governance).run("x")
    assert ran == []  # it ran unchecked before: the output toolset is added after get_wrapper_toolset
    assert [r.call.kind for r in seen] == ["model", "output"] and seen[-1].call.label == "writer/publish"
    assert seen[-1].call.kind == "output" and seen[-1].call.parameters == {"title": "t1", "body": "b"}
    assert not seen[-1].allowed

    cap2 = issue(chio, "cap-core-output-allow", grant("model"), grant("writer", "publish"))
    governance2 = ChioGovernance(capability_id=cap2, chio_client=chio)
    result = await _output_agent(ran, governance2).run("x")
    assert result.output == "published t1" and ran == [{"title": "t1", "body": "b"}]
    records = governance2.receipts_of(result)
    assert records[-1].call.label == "writer/publish" and records[-1].allowed and records[-1].receipt_id
