"""On the real Prefect API: every receipt of a governed flow run carries its run context, signed
(``flow_run_id``, ``task_run_id``, ``flow_name``, ``task_name`` for @chio_task; ``flow_run_id`` for
ChioPrefectAgent), so ``chio-durable receipts list --flow-run ID --json`` returns exactly that run's
receipts (docs/prefect.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect import flow
from prefect.context import FlowRunContext
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from typer.testing import CliRunner

from chio_kernel import LocalChioClient
from chio_kernel.cli import app
from chio_prefect import ChioPrefectAgent, chio_flow, chio_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))
from independent_verifier import assert_receipt_verifies  # noqa: E402


def _grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


def _listed(chio_home: Path, flow_run_id: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        app, ["receipts", "list", "--flow-run", flow_run_id, "--json", "--oldest-first", "--data-dir", str(chio_home)]
    )
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def _flow_run_id() -> str:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    return str(context.flow_run.id)


def test_chio_task_receipts_are_listed_by_their_flow_run(chio_home: Path) -> None:
    local = LocalChioClient(chio_home)
    envelope = ChioScope(grants=[_grant("docs-srv", "fetch"), _grant("docs-srv", "index")])
    local.kernel.create_capability(
        subject="agent", scope=ChioScope(grants=[_grant("docs-srv", "fetch")]), capability_id="cap-meta-pf"
    )

    @chio_task(tool_server="docs-srv")
    def fetch(url: str) -> str:
        return f"page {url}"

    @chio_task(tool_server="docs-srv")
    def index(page: str) -> str:  # in the flow's envelope, not granted by the capability: a kernel deny
        return page

    @chio_task(tool_server="docs-srv")
    def delete(url: str) -> None:  # outside the flow's envelope: a deny the layer records
        raise AssertionError("never runs")

    @chio_flow(scope=envelope, capability_id="cap-meta-pf", chio_client=local)
    def crawl(urls: list[str]) -> str:
        for url in urls:
            fetch(url)
        for call in (lambda: index("p"), lambda: delete("u")):
            try:
                call()
            except PermissionError:
                pass
        return _flow_run_id()

    first = crawl(["a", "b"])
    second = crawl(["c"])
    assert first != second

    mine = _listed(chio_home, first)
    assert [(r["tool_name"], r["decision"]["verdict"]) for r in mine] == [
        ("fetch", "allow"), ("fetch", "allow"), ("index", "deny"), ("delete", "deny"),
    ]
    assert mine[2]["decision"]["guard"] == "scope" and mine[3]["decision"]["guard"] != "scope"
    for receipt in mine:
        meta = receipt["metadata"]
        assert meta["flow_run_id"] == first and meta["flow_name"] == "crawl"
        assert meta["task_name"] == receipt["tool_name"] and meta["task_run_id"]
        assert_receipt_verifies(receipt)
    assert len({r["metadata"]["task_run_id"] for r in mine}) == 4  # one task run each
    assert [r["action"]["parameters"] for r in _listed(chio_home, second)] == [{"url": "c"}, {"page": "p"}, {"url": "u"}]
    assert local.kernel.receipt_count() == 7 and local.kernel.verify_chain().ok


def _script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("done")])
    return ModelResponse(parts=[ToolCallPart("search", {"query": "durable"})])


async def test_chio_prefect_agent_receipts_are_listed_by_their_flow_run(chio_home: Path) -> None:
    local = LocalChioClient(chio_home)
    local.kernel.create_capability(
        subject="agent", scope=ChioScope(grants=[_grant("model"), _grant("researcher", "search")]),
        capability_id="cap-meta-pa",
    )

    def search(query: str) -> str:
        return f"results for {query}"

    governed = ChioPrefectAgent(
        Agent(FunctionModel(_script), name="researcher", tools=[search]), capability_id="cap-meta-pa",
        chio_client=local,
    )

    @flow
    async def research() -> tuple[str, list[str]]:
        result = await governed.run("go")
        return _flow_run_id(), governed.receipt_ids_of(result)

    first, first_ids = await research()
    second, second_ids = await research()
    mine = _listed(chio_home, first)
    assert [r["id"] for r in mine] == first_ids and len(first_ids) == 3  # model, tool, model
    assert [r["id"] for r in _listed(chio_home, second)] == second_ids
    for receipt in mine:
        assert receipt["metadata"]["flow_run_id"] == first
        assert_receipt_verifies(receipt)
