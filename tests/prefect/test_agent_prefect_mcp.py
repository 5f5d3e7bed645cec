"""ChioPrefectAgent with an in-process MCP server (FastMCP in memory): listing and calls governed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from fastmcp import FastMCP
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect._agent import ChioPrefectAgent
from chio_prefect.errors import ChioPrefectError

pytestmark = pytest.mark.prefect


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


@dataclass
class NotesScript:
    """An MCP server with one tool, and a model that calls it if it can see it."""

    fail_answer_once: bool = False
    mcp_calls: int = 0
    model_calls: int = 0
    tools_seen: list[list[str]] = field(default_factory=list)
    seen_tool_results: list[Any] = field(default_factory=list)

    def server(self) -> FastMCP:
        server = FastMCP("notes")

        @server.tool
        def read_note(name: str) -> str:
            self.mcp_calls += 1
            return f"note {name}: ship it"

        return server

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.model_calls += 1
        self.tools_seen.append(sorted(t.name for t in info.function_tools))
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            if self.fail_answer_once:
                self.fail_answer_once = False
                raise ConnectionError("provider hiccup after the MCP call")
            self.seen_tool_results.extend(p.content for p in returns)
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        if "read_note" not in self.tools_seen[-1]:
            return ModelResponse(parts=[TextPart("I have no tools")])
        return ModelResponse(parts=[ToolCallPart("read_note", {"name": "todo"}, tool_call_id="call-note-1")])

    def agent(self) -> Agent[None, str]:
        return Agent(FunctionModel(self.model), name="notes-agent", toolsets=[MCPToolset(self.server(), id="notes")])


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="agent-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


async def test_mcp_listing_and_call_are_governed(chio: LocalChioClient, captured_events: Any) -> None:
    cap = issue(chio, "cap-mcp-allow", grant("model"), grant("notes"))
    script = NotesScript()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    result = await governed.run("what is on my todo note?")

    assert result.output == "answer: note todo: ship it"
    assert script.mcp_calls == 1
    kinds = [(r.call.kind, r.call.label) for r in governed.receipts_of(result)]
    # Each step lists the server's tools (a governed call of its own) before the model request.
    assert kinds == [
        ("mcp_list", "notes/list_tools"),
        ("model", "model/function:model:"),
        ("mcp", "notes/read_note"),
        ("mcp_list", "notes/list_tools"),
        ("model", "model/function:model:"),
    ]
    records = governed.receipts_of(result)
    # The listing is re-checked at every step but is one call position per run: one receipt.
    assert records[0].receipt_id == records[3].receipt_id
    assert len(chio.kernel.list_receipts(capability_id=cap)) == 4
    call = records[2]
    assert chio.kernel.get_receipt(call.receipt_id).action.parameters == {"name": "todo"}
    names = {(e.payload["tool_server"], e.payload["tool_name"], e.payload["task_name"]) for e in captured_events.chio()}
    assert ("notes", "read_note", "Call MCP Tool: read_note") in names
    assert ("notes", "list_tools", "Get MCP Tools: notes") in names


async def test_denied_mcp_call_is_told_to_the_model(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-mcp-deny-call", grant("model"), grant("notes", "list_tools"))
    script = NotesScript()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    result = await governed.run("what is on my todo note?")

    assert script.mcp_calls == 0  # the MCP server never saw the call
    assert "Permission denied" in script.seen_tool_results[0] and "notes/read_note" in script.seen_tool_results[0]
    denied = [r for r in governed.receipts_of(result) if not r.allowed]
    assert [(r.call.label, r.evaluation.guard) for r in denied] == [("notes/read_note", "scope")]


async def test_denied_mcp_listing_hides_the_servers_tools_or_raises(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-mcp-deny-list", grant("model"))
    script = NotesScript()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    result = await governed.run("what is on my todo note?")

    assert result.output == "I have no tools" and script.tools_seen == [[]] and script.mcp_calls == 0
    assert [(r.call.kind, r.allowed) for r in governed.receipts_of(result)] == [("mcp_list", False), ("model", True)]

    strict = ChioPrefectAgent(NotesScript().agent(), capability_id=cap, chio_client=chio, on_deny="raise")
    with pytest.raises(PermissionError) as info:
        await strict.run("what is on my todo note?")
    assert isinstance(info.value.__cause__, ChioPrefectError) and info.value.__cause__.guard == "scope"


def test_flow_retry_serves_the_cached_mcp_call_under_the_same_receipt(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-mcp-retry", grant("model"), grant("notes"))
    script = NotesScript(fail_answer_once=True)
    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio,
        flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    result = governed.run_sync("what is on my todo note?")

    assert result.output == "answer: note todo: ship it"
    assert script.mcp_calls == 1  # the retry got the MCP result from the cache
    assert script.model_calls == 3  # first request cached; the failed answer request ran twice
    ids = governed.receipt_ids_of(result)  # each once; the MCP listing is in receipts_of, not here
    calls = [r for r in chio.kernel.list_receipts(capability_id=cap) if r.tool_name != "list_tools"]
    assert ids == [r.id for r in calls]
    assert [r.call.kind for r in governed.receipts_of(result)].count("mcp_list") >= 1
