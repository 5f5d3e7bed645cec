"""One decision type, observed by both engines' writers (Temporal envelope steps, Prefect receipt events).

The enforcement path is driven for real: ``ChioActivityInterceptor.govern`` inside temporalio's
``ActivityEnvironment`` (a real activity ``Info``), with the embedded kernel deciding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from temporalio.testing import ActivityEnvironment
from temporalio.worker import ExecuteActivityInput

from chio_durable import Decision
from chio_kernel import LocalChioClient
from chio_prefect.events import ReceiptEvent
from chio_temporal import ActivityCall, ChioActivityInterceptor, WorkflowGrant, WorkflowStepReceipt

SCOPE = ChioScope(grants=[ToolGrant(server_id="docs", tool_name="fetch", operations=[Operation.INVOKE])])


async def fetch(path: str) -> str:
    return f"contents of {path}"


async def _govern(interceptor: ChioActivityInterceptor, info_changes: dict[str, Any]) -> Any:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, **info_changes)
    input = ExecuteActivityInput(fn=fetch, args=["/docs/a.md"], executor=None, headers={})

    async def body() -> Any:
        return await interceptor.govern(input, lambda: fetch("/docs/a.md"))

    return await env.run(body)


async def test_every_decision_reaches_the_envelope_writer_and_added_observers(tmp_path: Path) -> None:
    chio = LocalChioClient(tmp_path)
    token = chio.kernel.create_capability(subject="wf", scope=SCOPE, capability_id="cap-docs")
    interceptor = ChioActivityInterceptor(chio_client=chio, default_tool_server="docs")
    interceptor.register_workflow_grant(WorkflowGrant(workflow_id="wf-1", token=token, tool_server="docs"))
    seen: list[Decision] = []
    interceptor.decision_observers.append(seen.append)

    def broken(decision: Decision) -> None:
        raise RuntimeError("an audit hook that fails")

    interceptor.decision_observers.append(broken)  # logged, never hides the decision
    result = await _govern(interceptor, {"workflow_id": "wf-1", "activity_type": "fetch", "activity_id": "7"})

    assert result == "contents of /docs/a.md"
    [decision] = seen
    assert isinstance(decision.call, ActivityCall) and decision.call.kind == "activity"
    assert decision.call.parameters == {"path": "/docs/a.md"} and decision.capability_id == "cap-docs"
    assert decision.allowed and decision.idempotency_key == interceptor.activity_idempotency_key(
        decision.where["info"], "cap-docs"
    )
    stored = chio.kernel.get_receipt(decision.receipt_id)
    assert stored is not None and stored.action.parameter_hash == decision.call.wire_parameter_hash
    # the envelope step is a view of that same decision
    [step] = interceptor.get_workflow_receipt("wf-1").steps  # type: ignore[union-attr]
    assert step == dataclasses.replace(WorkflowStepReceipt.from_decision(decision), evaluated_at=step.evaluated_at)
    assert (step.receipt_id, step.parameter_hash, step.content_hash) == (
        stored.id, stored.action.parameter_hash, stored.content_hash,
    )
    # and so is the Prefect event, from the same decision type
    event = ReceiptEvent.from_decision(decision)
    assert (event.receipt_id, event.capability_id, event.tool_server, event.tool_name, event.allowed) == (
        stored.id, "cap-docs", "docs", "fetch", True,
    )


async def test_a_no_grant_deny_is_a_decision_with_a_kernel_signed_receipt(tmp_path: Path) -> None:
    # issue 12 §2: no capability to evaluate, yet the kernel signs and chains the deny
    chio = LocalChioClient(tmp_path)
    interceptor = ChioActivityInterceptor(chio_client=chio, default_tool_server="docs")
    seen: list[Decision] = []
    interceptor.decision_observers.append(seen.append)
    with pytest.raises(Exception, match="no WorkflowGrant"):
        await _govern(interceptor, {"workflow_id": "wf-none", "activity_type": "fetch"})
    [decision] = seen
    assert not decision.allowed and decision.idempotency_key is None
    [receipt] = chio.kernel.list_receipts()
    assert decision.receipt_id == receipt.id and receipt.decision.guard == "workflow-grant" == decision.evaluation.guard
    assert chio.kernel.verify_receipt(receipt)
