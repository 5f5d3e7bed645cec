"""A tool of an MCP server granted without its listing: the model and the user are told which grant is missing.

Real in-process MCP server (FastMCP in memory), real embedded kernel, plain ``ChioGovernance``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from fastmcp import FastMCP
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import ModelMessage, ModelResponse, RetryPromptPart, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from chio_durable.agent import MCP_LIST_TOOL, ChioGovernance
from chio_durable.agent._capability import _is_mcp_toolset
from chio_kernel import LocalChioClient


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


def notes_agent(seen: dict[str, Any], governance: ChioGovernance) -> Agent[None, str]:
    server = FastMCP("notes")

    @server.tool
    def read_note(name: str) -> str:
        seen["ran"] = True
        return f"note {name}"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.setdefault("instructions", []).append(info.instructions or "")
        seen.setdefault("tools", []).append(sorted(t.name for t in info.function_tools))
        retries = [p for p in messages[-1].parts if isinstance(p, RetryPromptPart)]
        if retries or len(seen["tools"]) > 1:
            seen["retry"] = [str(p.content) for p in retries]
            return ModelResponse(parts=[TextPart("done")])
        # a model that knows of the tool from the prompt tries it even when it is not listed
        return ModelResponse(parts=[ToolCallPart("read_note", {"name": "todo"})])

    return Agent(FunctionModel(model), name="notes-agent", toolsets=[MCPToolset(server, id="notes")],
                 capabilities=[governance])


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


async def test_tool_granted_without_listing_names_the_missing_grant(
    chio: LocalChioClient, caplog: pytest.LogCaptureFixture
) -> None:
    chio.kernel.create_capability(
        subject="a", scope=ChioScope(grants=[grant("model"), grant("notes", "read_note")]), capability_id="cap-n"
    )
    seen: dict[str, Any] = {}
    governance = ChioGovernance(capability_id="cap-n", chio_client=chio)
    with caplog.at_level(logging.WARNING, logger="chio_durable.agent"):
        result = await notes_agent(seen, governance).run("read my todo note")
    assert result.output == "done" and "ran" not in seen
    # the model: told in its instructions, on every request, which grant is missing
    for text in seen["instructions"]:
        assert f"'notes/{MCP_LIST_TOOL}'" in text and "MCP server 'notes'" in text
    assert seen["tools"][0] == []
    # the user: a WARNING naming the grant, and the signed deny receipt of the listing
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("notes/list_tools" in w and "denied" in w for w in warnings)
    listing = [r for r in governance.receipts_of(result) if r.call.tool_name == MCP_LIST_TOOL]
    assert listing and not listing[0].allowed and listing[0].receipt_id


async def test_with_the_listing_granted_no_deny_is_told(chio: LocalChioClient) -> None:
    chio.kernel.create_capability(
        subject="a",
        scope=ChioScope(grants=[grant("model"), grant("notes", "read_note"), grant("notes", MCP_LIST_TOOL)]),
        capability_id="cap-l",
    )
    seen: dict[str, Any] = {}
    result = await notes_agent(seen, ChioGovernance(capability_id="cap-l", chio_client=chio)).run("read")
    assert result.output == "done" and seen.get("ran") is True
    assert seen["tools"][0] == ["read_note"]
    assert all("not available" not in text for text in seen["instructions"])


def test_a_listing_denied_for_another_reason_does_not_claim_a_missing_grant() -> None:
    from chio_durable import Evaluation
    from chio_durable.agent._denials import denied_listing_message

    revoked = Evaluation(False, "rcpt-1", "cap", "notes", MCP_LIST_TOOL, guard="revocation", reason="cap was revoked")
    text = denied_listing_message(revoked)
    assert "revocation" in text and "cap was revoked" in text and "needs the grant" not in text
    scope = Evaluation(False, "rcpt-2", "cap", "notes", MCP_LIST_TOOL, guard="scope", reason="no grant")
    assert "needs the grant 'notes/list_tools'" in denied_listing_message(scope)


def test_telling_an_mcp_toolset_apart_imports_nothing() -> None:
    # Inside a Temporal workflow's first run, importing pydantic_ai.mcp (fastmcp, mcp) to run an
    # isinstance check took longer than Temporal's 2 s deadlock detector on a loaded machine.
    code = (
        "import sys\n"
        "from pydantic_ai.toolsets import FunctionToolset\n"
        "from chio_durable.agent._capability import _is_mcp_toolset\n"
        "assert not _is_mcp_toolset(FunctionToolset([]))\n"
        "print('pydantic_ai.mcp' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_an_mcp_toolset_and_its_subclasses_are_told_apart() -> None:
    class Mine(MCPToolset):
        pass

    server = FastMCP("docs")
    assert _is_mcp_toolset(MCPToolset(server)) and _is_mcp_toolset(Mine(server))
    assert not _is_mcp_toolset(FunctionToolset([]))
