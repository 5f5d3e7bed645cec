"""A pending approval is not an allow on any layer that knows only allow/deny (issue 10): the
engine-neutral agent layer (``ChioGovernance`` on a plain pydantic-ai agent whose ``output_type`` does
not take ``DeferredToolRequests``) never runs the tool: pydantic-ai refuses to end the run with a
deferred approval it cannot return. (Waiting for the approval: tests/test_agent_deferred_approvals.py,
tests/prefect/test_prefect_approvals.py, tests/temporal/test_temporal_approvals.py.)

Kernel = the real embedded kernel; model = a scripted ``FunctionModel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_durable.agent import ChioGovernance
from chio_kernel import LocalChioClient

APPROVE_EVERYTHING = {"type": "require_approval_above", "value": {"threshold_units": 0}}


def _scope() -> dict[str, Any]:
    return {"grants": [
        {"server_id": "model", "tool_name": "*", "operations": ["Invoke"]},
        {"server_id": "researcher", "tool_name": "refund", "operations": ["Invoke"], "constraints": [APPROVE_EVERYTHING]},
    ]}


async def test_governed_agent_does_not_run_a_pending_tool(chio_home: Path) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    cap = chio.kernel.create_capability("agent:test", _scope(), capability_id="cap-pending-agent").id
    ran: list[str] = []
    told: list[Any] = []

    def refund(order: str) -> str:
        ran.append(order)
        return "refunded"

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            told.extend(p.content for p in returns)
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("refund", {"order": "A-17"}, tool_call_id="c1")])

    governance = ChioGovernance(capability_id=cap, chio_client=chio)
    agent = Agent(FunctionModel(model), name="researcher", tools=[refund], capabilities=[governance])
    with pytest.raises(UserError, match="DeferredToolRequests"):
        await agent.run("refund order A-17")

    assert ran == [] and told == []  # the tool body never ran
    pending = [r for r in chio.kernel.list_receipts(capability_id=cap) if r.decision.verdict == "pending_approval"]
    assert len(pending) == 1
    assert chio.kernel.list_approvals()[0]["tool_name"] == "refund"
