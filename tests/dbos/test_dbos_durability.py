"""Durability of the kernel decisions on real DBOS (SQLite) with the real embedded kernel.

* a workflow run again with the same id gets its recorded result: the kernel is not asked again;
* the same workflow id on a system database that lost its history asks again and gets the SAME
  receipts back, with no second budget charge (idempotency key = workflow id + call position);
* a workflow recovered after its process was killed mid-run does not evaluate again the calls
  already decided (their recorded evaluate steps are replayed);
* fail closed: a kernel that cannot be reached fails the evaluate step; nothing governed runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Awaitable
from pathlib import Path
from typing import Any

import pytest
from chio_kernel import SidecarClient
from chio_sdk.models import MonetaryAmount
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from chio_dbos import ChioDBOSAgent
from chio_durable import as_transport
from chio_durable.agent import COST_METADATA_KEY, TokenPrice
from chio_kernel import LocalChioClient

from chio_dbos_kit import grant, issue, step_names

HERE = Path(__file__).parent


class CountingTransport:
    """The embedded kernel's transport, counting the evaluations that reach it."""

    def __init__(self, chio: LocalChioClient) -> None:
        self._inner = as_transport(chio)
        self.evaluations: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def evaluate(self, call: Any, **kwargs: Any) -> Any:
        self.evaluations.append(call.label)
        return await self._inner.evaluate(call, **kwargs)


def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    # a fixed tool call id: a model request executed again otherwise asks for a NEW tool call (a new decision)
    if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("done")], usage=RequestUsage(input_tokens=10, output_tokens=30))
    return ModelResponse(parts=[ToolCallPart("fetch", {"pages": 3}, tool_call_id="call-1")], usage=RequestUsage(input_tokens=10, output_tokens=20))


def budget_agent(name: str, chio: Any, ran: list[int]) -> ChioDBOSAgent[None, str]:
    def fetch(pages: int) -> str:
        ran.append(pages)
        return f"{pages} pages"

    tool = Tool(fetch, metadata={COST_METADATA_KEY: MonetaryAmount(units=5, currency="USD")})
    agent = Agent(FunctionModel(script), name=name, tools=[tool], model_settings={"max_tokens": 100})
    return ChioDBOSAgent(agent, capability_id=f"cap-{name}", chio_client=chio,
                         model_prices={"function:script:": TokenPrice(0, 10_000)})


def holds(chio: LocalChioClient, cap: str) -> list[dict[str, Any]]:
    return [h for r in chio.kernel.list_receipts(capability_id=cap) if (h := chio.kernel.get_hold(r.id)) is not None]


def budget_grants(chio: LocalChioClient, name: str) -> str:
    return issue(chio, f"cap-{name}", grant("model", max_total_cost=MonetaryAmount(units=1000, currency="USD")),
                 grant(name, "fetch", max_total_cost=MonetaryAmount(units=100, currency="USD")))


async def test_money_budget_is_held_and_settled_in_dbos_steps(chio: LocalChioClient, dbos_url: str) -> None:
    cap = budget_grants(chio, "budget-dbos")
    governed = budget_agent("budget-dbos", chio, [])

    with SetWorkflowID("wf-budget"):
        result = await governed.run("go")

    found = holds(chio, cap)
    assert [(h["amount"]["units"], h["state"], h["captured_units"]) for h in found] == [
        (100, "settled", 20), (5, "settled", 5), (100, "settled", 30),
    ]
    assert [h["receipt_id"] for h in found] == governed.receipt_ids_of(result)
    assert (await step_names("wf-budget")).count("budget-dbos__capability__chio.settle") == 3


async def test_same_workflow_id_again_is_the_recorded_run(chio: LocalChioClient, dbos_url: str) -> None:
    budget_grants(chio, "again-dbos")
    counting = CountingTransport(chio)
    ran: list[int] = []
    governed = budget_agent("again-dbos", counting, ran)
    with SetWorkflowID("wf-again"):
        first = await governed.run("go")
    asked = len(counting.evaluations)
    with SetWorkflowID("wf-again"):
        second = await governed.run("go")
    assert second.output == first.output == "done"
    assert len(counting.evaluations) == asked == 3 and ran == [3]  # DBOS returned the recorded result


async def test_history_lost_same_workflow_id_gets_the_same_receipts_and_no_second_charge(
    chio: LocalChioClient, dbos_url: str, tmp_path: Path
) -> None:
    cap = budget_grants(chio, "lost-dbos")
    ran: list[int] = []
    governed = budget_agent("lost-dbos", chio, ran)
    with SetWorkflowID("wf-lost"):
        first = await governed.run("go")
    first_ids = governed.receipt_ids_of(first)
    receipts_before = len(chio.kernel.list_receipts(capability_id=cap))
    held_before = holds(chio, cap)

    DBOS.destroy()  # a new system database: the steps are re-executed, the kernel is asked again
    DBOS(config={"name": "chio-test", "system_database_url": f"sqlite:///{tmp_path}/other.sqlite"})
    DBOS.launch()
    with SetWorkflowID("wf-lost"):
        second = await governed.run("go")

    assert ran == [3, 3]  # the steps really ran again (function tools run in workflow code)
    assert governed.receipt_ids_of(second) == first_ids and len(first_ids) == 3
    assert len(chio.kernel.list_receipts(capability_id=cap)) == receipts_before
    assert holds(chio, cap) == held_before  # no second hold, nothing charged twice


async def test_kernel_down_fails_closed(dbos_url: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    calls: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append("model")
        return ModelResponse(parts=[TextPart("ungoverned")])

    governed = ChioDBOSAgent(Agent(FunctionModel(model), name="down-dbos"), capability_id="cap-down",
                             chio_client=SidecarClient(f"http://127.0.0.1:{port}"))
    with SetWorkflowID("wf-down"), pytest.raises(Exception) as info:
        await governed.run("go")
    assert calls == []
    assert "unavailable" in type(info.value).__name__.lower() or "reach" in str(info.value).lower()
    assert await step_names("wf-down") == ["down-dbos__capability__chio.evaluate"]
    status = await DBOS.get_workflow_status_async("wf-down")
    assert status is not None and status.status == "ERROR"


async def test_recovered_workflow_does_not_evaluate_decided_calls_again(chio_home: Path, tmp_path: Path) -> None:
    import crash_app

    chio = LocalChioClient(data_dir=chio_home)
    issue(chio, crash_app.CAPABILITY, grant("*"))
    url = f"sqlite:///{tmp_path}/crash.sqlite"
    env = {**os.environ, "CHIO_CRASH_HANG": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(HERE / "crash_app.py"), str(chio_home), url, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "tool-started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the workflow process ended early"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    decided = [r.id for r in chio.kernel.list_receipts(capability_id=crash_app.CAPABILITY)]
    assert len(decided) == 2  # the first model request and the tool call

    counting = CountingTransport(chio)
    governed = crash_app.build(counting, tmp_path)
    DBOS(config=crash_app.dbos_config(url))  # type: ignore[arg-type]
    DBOS.launch()  # recovers wf-crash
    try:
        handle = await DBOS.retrieve_workflow_async("wf-crash")
        result = await handle.get_result()
        assert result.output == "refunded"
        assert counting.evaluations == ["model/function:model:"]  # only the call not decided before the crash
        receipts = [r.id for r in chio.kernel.list_receipts(capability_id=crash_app.CAPABILITY)]
        assert receipts[:2] == decided and len(receipts) == 3
        assert governed.receipt_ids_of(result)[:2] == decided
    finally:
        DBOS.destroy()
