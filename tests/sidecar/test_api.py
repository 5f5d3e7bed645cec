"""The sidecar's wire API, driven by the real chio_sdk.ChioClient over loopback."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.errors import ChioError, ChioValidationError
from chio_sdk.models import (
    CallerIdentity,
    CapabilityToken,
    ChioReceipt,
    ChioScope,
    Constraint,
    MonetaryAmount,
    Operation,
    ToolGrant,
)

from chio_kernel import SidecarClient
from chio_sidecar_harness import Sidecar

INVOKE = [Operation.INVOKE]


def grant(server: str = "files", tool: str = "read_file", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=kw.pop("operations", INVOKE), **kw)


async def issue(client: ChioClient, *grants: ToolGrant, ttl: int = 600) -> CapabilityToken:
    return await client.create_capability(
        subject=f"agent:test-{uuid.uuid4().hex[:8]}", scope=ChioScope(grants=list(grants)), ttl_seconds=ttl
    )


async def call(client: ChioClient, cap: CapabilityToken | str, server: str = "files", tool: str = "read_file",
               **params: Any) -> ChioReceipt:
    cid = cap if isinstance(cap, str) else cap.id
    return await client.evaluate_tool_call(capability_id=cid, tool_server=server, tool_name=tool, parameters=params)


def post(sidecar: Sidecar, path: str, body: Any) -> httpx.Response:
    return httpx.post(sidecar.url + path, json=body, timeout=30)


def assert_denied(receipt: ChioReceipt, guard: str) -> None:
    assert receipt.is_denied, f"expected a {guard} deny, got {receipt.decision}"
    assert receipt.decision.guard == guard, receipt.decision
    assert receipt.decision.reason, "a deny must say why"
    assert len(receipt.signature) == 128 and len(receipt.kernel_key) == 64


# --- capabilities -----------------------------------------------------------------------------


async def test_health_names_the_kernel_key(client: ChioClient) -> None:
    health = await client.health()
    assert health["status"] == "ok"
    assert len(health["kernel_key"]) == 64
    assert health["store"] == "sqlite" and "store_url" not in health  # the default store, in the data dir


async def test_issue_and_validate(client: ChioClient) -> None:
    token = await issue(client, grant())
    assert token.scope.grants[0].tool_name == "read_file"
    assert token.expires_at - token.issued_at == 600
    assert await client.validate_capability(token) is True
    # any change to the signed body invalidates it
    forged = token.model_copy(update={"scope": ChioScope(grants=[grant(tool="*")])})
    assert await client.validate_capability(forged) is False
    foreign = token.model_copy(update={"signature": "00" * 64})
    assert await client.validate_capability(foreign) is False


async def test_validate_says_why(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant())
    async with SidecarClient(sidecar.url) as admin:
        await admin.revoke_capability(token.id)
    r = post(sidecar, "/v1/capabilities/validate", token.model_dump(exclude_none=True))
    assert r.status_code == 200
    assert r.json()["valid"] is False and "revok" in r.json()["reason"].lower()


async def test_create_with_chosen_id_and_read_it_back(client: ChioClient, sidecar: Sidecar) -> None:
    cid = f"cap-research-{uuid.uuid4().hex[:6]}"
    body = {"subject": "agent:my-pipeline", "scope": ChioScope(grants=[grant()]).model_dump(), "id": cid}
    r = post(sidecar, "/v1/capabilities", body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == cid
    got = httpx.get(f"{sidecar.url}/v1/capabilities/{cid}").json()
    assert CapabilityToken.model_validate(got) == CapabilityToken.model_validate(r.json())
    listed = httpx.get(f"{sidecar.url}/v1/capabilities").json()["capabilities"]
    assert cid in {t["id"] for t in listed}
    assert httpx.get(f"{sidecar.url}/v1/capabilities/cap-nope-{uuid.uuid4().hex}").status_code == 404


async def test_attenuate_subset_ok_superset_refused(client: ChioClient, sidecar: Sidecar) -> None:
    parent = await issue(client, grant(tool="*", operations=[Operation.INVOKE, Operation.READ]))
    child = await client.attenuate_capability(parent, new_scope=ChioScope(grants=[grant()]))
    assert child.id != parent.id
    assert child.delegation_chain and child.delegation_chain[-1].capability_id == parent.id
    assert child.expires_at <= parent.expires_at
    assert await client.validate_capability(child) is True
    assert (await call(client, child, path="/a")).is_allowed
    assert_denied(await call(client, child, tool="write_file", path="/a"), "scope")

    superset = ChioScope(grants=[grant(server="*", tool="*")])
    with pytest.raises(ChioValidationError):  # the real client refuses locally...
        await client.attenuate_capability(child, new_scope=superset)
    # ...and the sidecar refuses too when asked directly
    r = post(sidecar, "/v1/capabilities/attenuate",
             {"parent_token": child.model_dump(exclude_none=True), "new_scope": superset.model_dump()})
    assert r.status_code == 400, r.text
    assert r.json()["error"] and r.json()["message"]
    # unknown parent
    ghost = child.model_copy(update={"id": f"cap-ghost-{uuid.uuid4().hex}"})
    r = post(sidecar, "/v1/capabilities/attenuate",
             {"parent_token": ghost.model_dump(exclude_none=True), "new_scope": ChioScope().model_dump()})
    assert r.status_code == 404 and "ghost" in r.json()["message"]

    # revoking the parent cascades to the child
    r = post(sidecar, f"/v1/capabilities/{parent.id}/revoke", {})
    assert r.status_code == 200 and set(r.json()["revoked"]) >= {parent.id, child.id}
    assert_denied(await call(client, child, path="/a"), "revocation")


async def test_misspelt_scope_field_is_refused_not_dropped(client: ChioClient, sidecar: Sidecar) -> None:
    # "constraint" (typo for "constraints") would be dropped by pydantic: a capability WITHOUT the
    # path constraint. The sidecar runs the kernel's unknown-field check and refuses, naming the field.
    typo = {"grants": [{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"],
                        "constraint": [{"type": "path_prefix", "value": "/data"}]}]}
    before = len(httpx.get(sidecar.url + "/v1/capabilities", timeout=30).json()["capabilities"])
    r = post(sidecar, "/v1/capabilities", {"subject": "agent:typo", "scope": typo})
    assert r.status_code == 422, r.text
    assert "grants[0].constraint" in r.json()["message"]
    assert len(httpx.get(sidecar.url + "/v1/capabilities", timeout=30).json()["capabilities"]) == before
    parent = await issue(client, grant())
    r = post(sidecar, "/v1/capabilities/attenuate", {"parent_token": parent.id, "new_scope": typo})
    assert r.status_code == 422, r.text
    assert "new_scope" in r.json()["message"] and "grants[0].constraint" in r.json()["message"]
    nested = {"grants": [{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"],
                          "constraints": [{"type": "path_prefix", "valeu": "/data"}]}]}
    r = post(sidecar, "/v1/capabilities", {"subject": "agent:typo", "scope": nested})
    assert r.status_code == 422 and "grants[0].constraints[0].valeu" in r.json()["message"]


# --- evaluation: allow, and a deny by every guard ---------------------------------------------


async def test_allow_receipt_is_signed_and_verifies(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant())
    receipt = await call(client, token, path="/data/x")
    assert receipt.is_allowed
    assert receipt.id.startswith("rcpt-") and receipt.capability_id == token.id
    assert receipt.action.parameters == {"path": "/data/x"}
    assert await client.verify_receipt(receipt) is True
    stored = httpx.get(f"{sidecar.url}/v1/receipts/{receipt.id}").json()
    assert ChioReceipt.model_validate(stored) == receipt
    tampered = receipt.model_copy(update={"action": receipt.action.model_copy(update={"parameters": {"path": "/etc"}})})
    assert await client.verify_receipt(tampered) is False
    flipped = receipt.model_copy(update={"tool_name": "write_file"})
    assert await client.verify_receipt(flipped) is False


async def test_parameter_hash_is_the_kernels_not_the_clients(sidecar: Sidecar, client: ChioClient) -> None:
    token = await issue(client, grant())
    body = {"capability_id": token.id, "tool_server": "files", "tool_name": "read_file",
            "parameters": {"path": "/x"}, "parameter_hash": "f" * 64}
    r = post(sidecar, "/v1/evaluate", body)
    assert r.status_code == 200
    assert r.json()["action"]["parameter_hash"] != "f" * 64


async def test_deny_signature_unknown_capability(client: ChioClient) -> None:
    receipt = await call(client, f"cap-unknown-{uuid.uuid4().hex}", path="/x")
    assert_denied(receipt, "signature")
    assert await client.verify_receipt(receipt) is True  # a deny is a signed receipt too


async def test_deny_time_expired(client: ChioClient) -> None:
    token = await issue(client, grant(), ttl=1)
    assert (await call(client, token, path="/x")).is_allowed
    while time.time() < token.expires_at:
        time.sleep(0.05)
    assert_denied(await call(client, token, path="/x"), "time")


async def test_deny_revocation(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant())
    assert (await call(client, token, path="/x")).is_allowed
    r = post(sidecar, f"/v1/capabilities/{token.id}/revoke", {})
    assert r.status_code == 200 and r.json()["revoked"] == [token.id]
    assert_denied(await call(client, token, path="/x"), "revocation")
    assert post(sidecar, f"/v1/capabilities/cap-nope-{uuid.uuid4().hex}/revoke", {}).status_code == 404


async def test_deny_scope_server_tool_operation(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant())
    assert_denied(await call(client, token, tool="delete_file", path="/x"), "scope")
    assert_denied(await call(client, token, server="shell", path="/x"), "scope")
    body = {"capability_id": token.id, "tool_server": "files", "tool_name": "read_file",
            "parameters": {"path": "/x"}, "operation": "Read"}
    r = post(sidecar, "/v1/evaluate", body)
    assert r.status_code == 200
    assert ChioReceipt.model_validate(r.json()).decision.guard == "scope"
    wild = await issue(client, grant(server="files", tool="*"))
    assert (await call(client, wild, tool="anything", path="/x")).is_allowed


@pytest.mark.parametrize(
    ("constraint", "ok", "bad"),
    [
        (Constraint.path_prefix("/data/"), {"path": "/data/a.txt"}, {"path": "/etc/passwd"}),
        (Constraint.domain_exact("example.com"), {"url": "https://example.com/a"}, {"url": "https://evil.com/a"}),
        (Constraint.domain_glob("*.example.com"), {"url": "https://api.example.com/x"}, {"url": "https://example.org/"}),
        (Constraint.regex_match("^[a-z]+$"), {"q": "hello"}, {"q": "Hello World!"}),
        (Constraint.max_length(5), {"q": "abc"}, {"q": "abcdefgh"}),
    ],
    ids=lambda v: v.type if isinstance(v, Constraint) else None,
)
async def test_deny_each_constraint(client: ChioClient, constraint: Constraint, ok: dict, bad: dict) -> None:
    token = await issue(client, grant(constraints=[constraint]))
    assert (await call(client, token, **ok)).is_allowed
    assert_denied(await call(client, token, **bad), "constraints")


async def test_deny_max_invocations(client: ChioClient) -> None:
    token = await issue(client, grant(max_invocations=2))
    assert (await call(client, token, path="/a")).is_allowed
    assert (await call(client, token, path="/b")).is_allowed
    assert_denied(await call(client, token, path="/c"), "max_invocations")


async def test_deny_cost(sidecar: Sidecar, client: ChioClient) -> None:
    usd = lambda n: MonetaryAmount(units=n, currency="USD")  # noqa: E731
    token = await issue(client, grant(max_cost_per_invocation=usd(100), max_total_cost=usd(250)))

    def evaluate(units: int, currency: str = "USD") -> ChioReceipt:
        r = post(sidecar, "/v1/evaluate", {"capability_id": token.id, "tool_server": "files",
                                           "tool_name": "read_file", "parameters": {"path": "/x"},
                                           "cost": {"units": units, "currency": currency}})
        assert r.status_code == 200, r.text
        return ChioReceipt.model_validate(r.json())

    assert_denied(evaluate(150), "cost")  # over the per-invocation cap
    assert evaluate(100).is_allowed
    assert evaluate(100).is_allowed
    assert_denied(evaluate(100), "cost")  # 300 > total 250
    assert evaluate(50).is_allowed  # exactly the budget left
    assert_denied(evaluate(1, "EUR"), "cost")


async def test_deny_rate_limit(sidecar: Sidecar) -> None:
    body = {"subject": "agent:rl", "scope": ChioScope(grants=[grant()]).model_dump(),
            "rate_limit": {"max_calls": 2, "per_seconds": 60}}
    r = post(sidecar, "/v1/capabilities", body)
    assert r.status_code == 200, r.text
    cid = r.json()["id"]
    async with ChioClient(sidecar.url) as c:
        assert (await call(c, cid, path="/a")).is_allowed
        assert (await call(c, cid, path="/b")).is_allowed
        assert_denied(await call(c, cid, path="/c"), "rate-limit-guard")
    bad = dict(body, rate_limit={"max_calls": "two"})
    assert post(sidecar, "/v1/capabilities", bad).status_code == 422


# --- idempotency over the wire ----------------------------------------------------------------


async def test_idempotency_same_key_same_receipt(sidecar: Sidecar, client: ChioClient) -> None:
    from chio_durable._evaluation import evaluate

    token = await issue(client, grant(max_invocations=1))
    remote = SidecarClient(sidecar.url)  # sends the key; used on the evaluation core's own loop
    try:
        kw = dict(capability_id=token.id, tool_server="files", tool_name="read_file", parameters={"path": "/x"})
        first = await evaluate(remote, idempotency_key="run-1:call-0", **kw)
        again = await evaluate(remote, idempotency_key="run-1:call-0", **kw)
        assert first.allowed and again.allowed
        assert again.receipt_id == first.receipt_id  # the same receipt, budget charged once
        other = await evaluate(remote, idempotency_key="run-2:call-0", **kw)
        assert not other.allowed and other.guard == "max_invocations"
        async with SidecarClient(sidecar.url) as admin:
            assert await admin.revoke_capability(token.id) == [token.id]
        after = await evaluate(remote, idempotency_key="run-1:call-0", **kw)
        assert not after.allowed and after.guard == "revocation" and after.receipt_id != first.receipt_id
    finally:
        from chio_durable._evaluation import run_on_kernel_loop

        run_on_kernel_loop(remote.close())


# --- receipts: reads, chain --------------------------------------------------------------------


async def test_list_receipts_and_real_client_chain_check(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant())
    mine = [await call(client, token, path=f"/r{i}") for i in range(3)]
    r = httpx.get(f"{sidecar.url}/v1/receipts", params={"capability_id": token.id})
    assert r.status_code == 200
    listed = [ChioReceipt.model_validate(x) for x in r.json()["receipts"]]
    assert [x.id for x in listed] == [x.id for x in mine]

    everything = [ChioReceipt.model_validate(x) for x in
                  httpx.get(f"{sidecar.url}/v1/receipts", params={"limit": 10_000}).json()["receipts"]]
    assert len(everything) >= 3
    assert await client.verify_receipt_chain(everything) is True
    i = len(everything) // 2
    broken = list(everything)
    broken[i] = broken[i].model_copy(update={"timestamp": broken[i].timestamp + 1})
    assert await client.verify_receipt_chain(broken) is False

    page = httpx.get(f"{sidecar.url}/v1/receipts", params={"limit": 2}).json()
    assert [x["id"] for x in page["receipts"]] == [x.id for x in everything[:2]]
    page2 = httpx.get(f"{sidecar.url}/v1/receipts", params={"limit": 2, "after_seq": page["next_after_seq"]}).json()
    assert [x["id"] for x in page2["receipts"]] == [x.id for x in everything[2:4]]
    report = httpx.get(f"{sidecar.url}/v1/receipts/verify-chain").json()
    assert report["ok"] is True and report["count"] >= len(everything), report
    assert httpx.get(f"{sidecar.url}/v1/receipts/rcpt-nope").status_code == 404
    assert httpx.get(f"{sidecar.url}/v1/receipts", params={"limit": "x"}).status_code == 422


# --- HTTP-request evaluation ------------------------------------------------------------------


async def test_http_evaluate_and_verify(client: ChioClient, sidecar: Sidecar) -> None:
    token = await issue(client, grant(server="http", tool="GET /items/{id}"))
    caller = CallerIdentity.anonymous()
    allowed = await client.evaluate_http_request(
        request_id="req-1", method="GET", route_pattern="/items/{id}", path="/items/7",
        caller=caller, capability_id=token.id,
    )
    assert allowed.verdict.is_allowed and allowed.receipt.is_allowed
    assert allowed.receipt.capability_id == token.id
    assert await client.verify_http_receipt(allowed.receipt) is True
    tool_receipt_id = (allowed.receipt.metadata or {})["chio_receipt_id"]
    async with SidecarClient(sidecar.url) as admin:
        stored = await admin.get_receipt(tool_receipt_id)
    assert stored is not None and stored.tool_name == "GET /items/{id}"

    denied = await client.evaluate_http_request(
        request_id="req-2", method="DELETE", route_pattern="/items/{id}", path="/items/7",
        caller=caller, capability_token=token.model_dump_json(),
    )
    assert denied.verdict.is_denied and denied.verdict.guard == "scope"
    assert denied.receipt.response_status == 403
    assert await client.verify_http_receipt(denied.receipt) is True
    forged = denied.receipt.model_copy(update={"verdict": allowed.verdict})
    assert await client.verify_http_receipt(forged) is False

    mismatch = await client.evaluate_http_request(
        request_id="req-4", method="GET", route_pattern="/items/{id}", path="/items/7",
        caller=caller, capability_id="cap-other", capability_token=token.model_dump_json(),
    )
    assert mismatch.verdict.is_denied and "different capabilities" in (mismatch.verdict.reason or "")

    anonymous = await client.evaluate_http_request(
        request_id="req-3", method="GET", route_pattern="/items/{id}", path="/items/7", caller=caller
    )
    assert anonymous.verdict.is_denied and anonymous.verdict.guard == "signature"


# --- bad input: 4xx with a message, never a 5xx -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/evaluate", b"{not json", 400),
        ("/v1/evaluate", b"", 400),
        ("/v1/evaluate", b"[1,2]", 422),
        ("/v1/evaluate", b'{"capability_id": 5, "tool_server": "a", "tool_name": "b"}', 422),
        ("/v1/evaluate", b'{"capability_id": "c", "tool_server": "a", "tool_name": "b", "parameters": []}', 422),
        ("/v1/evaluate", b'{"capability_id": "c", "tool_server": "a", "tool_name": "b", "parameters": {"x": NaN}}', 400),
        ("/v1/evaluate", b'{"capability_id": "c", "tool_server": "a", "tool_name": "b", "cost": {"units": "x"}}', 422),
        ("/v1/capabilities", b'{"subject": "s"}', 422),
        ("/v1/capabilities", b'{"subject": "s", "scope": {"grants": [{"server_id": 1}]}}', 422),
        ("/v1/capabilities", b'{"subject": "s", "scope": {}, "ttl_seconds": -5}', 422),
        ("/v1/capabilities/validate", b'{"id": "x"}', 422),
        ("/v1/receipts/verify", b'{"id": "x"}', 422),
        ("/chio/evaluate", b'{"request_id": "r"}', 422),
        ("/chio/verify", b'{}', 422),
        ("/v1/evaluate", b'\xff\xfe{"a": 1}', 400),
        ("/v1/evaluate", b"[" * 100 + b"]" * 100, 422),
        ("/v1/evaluate", b"[" * 100_000 + b"]" * 100_000, 422),
    ],
)
def test_bad_input_is_4xx_with_message(sidecar: Sidecar, path: str, body: bytes, status: int) -> None:
    r = httpx.post(sidecar.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "message"} and r.json()["message"]


def test_huge_body_is_413_and_server_keeps_serving(sidecar: Sidecar) -> None:
    r = httpx.post(sidecar.url + "/v1/evaluate", content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert httpx.get(sidecar.url + "/chio/health").status_code == 200
    assert httpx.get(sidecar.url + "/v1/nope").status_code == 404
    assert httpx.delete(sidecar.url + "/v1/evaluate").status_code == 405


async def test_sdk_client_surfaces_4xx_as_chio_error(client: ChioClient) -> None:
    with pytest.raises(ChioError) as info:
        await client.create_capability(subject="", scope=ChioScope(grants=[grant()]))
    assert "422" in str(info.value)


async def test_big_integers_round_trip(sidecar: Sidecar, client: ChioClient) -> None:
    token = await issue(client, grant())
    r = httpx.post(sidecar.url + "/v1/evaluate", content=(
        '{"capability_id": "%s", "tool_server": "files", "tool_name": "read_file", "parameters": {"n": %d}}'
        % (token.id, 2**70)).encode(), headers={"content-type": "application/json"})
    if r.status_code == 200:  # stored and answered: the answer is the stored receipt, exactly
        receipt = ChioReceipt.model_validate(r.json())
        assert receipt.action.parameters == {"n": 2**70}
        assert await client.verify_receipt(receipt) is True
    else:  # or refused as input, before anything is stored
        assert r.status_code == 422, r.text
