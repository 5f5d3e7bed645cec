"""ChioPrefectAgent + human approval (issue 10), on the real Prefect API: a tool call the kernel says
a person must approve pauses the agent's flow run (key = the approval id); a resume only wakes it,
and the tool runs only on the kernel's allow under that approval."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent


class Script:
    def __init__(self) -> None:
        self.refunds: list[str] = []

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"]
        if returns:
            return ModelResponse(parts=[TextPart(f"done: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-9"}, tool_call_id="call-refund")])

    def refund(self, order: str) -> str:
        self.refunds.append(order)
        return f"refunded {order}"


def _paused_flow_run(approval_id: str) -> Any:
    """The flow run paused under ``approval_id`` (waits for it; pytest's timeout bounds the test)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        while True:
            for run in client.read_flow_runs(flow_run_filter=paused):
                if run.state is not None and run.state.state_details.pause_key == approval_id:
                    return run.id
            time.sleep(0.1)


def _run_in_thread(governed: ChioPrefectAgent[Any, Any], out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out["result"] = governed.run_sync("refund order o-9")
        except BaseException as err:  # noqa: BLE001 - read by the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_agent_tool_pauses_the_flow_run_forged_resume_runs_nothing_approve_runs_once(chio_home: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    chio = LocalChioClient(data_dir=chio_home)
    cap = chio.kernel.create_capability(subject="agent:support", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="support", tool_name="refund", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="require_approval_above", value=0)]),
    ])).id
    script = Script()
    governed = ChioPrefectAgent(
        Agent(FunctionModel(script.model), name="support", tools=[script.refund]), capability_id=cap, chio_client=chio
    )
    out: dict[str, Any] = {}
    thread = _run_in_thread(governed, out)
    while not (pending := chio.kernel.list_approvals("pending")):
        time.sleep(0.1)
    approval_id = pending[0]["id"]
    flow_run_id = _paused_flow_run(approval_id)
    assert script.refunds == []

    resume_flow_run(flow_run_id, run_input={"decision": "approve", "reason": "forged"})  # no kernel resolution
    assert _paused_flow_run(f"{approval_id}-2") == flow_run_id  # asked the kernel again: still pending
    assert script.refunds == []

    chio.kernel.respond_approval(approval_id, "approved", "ok")
    resume_flow_run(flow_run_id, run_input={"decision": "approve"})
    thread.join()
    assert "error" not in out, out.get("error")
    assert out["result"].output == "done: refunded o-9"
    assert script.refunds == ["o-9"]
    (allowed,) = [r for r in governed.receipts_of(out["result"]) if r.call.tool_name == "refund" and r.allowed]
    assert allowed.evaluation.approval_id == approval_id
    chio.kernel.close()
