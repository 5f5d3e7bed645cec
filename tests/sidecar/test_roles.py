"""The sidecar's modes and roles (docs/security.md): who each request is, which routes admit which
role, the principal signed into the receipts it causes, and pending calls failing closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import CallerIdentity
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
    with pytest.raises(SidecarConfigError, match="--auth roles takes no --token"):
        check_bind("127.0.0.1", "s", "roles")
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
    http_cap = kernel.create_capability("agent:a", {"grants": [
        {"server_id": "http", "tool_name": "GET /items/{id}", "operations": ["Invoke"]}]}, 600).id
    http = {"request_id": "r-1", "method": "GET", "route_pattern": "/items/{id}", "path": "/items/7", "timestamp": 1,
            "caller": CallerIdentity.anonymous().model_dump(mode="json"), "capability_id": http_cap}
    r = client.post("/chio/evaluate", json=http, headers=_bearer(tokens["worker-1"]))
    tool = kernel.get_receipt(r.json()["receipt"]["metadata"]["chio_receipt_id"])
    assert r.json()["verdict"]["verdict"] == "allow" and tool is not None
    assert tool.metadata == {"chio_role": "workload", "chio_principal": "worker-1"}


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
    by_id = {a["id"]: a for a in everyone}  # newest first: theirs, then mine
    assert [a["id"] for a in everyone] == [aid_theirs, aid_mine]
    assert by_id[aid_mine]["requested_by"] == {"role": "workload", "name": "worker-1"}


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


def test_a_workload_settles_and_releases_only_its_own_holds(roles: Any) -> None:
    kernel, client, tokens = roles
    budget = {**REFUND, "max_total_cost": {"units": 10_000, "currency": "USD"}}
    cap = kernel.create_capability("agent:a", {"grants": [budget]}, 600).id
    one, two = _bearer(tokens["worker-1"]), _bearer(tokens["worker-2"])
    cost = {"units": 500, "currency": "USD"}
    mine = client.post("/v1/evaluate", json=_call(cap, cost=cost, idempotency_key="k1"), headers=one).json()["id"]
    theirs = client.post("/v1/evaluate", json=_call(cap, cost=cost, idempotency_key="k2"), headers=two).json()["id"]
    count = kernel.receipt_count()
    settle = {"actual_cost": {"units": 0, "currency": "USD"}, "op_id": "op-1"}
    for path, body in ((f"/v1/receipts/{theirs}/settle", settle), (f"/v1/receipts/{theirs}/release", {"op_id": "op-1"})):
        r = client.post(path, json=body, headers=one)
        assert r.status_code == 403 and "not caused by credential 'worker-1'" in r.json()["message"], r.text
    assert client.get(f"/v1/receipts/{theirs}/hold", headers=one).status_code == 403
    assert kernel.receipt_count() == count and (kernel.get_hold(theirs) or {})["state"] == "open"
    r = client.post(f"/v1/receipts/{mine}/settle", json={**settle, "actual_cost": cost}, headers=one)
    assert r.status_code == 200 and r.json()["metadata"]["chio_principal"] == "worker-1", r.text
    # the operator may settle anyone's
    ops = _bearer(tokens["ops"])
    r = client.post(f"/v1/receipts/{theirs}/release", json={"op_id": "op-9"}, headers=ops)
    assert r.status_code == 200 and r.json()["metadata"]["chio_principal"] == "ops"


def test_a_two_person_grant_runs_only_after_two_distinct_approvers(roles: Any) -> None:
    kernel, client, tokens = roles
    tokens["bob"] = kernel.add_credential("bob", "approver")
    two = {"type": "require_approval_above", "value": {"threshold_units": 0, "approvers": 2}}
    issued = client.post("/v1/capabilities", headers=_bearer(tokens["ops"]),
                         json={"subject": "agent:a", "scope": {"grants": [{**REFUND, "constraints": [two]}]}})
    assert issued.status_code == 200, issued.text
    cap = issued.json()["id"]
    worker = _bearer(tokens["worker-1"], **UNDERSTOOD)
    pending = client.post("/v1/evaluate", json=_call(cap, idempotency_key="k"), headers=worker).json()
    aid = pending["metadata"]["pending_approval"]["approval_id"]
    assert pending["metadata"]["pending_approval"]["approvals_needed"] == 2
    assert "2 distinct approvers must approve" in pending["decision"]["reason"]

    def answer(who: str) -> Any:
        return client.post(f"/approvals/{aid}/operator-respond", json={"outcome": "approved"}, headers=_bearer(tokens[who]))

    def rerun() -> str:
        body = _call(cap, idempotency_key="k:approved", approval_id=aid)
        return str(client.post("/v1/evaluate", json=body, headers=worker).json()["decision"]["verdict"])

    first = answer("alice")
    assert first.status_code == 200 and first.json()["approval"]["status"] == "pending"
    assert first.json()["receipt"]["decision"]["reason"] == "approved by alice (1 of 2): approved"
    assert rerun() == "pending_approval"  # one approval is not enough: the call does not run
    again = answer("alice")  # the same approver twice does not count twice
    assert again.status_code == 409 and "counts once" in again.json()["message"]
    assert rerun() == "pending_approval"
    second = answer("bob")
    assert second.status_code == 200 and second.json()["approval"]["status"] == "approved"
    approval = second.json()["approval"]
    assert [a["name"] for a in approval["approvals"]] == ["alice", "bob"] and approval["approvals_needed"] == 2
    receipts = [first.json()["receipt"], second.json()["receipt"]]
    assert len({r["id"] for r in receipts}) == 2  # each answer is its own signed receipt
    assert all(kernel.verify_receipt(kernel.get_receipt(r["id"])) for r in receipts)
    assert rerun() == "allow" and kernel.verify_chain().ok


def test_a_credential_store_that_cannot_answer_is_503_not_a_pass(tmp_path: Path) -> None:
    import sqlite3

    with Kernel(tmp_path / "k") as kernel:
        token = kernel.add_credential("w", "workload")
        app = create_app(kernel, auth="roles")

        def locked(_token: str) -> Principal | None:
            raise sqlite3.OperationalError("database is locked")

        app.auth._authenticate = locked
        r = TestClient(app).post("/v1/evaluate", json=_call("cap-x"), headers=_bearer(token))
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"


def test_a_workloads_pages_holds_and_form_denies_stay_its_own(roles: Any) -> None:
    kernel, client, tokens = roles
    cap = kernel.create_capability("agent:a", {"grants": [{**REFUND, "constraints": [APPROVE_ALL]}]}, 600).id
    one, two = _bearer(tokens["worker-1"], **UNDERSTOOD), _bearer(tokens["worker-2"], **UNDERSTOOD)
    mine = client.post("/v1/evaluate", json=_call(cap), headers=one).json()
    theirs = client.post("/v1/evaluate", json=_call(cap, parameters={"order": "B"}), headers=two).json()
    # position paging (after_seq) filters a workload's receipts as the first page does
    paged = client.get("/v1/receipts", params={"after_seq": 0}, headers=one).json()["receipts"]
    assert [r["id"] for r in paged] == [mine["id"]]
    # the hold listing is for approvers and operators
    assert client.get("/v1/holds", headers=one).status_code == 403
    assert client.get("/v1/holds", headers=_bearer(tokens["alice"])).status_code == 200
    # the engine form's deny stops only the workload's own waiting call
    aid_theirs = theirs["metadata"]["pending_approval"]["approval_id"]
    aid_mine = mine["metadata"]["pending_approval"]["approval_id"]
    before = kernel.receipt_count()
    assert client.post(f"/approvals/{aid_theirs}/form-deny", json={"reason": "no"}, headers=one).status_code == 403
    assert kernel.receipt_count() == before and kernel.get_approval(aid_theirs)["status"] == "pending"
    assert client.post(f"/approvals/{aid_mine}/form-deny", json={"reason": "no"}, headers=one).status_code == 200
    assert kernel.get_approval(aid_mine)["status"] == "denied"
