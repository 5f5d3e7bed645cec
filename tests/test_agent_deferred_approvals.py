"""Human approval in a governed pydantic-ai agent (issue 10): a pending tool call is a deferred approval.

Real embedded kernel; scripted FunctionModel. ToolApproved only wakes the call: the kernel's
resolution (bound to parameters, principal and expiry) decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_durable.agent import ChioGovernance, GovernanceDenied, approval_results
from chio_kernel import LocalChioClient


@dataclass
class Script:
    """Asks to refund once, then answers with what the tool returned (or how it failed)."""

    refunds: list[tuple[str, int]] = field(default_factory=list)
    told: list[Any] = field(default_factory=list)

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        parts = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"]
        if parts:
            self.told.extend(getattr(p, "content", None) for p in parts)
            return ModelResponse(parts=[TextPart(f"done: {parts[0].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-1", "amount": 120}, tool_call_id="call-refund")])

    def refund(self, order: str, amount: int) -> str:
        self.refunds.append((order, amount))
        return f"refunded {amount} on {order}"


def _capability(chio: LocalChioClient) -> str:
    scope = ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="support", tool_name="refund", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="require_approval_above", value=0)]),
    ])
    return chio.kernel.create_capability(subject="agent:support", scope=scope).id


def _agent(chio: LocalChioClient, script: Script, **kwargs: Any) -> tuple[Agent[None, Any], ChioGovernance]:
    governance = ChioGovernance(capability_id=_capability(chio), chio_client=chio, **kwargs)
    agent = Agent(
        FunctionModel(script.model), name="support", tools=[script.refund], capabilities=[governance],
        output_type=[str, DeferredToolRequests],
    )
    return agent, governance


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


async def _deferred(agent: Agent[None, Any]) -> tuple[Any, DeferredToolRequests, str]:
    first = await agent.run("refund order o-1")
    assert isinstance(first.output, DeferredToolRequests)
    (call,) = first.output.approvals
    approval_id = first.output.metadata[call.tool_call_id]["chio_approval"]["approval_id"]
    return first, first.output, approval_id


async def test_pending_tool_call_defers_and_toolapproved_alone_runs_nothing(chio: LocalChioClient) -> None:
    script = Script()
    agent, governance = _agent(chio, script)
    first, requests, approval_id = await _deferred(agent)
    assert script.refunds == []
    pending = [r for r in governance.receipts_of(first) if r.evaluation.pending]
    assert [r.evaluation.approval_id for r in pending] == [approval_id]
    stored = chio.kernel.get_receipt(pending[0].receipt_id)
    assert stored.decision.verdict == "pending_approval" and chio.kernel.verify_receipt(stored)

    # ToolApproved with no kernel resolution: the call is asked again, still pending: deferred again
    again = await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(requests))
    assert isinstance(again.output, DeferredToolRequests)
    assert again.output.metadata["call-refund"]["chio_approval"]["approval_id"] == approval_id
    assert script.refunds == []

    # approved in the kernel: the next wake-up runs the tool exactly once, under that approval
    chio.kernel.respond_approval(approval_id, "approved", "ok")
    done = await agent.run(message_history=again.all_messages(), deferred_tool_results=approval_results(again.output))
    assert done.output == "done: refunded 120 on o-1"
    assert script.refunds == [("o-1", 120)]
    (allowed,) = [r for r in governance.receipts_of(done) if r.call.tool_name == "refund"]
    assert allowed.allowed and allowed.evaluation.approval_id == approval_id
    assert chio.kernel.verify_chain().ok


async def test_in_process_approvals_true_finds_the_approval_id(chio: LocalChioClient) -> None:
    script = Script()
    agent, _ = _agent(chio, script)
    first, _, approval_id = await _deferred(agent)
    chio.kernel.respond_approval(approval_id, "approved")
    done = await agent.run(
        message_history=first.all_messages(), deferred_tool_results=DeferredToolResults(approvals={"call-refund": True})
    )
    assert done.output == "done: refunded 120 on o-1" and script.refunds == [("o-1", 120)]


async def test_kernel_deny_tells_the_model_or_raises(chio: LocalChioClient) -> None:
    script = Script()
    agent, _ = _agent(chio, script)
    first, requests, approval_id = await _deferred(agent)
    chio.kernel.respond_approval(approval_id, "denied", "not eligible")
    done = await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(requests))
    assert script.refunds == []
    assert "approval-denied" in str(script.told[-1]) and isinstance(done.output, str)

    script2 = Script()
    agent2, _ = _agent(chio, script2, on_deny="raise")
    first2, requests2, approval_id2 = await _deferred(agent2)
    chio.kernel.respond_approval(approval_id2, "denied", "not eligible")
    with pytest.raises(PermissionError) as info:
        await agent2.run(message_history=first2.all_messages(), deferred_tool_results=approval_results(requests2))
    assert isinstance(info.value.__cause__, GovernanceDenied) and info.value.__cause__.guard == "approval-denied"
    assert script2.refunds == []


async def test_tooldenied_and_changed_arguments_never_run_the_tool(chio: LocalChioClient) -> None:
    script = Script()
    agent, _ = _agent(chio, script)
    first, _, approval_id = await _deferred(agent)
    chio.kernel.respond_approval(approval_id, "approved")
    # an approval covers only the parameters approved
    changed = DeferredToolResults(
        approvals={"call-refund": ToolApproved(override_args={"order": "o-1", "amount": 9999})},
        metadata={"call-refund": {"chio_approval": {"approval_id": approval_id}}},
    )
    await agent.run(message_history=first.all_messages(), deferred_tool_results=changed)
    assert script.refunds == [] and "approval-parameters-mismatch" in str(script.told[-1])

    denied = DeferredToolResults(approvals={"call-refund": ToolDenied("no refunds today")})
    await agent.run(message_history=first.all_messages(), deferred_tool_results=denied)
    assert script.refunds == [] and script.told[-1] == "no refunds today"


async def test_revoked_during_the_wait_or_expired_is_a_deny(chio: LocalChioClient, chio_home: Path) -> None:
    script = Script()
    agent, governance = _agent(chio, script)
    first, requests, _ = await _deferred(agent)
    chio.kernel.revoke_capability(governance.capability_id)
    with pytest.raises(PermissionError):  # the tool call is told "revocation"; the next model request is refused
        await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(requests))
    assert script.refunds == []
    refunds = [r for r in chio.kernel.list_receipts(capability_id=governance.capability_id) if r.tool_name == "refund"]
    assert [(r.decision.verdict, r.decision.guard) for r in refunds] == [("pending_approval", "approval"), ("deny", "revocation")]

    from chio_kernel import Kernel

    import time

    now = [time.time()]  # the kernel's clock: the test moves it past the approval's TTL instead of sleeping
    short = LocalChioClient(kernel=Kernel(chio_home / "short", approval_ttl=1, clock=lambda: now[0]))
    script2 = Script()
    agent2, _ = _agent(short, script2)
    first2, requests2, _ = await _deferred(agent2)
    now[0] += 2.5  # let the approval expire unanswered
    await agent2.run(message_history=first2.all_messages(), deferred_tool_results=approval_results(requests2))
    assert script2.refunds == [] and "approval-timeout" in str(script2.told[-1])
    short.kernel.close()


async def test_a_costed_tool_above_the_threshold_waits_then_runs_once_and_holds_its_cost(chio: LocalChioClient) -> None:
    """Approval and money together: the approval is bound to the declared cost, so the re-evaluation
    must declare the same cost (it does), runs the tool once, and the allow holds that cost."""
    from chio_sdk.models import MonetaryAmount
    from pydantic_ai import Tool

    from chio_durable.agent import COST_METADATA_KEY

    script = Script()
    scope = ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="support", tool_name="refund", operations=[Operation.INVOKE],
                  max_total_cost=MonetaryAmount(units=1_000, currency="USD"),
                  constraints=[Constraint(type="require_approval_above", value=100)]),
    ])
    capability_id = chio.kernel.create_capability(subject="agent:support", scope=scope).id
    governance = ChioGovernance(capability_id=capability_id, chio_client=chio)
    refund = Tool(script.refund, metadata={COST_METADATA_KEY: lambda order, amount: MonetaryAmount(units=amount, currency="USD")})
    agent = Agent(FunctionModel(script.model), name="support", tools=[refund], capabilities=[governance],
                  output_type=[str, DeferredToolRequests])

    first, requests, approval_id = await _deferred(agent)  # 120 units >= the 100-unit threshold
    assert script.refunds == [] and chio.kernel.budgets(capability_id)[0]["held"] == 0  # nothing held while pending
    await chio.respond_approval(approval_id, "approved")
    done = await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(requests))
    assert script.refunds == [("o-1", 120)], done.output
    allow = [r for r in governance.receipts_of(done) if r.call.tool_name == "refund" and r.allowed]
    assert len(allow) == 1
    stored = chio.kernel.get_receipt(allow[0].receipt_id)
    assert stored is not None and stored.metadata["approval_id"] == approval_id
    hold = chio.kernel.get_hold(allow[0].receipt_id)
    assert hold is not None and hold["amount"]["units"] == 120
    assert chio.kernel.verify_chain().ok
