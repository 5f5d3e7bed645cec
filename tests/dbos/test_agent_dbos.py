"""ChioDBOSAgent on real DBOS (SQLite) and the real embedded kernel: allow, deny, receipts recorded."""

from __future__ import annotations

from typing import Any

import pytest
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_dbos import ChioDBOSAgent, ChioDBOSError, ChioDBOSPermissionError, receipt_ids_in_messages
from chio_kernel import LocalChioClient

from chio_dbos_kit import grant, issue, recorded_evaluations, step_names


class Script:
    """A scripted model: asks for ``lookup(city)`` once, then answers with what the tool returned."""

    def __init__(self) -> None:
        self.calls = 0

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        last = messages[-1].parts
        returned = [p for p in last if isinstance(p, ToolReturnPart)]
        if returned and getattr(returned[0], "outcome", None) == "failed":
            return ModelResponse(parts=[TextPart("could not look it up")])
        if returned:
            return ModelResponse(parts=[TextPart(f"answer: {returned[0].content}")])
        return ModelResponse(parts=[ToolCallPart("lookup", {"city": "Paris"})])


def make_agent(name: str, script: Script, ran: list[str]) -> Agent[None, str]:
    def lookup(city: str) -> str:
        ran.append(city)
        return f"{city}: sunny"

    return Agent(FunctionModel(script.model), name=name, tools=[lookup])


async def test_allowed_calls_run_and_the_evaluations_are_dbos_steps(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-allow", grant("model"), grant("weather-allow", "lookup"))
    ran: list[str] = []
    governed = ChioDBOSAgent(make_agent("weather-allow", Script(), ran), capability_id=cap, chio_client=chio)

    with SetWorkflowID("wf-allow"):
        result = await governed.run("weather?")

    assert result.output == "answer: Paris: sunny"
    assert ran == ["Paris"]
    assert await step_names("wf-allow") == [
        "weather-allow__capability__chio.evaluate", "weather-allow__model.request",
        "weather-allow__capability__chio.evaluate",  # the tool call (function tools run in workflow code)
        "weather-allow__capability__chio.evaluate", "weather-allow__model.request",
    ]
    ids = governed.receipt_ids_of(result)
    assert len(ids) == 3
    # the receipt ids are in what DBOS recorded: the evaluate steps' outputs, and the model responses
    assert [e.receipt_id for e in await recorded_evaluations("wf-allow")] == ids
    assert receipt_ids_in_messages(result.all_messages()) == [ids[0], ids[2]]
    receipts = [chio.kernel.get_receipt(i) for i in ids]
    assert all(r is not None and r.decision.verdict == "allow" for r in receipts)
    assert all((r.metadata or {}).get("dbos_workflow_id") == "wf-allow" for r in receipts if r is not None)
    assert chio.kernel.verify_chain().ok


async def test_denied_tool_is_told_to_the_model_and_never_runs(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-tell", grant("model"))  # no grant for the tool
    ran: list[str] = []
    governed = ChioDBOSAgent(make_agent("weather-tell", Script(), ran), capability_id=cap, chio_client=chio)

    with SetWorkflowID("wf-tell"):
        result = await governed.run("weather?")

    assert ran == []
    assert result.output == "could not look it up"
    records = governed.receipts_of(result)
    assert [(r.call.label, r.allowed) for r in records][1] == ("weather-tell/lookup", False)
    assert (await recorded_evaluations("wf-tell"))[1].receipt_id == records[1].receipt_id  # the deny is recorded too


async def test_denied_tool_with_raise_fails_the_workflow(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-raise", grant("model"))
    ran: list[str] = []
    governed = ChioDBOSAgent(
        make_agent("weather-raise", Script(), ran), capability_id=cap, chio_client=chio, on_deny="raise"
    )

    with SetWorkflowID("wf-raise"), pytest.raises(ChioDBOSPermissionError) as info:
        await governed.run("weather?")

    assert ran == []
    cause = info.value.__cause__
    assert isinstance(cause, ChioDBOSError) and cause.guard is not None
    denied = chio.kernel.get_receipt(cause.receipt_id)
    assert denied is not None and denied.decision.verdict == "deny"
    status = await DBOS.get_workflow_status_async("wf-raise")
    assert status is not None and status.status == "ERROR"


async def test_denied_model_request_never_reaches_the_model(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-nomodel", grant("weather-nomodel", "lookup"))
    script = Script()
    governed = ChioDBOSAgent(make_agent("weather-nomodel", script, []), capability_id=cap, chio_client=chio)

    with SetWorkflowID("wf-nomodel"), pytest.raises(PermissionError):
        await governed.run("weather?")

    assert script.calls == 0
    assert await step_names("wf-nomodel") == ["weather-nomodel__capability__chio.evaluate"]


async def test_inside_the_callers_workflow(chio: LocalChioClient, dbos_url: str) -> None:
    cap = issue(chio, "cap-dbos-inside", grant("*"))
    ran: list[str] = []
    governed = ChioDBOSAgent(make_agent("weather-inside", Script(), ran), capability_id=cap, chio_client=chio)

    @DBOS.workflow(name="chio-test-inside")
    async def my_workflow(prompt: str) -> str:
        return (await governed.run(prompt)).output

    with SetWorkflowID("wf-inside"):
        assert await my_workflow("weather?") == "answer: Paris: sunny"
    assert (await step_names("wf-inside")).count("weather-inside__capability__chio.evaluate") == 3
