"""Issue 12 §2 over HTTP: a deny a layer takes before evaluation is signed and chained by the sidecar's kernel.

Driven through the real sidecar by ``chio_kernel.SidecarClient`` (what the Prefect and Temporal
layers use), and through the layers' transport routing (``chio_durable._denial_record``).
"""

from __future__ import annotations

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from chio_sdk.testing import allow_all

from chio_durable import GovernedCall, as_transport
from chio_durable._denial_record import deny_before_evaluation, deny_before_evaluation_async
from chio_kernel import SidecarClient
from chio_sidecar_harness import Sidecar


def scope(server: str, tool: str = "*") -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])])


async def test_a_denial_recorded_through_the_sidecar_is_in_the_chain(sidecar: Sidecar) -> None:
    sc = SidecarClient(sidecar.url)
    transport = as_transport(sc)  # drives the client on the kernel loop, as the layers do
    try:
        cap = await transport.run(lambda: sc.create_capability(subject="agent:t", scope=scope("files")))
        call = GovernedCall("task", "fs-srv", "write_file", {"path": "/etc/passwd"})
        evaluation = await deny_before_evaluation_async(
            transport, call, cap.id, guard="flow-scope", reason="outside the flow", envelope=scope("files")
        )
        assert not evaluation.allowed and evaluation.receipt_id and evaluation.guard == "flow-scope"
        stored = httpx.get(f"{sidecar.url}/v1/receipts/{evaluation.receipt_id}", timeout=30).json()
        assert stored["decision"]["verdict"] == "deny" and stored["capability_id"] == cap.id
        assert stored["action"]["parameters"] == {"path": "/etc/passwd"}
        receipt = evaluation.receipt
        assert receipt is not None and await transport.run(lambda: sc.verify_receipt(receipt)) is True
        assert httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=30).json()["ok"] is True
        # no capability at all (a Temporal workflow without a grant): capability_id ""
        none = deny_before_evaluation(transport, call, None, guard="workflow-grant", reason="no grant")
        assert none.receipt_id and none.receipt is not None and none.receipt.capability_id == ""
    finally:
        await transport.run(sc.close)


def test_the_kernel_decides_what_it_signs(sidecar: Sidecar) -> None:
    body = {"capability_id": "", "tool_server": "fs-srv", "tool_name": "write_file", "parameters": {},
            "guard": "flow-scope", "reason": "outside"}
    # the envelope covers the call: not a flow-scope deny, the kernel refuses to sign it
    inside = httpx.post(f"{sidecar.url}/v1/receipts/denials", timeout=30,
                        json={**body, "envelope": scope("fs-srv").model_dump(mode="json")})
    assert inside.status_code == 422 and "evaluate the call instead" in inside.text
    # a layer cannot sign a deny in the name of one of the kernel's own guards
    forged = httpx.post(f"{sidecar.url}/v1/receipts/denials", timeout=30, json={**body, "guard": "scope"})
    assert forged.status_code == 422 and "kernel's own" in forged.text
    malformed = httpx.post(f"{sidecar.url}/v1/receipts/denials", timeout=30, json={**body, "parameters": [1]})
    assert malformed.status_code == 422


def test_clients_without_a_chain_keep_the_deny_local_and_say_so() -> None:
    call = GovernedCall("task", "fs-srv", "write_file", {})
    for client in (allow_all(), ChioClient("http://127.0.0.1:9")):  # a mock; a stock ChioClient
        evaluation = deny_before_evaluation(as_transport(client), call, "cap-x", guard="flow-scope", reason="outside")
        assert not evaluation.allowed and evaluation.receipt_id is None
        assert evaluation.decision["recorded"] is False and evaluation.guard == "flow-scope"


def test_a_sidecar_that_cannot_record_still_denies() -> None:
    sc = SidecarClient("http://127.0.0.1:9")  # nothing listens there
    evaluation = deny_before_evaluation(
        as_transport(sc), GovernedCall("task", "s", "t", {}), "cap-x", guard="flow-scope", reason="outside"
    )
    assert not evaluation.allowed and evaluation.receipt_id is None and evaluation.decision["recorded"] is False
