"""The sidecar's modes and roles (docs/security.md): who each request is, which routes admit which
role, the principal signed into the receipts it causes, and pending calls failing closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from chio_kernel import Kernel, Principal
from chio_kernel.sidecar import SidecarConfigError, check_bind, create_app

REFUND = {"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"]}
APPROVE_ALL = {"type": "require_approval_above", "value": {"threshold_units": 0}}
UNDERSTOOD = {"X-Chio-Pending": "understood"}


def _call(cap: str, **extra: Any) -> dict[str, Any]:
    return {"capability_id": cap, "tool_server": "shop", "tool_name": "refund", "parameters": {"order": "A-1"}, **extra}


def _bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


@pytest.fixture
def roles(tmp_path: Path) -> Any:
    kernel = Kernel(tmp_path / "k")
    tokens = {name: kernel.add_credential(name, role) for name, role in
              (("worker-1", "workload"), ("worker-2", "workload"), ("alice", "approver"), ("ops", "operator"))}
    yield kernel, TestClient(create_app(kernel, auth="roles")), tokens
    kernel.close()


def test_modes_are_chosen_checked_and_said_in_health(tmp_path: Path) -> None:
    assert check_bind("127.0.0.1", None) == "open" and check_bind("127.0.0.1", "s") == "token"
    assert check_bind("0.0.0.0", None, "roles") == "roles" and check_bind("0.0.0.0", "s") == "token"
    with pytest.raises(SidecarConfigError, match="open mode"):
        check_bind("0.0.0.0", None)
    with pytest.raises(SidecarConfigError, match="'open' or 'roles'"):
        check_bind("127.0.0.1", None, "everyone")
    with Kernel(tmp_path / "k") as kernel:
        assert TestClient(create_app(kernel)).get("/chio/health").json()["auth"] == "open"
        token = kernel.add_credential("ops", "operator")
        client = TestClient(create_app(kernel, auth="roles"))
        assert client.get("/chio/health").status_code == 401
        assert client.get("/chio/health", headers=_bearer(token)).json()["auth"] == "roles"


def test_every_request_needs_a_live_credential_in_roles_mode(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [REFUND]}, 600).id
    for headers in ({}, _bearer("nope"), _bearer(tokens["ops"][:-2]), {"Authorization": f"Basic {tokens['ops']}"}):
        r = client.post("/v1/evaluate", json=_call(cap), headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert "credentials add" in r.json()["message"]
    assert client.post("/v1/evaluate", json=_call(cap), headers=_bearer(tokens["worker-1"])).status_code == 200
    kernel.revoke_credential("worker-1")
    assert client.post("/v1/evaluate", json=_call(cap), headers=_bearer(tokens["worker-1"])).status_code == 401


def test_each_route_admits_only_its_roles(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [REFUND]}, 600).id
    scope = {"grants": [REFUND]}
    worker, alice, ops = (_bearer(tokens[n]) for n in ("worker-1", "alice", "ops"))
    refused = [
        ("POST", "/v1/capabilities", {"subject": "x", "scope": scope}, worker),
        ("POST", "/v1/capabilities", {"subject": "x", "scope": scope}, alice),
        ("GET", "/v1/capabilities", None, worker),
        ("POST", f"/v1/capabilities/{cap}/revoke", None, worker),
        ("POST", "/v1/evaluate", _call(cap), alice),
        ("POST", "/v1/holds/expire", None, worker),
        ("POST", "/approvals/apr-x/operator-respond", {"outcome": "approved"}, worker),
    ]
    for method, path, body, headers in refused:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
    assert client.post("/v1/capabilities", json={"subject": "x", "scope": scope}, headers=ops).status_code == 200
    assert client.post("/v1/evaluate", json=_call(cap), headers=worker).status_code == 200
    assert client.get("/approvals/pending", headers=alice).status_code == 200


def test_the_principal_is_signed_into_every_receipt_it_causes(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [REFUND]}, 600).id
    body = _call(cap, metadata={"flow_run_id": "f-1", "chio_principal": "ops", "chio_role": "operator"})
    r = client.post("/v1/evaluate", json=body, headers=_bearer(tokens["worker-1"]))
    receipt = kernel.get_receipt(r.json()["id"])
    assert receipt is not None and kernel.verify_receipt(receipt)
    # the caller cannot speak for another principal: the sidecar sets who asked
    assert receipt.metadata == {"flow_run_id": "f-1", "chio_role": "workload", "chio_principal": "worker-1"}
    denial = {"capability_id": cap, "tool_server": "shop", "tool_name": "refund", "guard": "my-layer",
              "reason": "no", "parameters": {}}
    r = client.post("/v1/receipts/denials", json=denial, headers=_bearer(tokens["worker-1"]))
    assert r.json()["metadata"] == {"chio_role": "workload", "chio_principal": "worker-1"}


def test_a_workload_reads_only_its_own_receipts_and_approvals(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [{**REFUND, "constraints": [APPROVE_ALL]}]}, 600).id
    one, two = _bearer(tokens["worker-1"], **UNDERSTOOD), _bearer(tokens["worker-2"], **UNDERSTOOD)
    mine = client.post("/v1/evaluate", json=_call(cap), headers=one).json()
    theirs = client.post("/v1/evaluate", json=_call(cap, parameters={"order": "B"}), headers=two).json()
    assert client.get(f"/v1/receipts/{mine['id']}", headers=one).status_code == 200
    assert client.get(f"/v1/receipts/{theirs['id']}", headers=one).status_code == 403
    assert [r["id"] for r in client.get("/v1/receipts", headers=one).json()["receipts"]] == [mine["id"]]
    aid_mine = mine["metadata"]["pending_approval"]["approval_id"]
    aid_theirs = theirs["metadata"]["pending_approval"]["approval_id"]
    assert [a["id"] for a in client.get("/approvals/pending", headers=one).json()["approvals"]] == [aid_mine]
    assert client.get(f"/approvals/{aid_theirs}", headers=one).status_code == 403
    everyone = client.get("/approvals/pending", headers=_bearer(tokens["alice"])).json()["approvals"]
    assert {a["id"] for a in everyone} == {aid_mine, aid_theirs}
    assert everyone[0]["requested_by"] == {"role": "workload", "name": "worker-1"}


def test_an_approver_answers_named_and_the_call_then_runs(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [{**REFUND, "constraints": [APPROVE_ALL]}]}, 600).id
    worker = _bearer(tokens["worker-1"], **UNDERSTOOD)
    aid = client.post("/v1/evaluate", json=_call(cap), headers=worker).json()["metadata"]["pending_approval"]["approval_id"]
    r = client.post(f"/approvals/{aid}/operator-respond", json={"outcome": "approved"}, headers=_bearer(tokens["alice"]))
    assert r.status_code == 200, r.text
    res = r.json()["receipt"]["metadata"]["approval_resolution"]
    assert (res["approver"], res["approver_role"]) == ("alice", "approver")
    again = client.post("/v1/evaluate", json=_call(cap, approval_id=aid), headers=worker).json()
    assert again["decision"]["verdict"] == "allow"


def test_the_operator_whose_call_waits_cannot_approve_it(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [{**REFUND, "constraints": [APPROVE_ALL]}]}, 600).id
    ops = _bearer(tokens["ops"], **UNDERSTOOD)
    aid = client.post("/v1/evaluate", json=_call(cap), headers=ops).json()["metadata"]["pending_approval"]["approval_id"]
    count = kernel.receipt_count()
    r = client.post(f"/approvals/{aid}/operator-respond", json={"outcome": "approved"}, headers=ops)
    assert r.status_code == 403 and "cannot approve" in r.json()["message"]
    assert kernel.receipt_count() == count


def test_a_client_that_does_not_understand_pending_gets_a_signed_deny(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [{**REFUND, "constraints": [APPROVE_ALL]}]}, 600).id
    r = client.post("/v1/evaluate", json=_call(cap), headers=_bearer(tokens["worker-1"])).json()
    assert r["decision"]["verdict"] == "deny" and r["decision"]["guard"] == "approval"
    aid = r["metadata"]["pending_approval"]["approval_id"]
    assert f"chio-durable approvals approve {aid}" in r["decision"]["reason"]
    assert r["metadata"]["chio_principal"] == "worker-1"
    assert [a["id"] for a in kernel.list_approvals()] == [aid]  # still recorded, answerable
    receipt = kernel.get_receipt(r["id"])
    assert receipt is not None and kernel.verify_receipt(receipt) and kernel.verify_chain().ok
    # our clients say they understand, and get the pending receipt (the same one again: idempotent)
    ok = client.post("/v1/evaluate", json=_call(cap), headers=_bearer(tokens["worker-1"], **UNDERSTOOD)).json()
    assert ok["decision"]["verdict"] == "pending_approval"


def test_request_state_principal_is_set_for_every_route(tmp_path: Path) -> None:
    seen: list[Principal] = []

    async def probe(request: Request) -> JSONResponse:
        seen.append(request.state.principal)
        return JSONResponse({})

    with Kernel(tmp_path / "k") as kernel:
        token = kernel.add_credential("alice", "approver")
        app = create_app(kernel, auth="roles")
        app.router.routes.append(Route("/probe", probe))
        TestClient(app).get("/probe", headers=_bearer(token))
        open_app = create_app(kernel)
        open_app.router.routes.append(Route("/probe", probe))
        TestClient(open_app).get("/probe")
    assert seen == [Principal("approver", "alice"), Principal("operator", "open")]
