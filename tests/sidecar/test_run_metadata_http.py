"""The caller's run context over HTTP: ``/v1/evaluate`` and ``/v1/receipts/denials`` take an optional
``"metadata"`` object, signed into the receipt (checked by the independent verifier) and found by
``chio-durable receipts list --workflow-id`` on the sidecar's data dir; malformed -> 422 with a reason.
``SidecarClient`` sends it (also through the layers' HttpTransport); a stock ``ChioClient`` cannot."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_durable import GovernedCall, as_transport
from chio_durable._denial_record import deny_before_evaluation_async
from chio_kernel import SidecarClient
from chio_sidecar_harness import Sidecar, run_cli
from independent_verifier import assert_receipt_verifies


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="docs", tool_name="read", operations=[Operation.INVOKE])])


def _listed(sidecar: Sidecar, *filters: str) -> list[dict[str, object]]:
    r = run_cli("receipts", "list", "--json", "--data-dir", str(sidecar.data_dir), *filters)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


async def test_sidecar_client_signs_the_run_context_into_receipts(sidecar: Sidecar) -> None:
    workflow = f"wf-{uuid.uuid4()}"
    context = {"workflow_id": workflow, "run_id": "run-1", "activity_type": "read_doc"}
    async with SidecarClient(sidecar.url, timeout=30) as sc:
        cap = await sc.create_capability(subject="agent:meta", scope=_scope())
        allow = await sc.evaluate_tool_call(
            capability_id=cap.id, tool_server="docs", tool_name="read", parameters={"p": 1}, metadata=context
        )
        deny = await sc.evaluate_tool_call(
            capability_id=cap.id, tool_server="docs", tool_name="write", parameters={"p": 2}, metadata=context
        )
        recorded = await sc.record_denial(
            capability_id=cap.id, tool_server="docs", tool_name="delete", parameters={}, guard="flow-scope",
            reason="outside the flow", metadata=context,
        )
        other = await sc.evaluate_tool_call(
            capability_id=cap.id, tool_server="docs", tool_name="read", parameters={"p": 3},
        )
    assert allow.decision.verdict == "allow" and deny.decision.verdict == "deny"
    assert allow.metadata == deny.metadata == recorded.metadata == context and other.metadata is None
    for receipt in (allow, deny, recorded):
        served = httpx.get(f"{sidecar.url}/v1/receipts/{receipt.id}", timeout=30).json()
        assert served["metadata"] == context
        assert_receipt_verifies(served)  # what we hand out is what we signed, metadata included
    assert httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=30).json()["ok"] is True
    listed = _listed(sidecar, "--workflow-id", workflow, "--oldest-first")
    assert [r["id"] for r in listed] == [allow.id, deny.id, recorded.id]
    for served in listed:
        assert_receipt_verifies(served)


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ("wf-1", "must be an object"),
        ({"bad key": "x"}, "letters, digits"),
        ({"workflow_id": 7}, "must be a string"),
        ({"workflow_id": "x" * 513}, "at most 512"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
    ],
)
def test_malformed_metadata_is_a_422_with_a_reason(sidecar: Sidecar, metadata: object, says: str) -> None:
    before = httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=30).json()["count"]
    body = {"capability_id": "cap-x", "tool_server": "docs", "tool_name": "read", "parameters": {},
            "metadata": metadata}
    answer = httpx.post(f"{sidecar.url}/v1/evaluate", json=body, timeout=30)
    assert answer.status_code == 422 and "metadata" in answer.text and says in answer.text, answer.text
    denial = httpx.post(f"{sidecar.url}/v1/receipts/denials", timeout=30,
                        json={**body, "capability_id": "", "guard": "flow-scope", "reason": "outside"})
    assert denial.status_code == 422 and says in denial.text, denial.text
    assert httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=30).json()["count"] == before


async def test_the_layers_transport_sends_the_calls_context_and_a_stock_client_drops_it(sidecar: Sidecar) -> None:
    flow_run = f"fr-{uuid.uuid4()}"
    sc = SidecarClient(sidecar.url, timeout=30)
    transport = as_transport(sc)  # as the layers drive it (on the kernel loop)
    try:
        cap = await transport.run(lambda: sc.create_capability(subject="agent:meta", scope=_scope()))
        call = GovernedCall("task", "docs", "read", {"q": 1}, metadata={"flow_run_id": flow_run})
        evaluation = await transport.evaluate(call, capability_id=cap.id, idempotency_key=f"k-{flow_run}")
        assert evaluation.allowed and evaluation.receipt is not None
        assert evaluation.receipt.metadata == {"flow_run_id": flow_run}
        denied = await deny_before_evaluation_async(
            transport, GovernedCall("task", "docs", "write", {}, metadata={"flow_run_id": flow_run}), cap.id,
            guard="flow-scope", reason="outside the flow",
        )
        assert denied.receipt is not None and denied.receipt.metadata == {"flow_run_id": flow_run}
    finally:
        await transport.run(sc.close)
    stock = ChioClient(sidecar.url, timeout=30)
    stock_transport = as_transport(stock)
    try:
        dropped = await stock_transport.evaluate(call, capability_id=cap.id)
        assert dropped.allowed and dropped.receipt is not None and dropped.receipt.metadata is None
    finally:
        await stock_transport.run(stock.close)
    listed = _listed(sidecar, "--flow-run", flow_run, "--oldest-first")
    assert [r["id"] for r in listed] == [evaluation.receipt_id, denied.receipt_id]
