"""A table artifact per governed flow run, read back from the real Prefect API."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.context import TaskRunContext
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent, chio_flow, chio_task
from chio_prefect._artifact import COLUMNS, artifact_key

pytestmark = pytest.mark.prefect

ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(chio_home)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="agent", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


async def read_table(flow_run_id: str) -> tuple[Any, list[dict[str, Any]]]:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(flow_run_id)]))
        )
    assert len(artifacts) == 1, artifacts
    [artifact] = artifacts
    data = artifact.data if isinstance(artifact.data, list) else json.loads(str(artifact.data))
    return artifact, data


def pipeline(chio: LocalChioClient, cap: str) -> Any:
    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> list[str]:
        return [query]

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[str]) -> int:
        return len(documents)

    @chio_flow(capability_id=cap, tool_server="search-srv", chio_client=chio)
    def research(query: str) -> int:
        return analyze_results(search_documents(query))

    return research


async def test_flow_run_gets_a_receipt_table(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-artifact", grant("search-srv"))
    state = pipeline(chio, cap)("durable agents", return_state=True)
    assert state.is_completed()
    flow_run_id = str(state.state_details.flow_run_id)

    artifact, rows = await read_table(flow_run_id)
    assert artifact.type == "table"
    assert str(artifact.flow_run_id) == flow_run_id
    receipts = chio.kernel.list_receipts(capability_id=cap)
    assert [tuple(row) for row in rows] == [COLUMNS] * 2
    assert [row["receipt_id"] for row in rows] == [r.id for r in receipts]
    assert [row["call"] for row in rows] == ["search-srv/search_documents", "search-srv/analyze_results"]
    assert [row["verdict"] for row in rows] == ["allow", "allow"]
    assert rows[0]["task"].startswith("search_documents")
    assert all(ISO_MS_UTC.match(row["time"]) for row in rows)


async def test_failed_flow_run_still_gets_its_table_with_the_deny(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-artifact-deny", grant("search-srv", "search_documents"))  # no analyze_results
    state = pipeline(chio, cap)("q", return_state=True)
    assert state.is_failed()
    _, rows = await read_table(str(state.state_details.flow_run_id))
    [allowed, denied] = rows
    assert allowed["verdict"] == "allow"
    assert denied["verdict"] == "deny" and denied["call"] == "search-srv/analyze_results"
    [deny_receipt] = [r for r in chio.kernel.list_receipts(capability_id=cap) if not r.decision.is_allowed]
    assert denied["receipt_id"] == deny_receipt.id and denied["guard"] == deny_receipt.decision.guard


async def test_agent_run_gets_a_receipt_table(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-artifact-agent", grant("model"), grant("notes-agent", "lookup"))
    flow_runs: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        flow_runs.append(str(TaskRunContext.get().task_run.flow_run_id))
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("lookup", {"key": "a"}), ToolCallPart("delete", {"key": "a"})])

    def lookup(key: str) -> str:
        return f"value of {key}"

    def delete(key: str) -> str:
        raise AssertionError("denied: must not run")

    governed = ChioPrefectAgent(
        Agent(FunctionModel(model), name="notes-agent", tools=[lookup, delete]), capability_id=cap, chio_client=chio
    )
    result = await governed.run("go")
    assert result.output == "done"
    _, rows = await read_table(flow_runs[0])
    ids = [r.receipt_id for r in governed.receipts_of(result)]
    assert [row["receipt_id"] for row in rows] == ids and len(ids) == 4
    assert ("notes-agent/delete", "deny") in [(row["call"], row["verdict"]) for row in rows]
    assert rows[0]["task"].startswith("Model Request")
