"""ChioPrefectAgent's receipt events are linked to the task run that executed the call (issue 12 §3).

Real Prefect ephemeral API, real embedded kernel, a scripted model; task runs are read back from the
Prefect API, so "linked to its task run" means a task run of that flow run with the call's name.
"""

from __future__ import annotations

import asyncio

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect import flow
from prefect.context import FlowRunContext
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent

pytestmark = pytest.mark.prefect


@dataclass
class Script:
    """Model: call ``search`` once, then answer with its result. The tool may fail."""

    fail_tool: bool = False
    tool_calls: int = 0

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "durable agents"})])

    def search(self, query: str) -> str:
        self.tool_calls += 1
        if self.fail_tool:
            raise RuntimeError("search backend down")
        return f"3 results for {query}"

    def agent(self) -> Agent[None, str]:
        return Agent(FunctionModel(self.model), name="researcher", tools=[self.search])


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def issue(chio: LocalChioClient, cap_id: str, *servers: str) -> str:
    grants = [ToolGrant(server_id=s, tool_name="*", operations=[Operation.INVOKE]) for s in servers]
    chio.kernel.create_capability(subject="agent-test", scope=ChioScope(grants=grants), capability_id=cap_id)
    return cap_id


async def run_in_flow(governed: ChioPrefectAgent[None, str]) -> tuple[str, Any]:
    """Run the agent inside a user flow; return the flow run id and the result (or the error)."""
    flow_runs: list[str] = []

    @flow
    async def research() -> Any:
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        flow_runs.append(str(context.flow_run.id))
        try:
            return await governed.run("find durable agents")
        except Exception as err:  # noqa: BLE001 - the failing-task test inspects it
            return err

    outcome = await research()
    return flow_runs[0], outcome


async def task_runs_of(flow_run_id: str, events: Any = ()) -> dict[str, str]:
    """Task run id -> task run name, for the task runs of one flow run (from the Prefect API).

    Prefect records task runs from their state events, in the background: a task run an event names
    can be read back a moment after the flow returned. So this waits until every task run that
    ``events`` name is readable (or gives up after ~30 s and returns what it has; the caller's
    assertion then says which one is missing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted = {t for t in (task_run_of(e) for e in events) if t is not None}
    runs: dict[str, str] = {}
    for _ in range(120):
        async with get_client() as client:
            found = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))  # type: ignore[list-item]
            )
        runs = {str(r.id): r.name for r in found}
        if wanted <= runs.keys():
            break
        await asyncio.sleep(0.25)
    return runs


def involved(event: Any) -> set[str]:
    return {event.resource.id, *(r.id for r in event.related)}


def task_run_of(event: Any) -> str | None:
    ids = [i for i in involved(event) if i.startswith("prefect.task-run.")]
    assert len(ids) <= 1, ids
    return ids[0].removeprefix("prefect.task-run.") if ids else None


async def test_each_allowed_call_event_links_its_task_run_and_the_flow_run(
    chio: LocalChioClient, captured_events: Any
) -> None:
    cap = issue(chio, "cap-link-allow", "model", "researcher")
    governed = ChioPrefectAgent(Script().agent(), capability_id=cap, chio_client=chio)

    flow_run_id, result = await run_in_flow(governed)

    assert result.output == "answer: 3 results for durable agents"
    ids = governed.receipt_ids_of(result)
    events = captured_events.chio()
    assert Counter(e.payload["receipt_id"] for e in events) == Counter(ids)  # one event per receipt
    assert len(ids) == 3
    task_runs = await task_runs_of(flow_run_id, events)
    linked = []
    for event in events:
        assert event.event == "chio.receipt.allow"
        assert f"prefect.flow-run.{flow_run_id}" in involved(event)
        task_run_id = task_run_of(event)
        assert task_run_id in task_runs, (event.payload, task_runs)
        assert task_runs[task_run_id].startswith(event.payload["task_name"])
        linked.append(task_run_id)
    assert len(set(linked)) == 3  # each call its own task run
    assert [e.payload["task_name"].split(":")[0] for e in events] == ["Model Request", "Call Tool", "Model Request"]


async def test_denied_call_event_is_linked_to_the_flow_run_only(
    chio: LocalChioClient, captured_events: Any
) -> None:
    cap = issue(chio, "cap-link-deny", "model")  # the tool is not granted: the model is told
    script = Script()
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    flow_run_id, result = await run_in_flow(governed)

    assert script.tool_calls == 0
    records = governed.receipts_of(result)
    assert [r.allowed for r in records] == [True, False, True]
    events = captured_events.chio()
    assert Counter(e.payload["receipt_id"] for e in events) == Counter(r.receipt_id for r in records)
    task_runs = await task_runs_of(flow_run_id, events)
    by_receipt = {e.payload["receipt_id"]: e for e in events}
    deny = by_receipt[records[1].receipt_id]
    assert deny.event == "chio.receipt.deny"
    assert f"prefect.flow-run.{flow_run_id}" in involved(deny)
    assert task_run_of(deny) is None
    for allowed in (records[0], records[2]):
        assert task_run_of(by_receipt[allowed.receipt_id]) in task_runs


async def test_failed_task_keeps_its_linked_event(chio: LocalChioClient, captured_events: Any) -> None:
    cap = issue(chio, "cap-link-fail", "model", "researcher")
    script = Script(fail_tool=True)
    governed = ChioPrefectAgent(script.agent(), capability_id=cap, chio_client=chio)

    flow_run_id, outcome = await run_in_flow(governed)

    assert isinstance(outcome, Exception) and script.tool_calls == 1
    tool_receipts = [r.id for r in chio.kernel.list_receipts(capability_id=cap) if r.tool_server == "researcher"]
    assert len(tool_receipts) == 1
    events = [e for e in captured_events.chio() if e.payload["receipt_id"] == tool_receipts[0]]
    assert len(events) == 1
    task_runs = await task_runs_of(flow_run_id, events)
    assert task_runs[task_run_of(events[0]) or ""].startswith("Call Tool: search")


async def test_call_not_run_as_a_task_is_emitted_once_on_the_flow_run(
    chio: LocalChioClient, captured_events: Any
) -> None:
    cap = issue(chio, "cap-link-notask", "model", "researcher")
    script = Script()
    governed = ChioPrefectAgent(
        script.agent(), capability_id=cap, chio_client=chio, tool_task_config_by_name={"search": None}
    )

    flow_run_id, result = await run_in_flow(governed)

    assert script.tool_calls == 1
    ids = governed.receipt_ids_of(result)
    events = captured_events.chio()
    assert Counter(e.payload["receipt_id"] for e in events) == Counter(ids)
    tool_event = next(e for e in events if e.payload["tool_name"] == "search")
    assert task_run_of(tool_event) is None
    assert f"prefect.flow-run.{flow_run_id}" in involved(tool_event)
