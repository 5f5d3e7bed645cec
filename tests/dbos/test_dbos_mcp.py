"""ChioDBOSAgent with an in-process MCP server (FastMCP in memory): listing and calls are governed,
each evaluation a DBOS step recorded before the MCP step it governs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from dbos import SetWorkflowID
from fastmcp import FastMCP
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_dbos import ChioDBOSAgent, ChioDBOSError
from chio_kernel import LocalChioClient

from chio_dbos_kit import grant, issue, recorded_evaluations, step_names


@dataclass
class NotesScript:
    mcp_calls: int = 0
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
        self.tools_seen.append(sorted(t.name for t in info.function_tools))
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            self.seen_tool_results.extend(p.content for p in returns)
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        if "read_note" not in self.tools_seen[-1]:
            return ModelResponse(parts=[TextPart("I have no tools")])
        return ModelResponse(parts=[ToolCallPart("read_note", {"name": "todo"}, tool_call_id="call-note-1")])

    def agent(self, name: str) -> Agent[None, str]:
        return Agent(FunctionModel(self.model), name=name, toolsets=[MCPToolset(self.server(), id="notes")])


async def test_mcp_listing_and_call_are_governed_dbos_steps(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-mcp", grant("model"), grant("notes"))
    script = NotesScript()
    governed = ChioDBOSAgent(script.agent("notes-dbos"), capability_id=cap, chio_client=chio)

    with SetWorkflowID("wf-mcp"):
        result = await governed.run("what is on my todo note?")

    assert result.output == "answer: note todo: ship it" and script.mcp_calls == 1
    records = governed.receipts_of(result)
    assert [(r.call.kind, r.call.label) for r in records] == [
        ("mcp_list", "notes/list_tools"), ("model", "model/function:model:"), ("mcp", "notes/read_note"),
        ("mcp_list", "notes/list_tools"), ("model", "model/function:model:"),
    ]
    names = await step_names("wf-mcp")
    evaluate = "notes-dbos__capability__chio.evaluate"
    call_steps = [i for i, n in enumerate(names) if "call_tool" in n]
    assert len(call_steps) == 1 and names[call_steps[0] - 1] == evaluate  # evaluated right before the MCP step
    recorded = {e.receipt_id for e in await recorded_evaluations("wf-mcp")}
    assert {r.receipt_id for r in records} == recorded
    assert chio.kernel.get_receipt(records[2].receipt_id).action.parameters == {"name": "todo"}


async def test_denied_mcp_call_is_told_to_the_model(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-mcp-deny", grant("model"), grant("notes", "list_tools"))
    script = NotesScript()
    governed = ChioDBOSAgent(script.agent("notes-dbos-deny"), capability_id=cap, chio_client=chio)

    with SetWorkflowID("wf-mcp-deny"):
        result = await governed.run("what is on my todo note?")

    assert script.mcp_calls == 0
    assert "notes/read_note" in script.seen_tool_results[0]
    assert not any("call_tool" in n for n in await step_names("wf-mcp-deny"))
    denied = [r for r in governed.receipts_of(result) if not r.allowed]
    assert [(r.call.label, r.evaluation.guard) for r in denied] == [("notes/read_note", "scope")]


async def test_denied_mcp_listing_hides_the_tools_or_raises(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-mcp-list", grant("model"))
    script = NotesScript()
    governed = ChioDBOSAgent(script.agent("notes-dbos-list"), capability_id=cap, chio_client=chio)
    with SetWorkflowID("wf-mcp-list"):
        result = await governed.run("what is on my todo note?")
    assert result.output == "I have no tools" and script.tools_seen == [[]] and script.mcp_calls == 0

    strict = ChioDBOSAgent(NotesScript().agent("notes-dbos-strict"), capability_id=cap, chio_client=chio,
                           on_deny="raise")
    with SetWorkflowID("wf-mcp-strict"), pytest.raises(PermissionError) as info:
        await strict.run("what is on my todo note?")
    assert isinstance(info.value.__cause__, ChioDBOSError) and info.value.__cause__.guard == "scope"
