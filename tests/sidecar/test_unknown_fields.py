"""Unknown fields in a POST body are refused with a 422 naming them (a misspelt optional field must
not be dropped and the call run without it); exactly what the stock chio_sdk.ChioClient sends passes."""

from __future__ import annotations

import httpx
from chio_sdk import ChioClient
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant
from chio_sidecar_harness import Sidecar

from chio_kernel import SidecarClient


def _budget_cap(url: str) -> str:
    body = {"subject": "agent:fields", "scope": {"grants": [{
        "server_id": "llm", "tool_name": "complete", "operations": ["Invoke"],
        "max_total_cost": {"units": 1000, "currency": "USD"}}]}}
    made = httpx.post(url + "/v1/capabilities", json=body, timeout=30)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def _refused(answer: httpx.Response, *names: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    for name in names:
        assert repr(name) in answer.json()["message"], answer.text


def test_misspelt_idempotency_key_is_refused_and_nothing_is_held(sidecar: Sidecar) -> None:
    url = sidecar.url
    cap = _budget_cap(url)
    call = {"capability_id": cap, "tool_server": "llm", "tool_name": "complete", "parameters": {"p": 1},
            "cost": {"units": 100, "currency": "USD"}}
    before = httpx.get(url + "/v1/receipts", params={"capability_id": cap}, timeout=30).json()["receipts"]
    for _ in range(2):
        _refused(httpx.post(url + "/v1/evaluate", json={**call, "idempotencyKey": "k1"}, timeout=30), "idempotencyKey")
    after = httpx.get(url + "/v1/receipts", params={"capability_id": cap}, timeout=30).json()["receipts"]
    assert after == before  # no receipt, no hold
    budgets = httpx.get(url + f"/v1/capabilities/{cap}/budgets", timeout=30)
    if budgets.status_code == 200:
        assert all(row["held"] == 0 for row in budgets.json()["budgets"])
    _refused(httpx.post(url + "/v1/evaluate", json={**call, "cost": {"units": 1, "currency": "USD", "cents": 1}},
                        timeout=30), "cents")
    good = httpx.post(url + "/v1/evaluate", json={**call, "idempotency_key": "k1"}, timeout=30)
    assert good.status_code == 200 and good.json()["decision"]["verdict"] == "allow"
    rid = good.json()["id"]
    _refused(httpx.post(url + f"/v1/receipts/{rid}/settle", json={"actual_cost": {"units": 50, "currency": "USD"},
                                                                  "op_id": "s1", "opId": "s1"}, timeout=30), "opId")
    _refused(httpx.post(url + f"/v1/receipts/{rid}/release", json={"op_id": "r1", "why": "x"}, timeout=30), "why")
    _refused(httpx.post(url + "/v1/capabilities", json={"subject": "s", "scope": {"grants": []}, "ttl": 5},
                        timeout=30), "ttl")
    _refused(httpx.post(url + "/v1/receipts/verify", json={**good.json(), "extra": 1}, timeout=30), "extra")


async def test_the_stock_client_and_ours_send_only_accepted_fields(sidecar: Sidecar) -> None:
    scope = ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read", operations=[Operation.INVOKE])])
    async with ChioClient(sidecar.url, timeout=30) as stock:
        token = await stock.create_capability(subject="agent:stock", scope=scope, ttl_seconds=600)
        assert await stock.validate_capability(token)
        child = await stock.attenuate_capability(token, new_scope=scope)
        receipt = await stock.evaluate_tool_call(capability_id=child.id, tool_server="fs", tool_name="read",
                                                 parameters={"path": "/a"})
        assert receipt.decision.verdict == "allow"
        assert await stock.verify_receipt(receipt)
    budget = _budget_cap(sidecar.url)
    async with SidecarClient(sidecar.url) as ours:
        held = await ours.evaluate_tool_call(capability_id=budget, tool_server="llm", tool_name="complete",
                                             parameters={}, idempotency_key="ours-1",
                                             cost=MonetaryAmount(units=10, currency="USD"), metadata={"run": "r"})
        assert held.decision.verdict == "allow"
        settled = await ours.settle(held.id, MonetaryAmount(units=5, currency="USD"), "ours-s1")
        assert settled.decision.verdict == "allow"


async def test_form_deny_over_http_records_a_signed_deny(sidecar: Sidecar) -> None:
    made = httpx.post(sidecar.url + "/v1/capabilities", timeout=30, json={"subject": "agent:form", "scope": {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}]}]}}).json()
    async with SidecarClient(sidecar.url) as ours:
        pending = await ours.evaluate_tool_call(capability_id=made["id"], tool_server="shop", tool_name="refund",
                                                parameters={"o": 1})
        approval_id = pending.metadata["pending_approval"]["approval_id"]
        _refused(httpx.post(sidecar.url + f"/approvals/{approval_id}/form-deny", json={"outcome": "approved"},
                            timeout=30), "outcome")
        deny = await ours.record_form_denial(approval_id, "no")
        assert deny.decision.verdict == "deny" and deny.metadata["form_denial"]["authenticated"] is False
        assert (await ours.get_approval(approval_id))["status"] == "denied"
