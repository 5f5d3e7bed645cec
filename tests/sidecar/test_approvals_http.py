"""Human approvals over HTTP: the real sidecar subprocess, the real chio_sdk.ChioClient, our
SidecarClient, raw HTTP for the wire shapes, and the CLI on the same data directory
(docs/approvals.md)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.models import ChioReceipt, MonetaryAmount
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chio_durable import KernelRejected, evaluate
from chio_kernel import ApprovalConflictError, LocalChioClient, SidecarClient, sign_approval_token
from chio_sidecar_harness import Sidecar, run_cli
from independent_verifier import assert_receipt_verifies

PARAMS = {"order": "A-17", "amount": 250}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """This module's own sidecar: its receipts carry metadata (pending, resolutions), which the
    session sidecar's tests assert no receipt of theirs has."""
    proc = Sidecar(tmp_path_factory.mktemp("approvals") / "kernel").start()
    try:
        yield proc
    finally:
        proc.stop()
COST = MonetaryAmount(units=250, currency="USD")


def _new_cap(sidecar: Sidecar, threshold: int = 100, **grant: Any) -> str:
    """A capability issued over the wire with upstream's constraint shape."""
    cap_id = "cap-apr-" + uuid.uuid4().hex[:10]
    body = {
        "subject": "agent:refunds",
        "id": cap_id,
        "scope": {"grants": [{
            "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
            "constraints": [{"type": "require_approval_above", "value": {"threshold_units": threshold}}],
            **grant,
        }]},
    }
    resp = httpx.post(f"{sidecar.url}/v1/capabilities", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"]["grants"][0]["constraints"] == [{"type": "require_approval_above", "value": threshold}]
    return cap_id


async def _ask(client: SidecarClient, cap: str, key: str | None, **kw: Any) -> ChioReceipt:
    # as this package's layers do: say it understands pending_approval (else a pending call is a deny)
    return await client.evaluate_tool_call(
        capability_id=cap, tool_server="shop", tool_name="refund", parameters=dict(kw.pop("params", PARAMS)),
        idempotency_key=key, cost=kw.pop("cost", COST), understands_pending=True, **kw,
    )


def _aid(receipt: ChioReceipt) -> str:
    assert receipt.decision.verdict == "pending_approval", receipt.decision
    return str(receipt.metadata["pending_approval"]["approval_id"])  # type: ignore[index]


def _served(sidecar: Sidecar, receipt: ChioReceipt) -> dict[str, Any]:
    """The receipt exactly as the sidecar serves it (raw JSON, not re-serialised by a model)."""
    resp = httpx.get(f"{sidecar.url}/v1/receipts/{receipt.id}", timeout=30)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_our_clients_fail_closed_unless_they_say_they_understand_pending(sidecar: Sidecar) -> None:
    cap = _new_cap(sidecar, threshold=0)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        plain = await client.evaluate_tool_call(capability_id=cap, tool_server="shop", tool_name="refund",
                                                parameters=PARAMS)
        assert plain.is_denied and plain.decision.guard == "approval"  # safe to hand to upstream code
        said = await _ask(client, cap, None, cost=None)
        assert said.decision.verdict == "pending_approval" and not said.is_denied
    local = LocalChioClient(data_dir=sidecar.data_dir)
    receipt = await local.evaluate_tool_call(capability_id=cap, tool_server="shop", tool_name="refund", parameters=PARAMS)
    assert receipt.is_denied and receipt.decision.guard == "approval"
    understood = LocalChioClient(kernel=local.kernel, understands_pending=True)
    receipt = await understood.evaluate_tool_call(capability_id=cap, tool_server="shop", tool_name="refund",
                                                  parameters=PARAMS)
    assert receipt.decision.verdict == "pending_approval"
    await local.close()


async def test_stock_chio_client_gets_a_signed_deny_naming_the_approval(sidecar: Sidecar) -> None:
    cap = _new_cap(sidecar, threshold=0)  # a stock ChioClient sends no cost: 0 units, so threshold 0
    async with ChioClient(sidecar.url, timeout=30) as stock:
        receipt = await stock.evaluate_tool_call(capability_id=cap, tool_server="shop", tool_name="refund", parameters=PARAMS)
        # it never said it understands pending_approval: a deny, which it does not run (fails closed)
        assert receipt.is_denied and receipt.decision.guard == "approval"
        aid = receipt.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
        assert aid in (receipt.decision.reason or "") and f"approvals approve {aid}" in (receipt.decision.reason or "")
        assert await stock.verify_receipt(receipt)
    # the approval is still recorded, for a person to answer
    listed = httpx.get(f"{sidecar.url}/approvals/pending", timeout=30).json()["approvals"]
    assert aid in [a["id"] for a in listed]
    ev = await evaluate(ChioClient(sidecar.url, timeout=30), capability_id=cap, tool_server="shop", tool_name="refund",
                        parameters=PARAMS)
    assert not ev.allowed and not ev.pending and ev.receipt is not None and ev.receipt.is_denied
    with pytest.raises(KernelRejected, match="approval_id"):  # a stock client cannot send it
        await evaluate(ChioClient(sidecar.url, timeout=30), capability_id=cap, tool_server="shop", tool_name="refund",
                       parameters=PARAMS, approval_id=aid)


async def test_pending_approve_reevaluate_once_over_http(sidecar: Sidecar) -> None:
    cap = _new_cap(sidecar, max_invocations=3)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        pending = await _ask(client, cap, "run-1:0")
        aid = _aid(pending)
        assert await _ask(client, cap, "run-1:0") == pending  # idempotent: same receipt, same approval
        assert_receipt_verifies(_served(sidecar, pending))

        listing = httpx.get(f"{sidecar.url}/approvals/pending", timeout=30).json()
        assert set(listing) == {"approvals", "count", "next_cursor"} and listing["count"] == len(listing["approvals"])
        mine = [a for a in listing["approvals"] if a["id"] == aid]
        assert len(mine) == 1 and mine[0]["parameters"] == PARAMS and mine[0]["status"] == "pending"
        assert (await client.get_approval(aid))["pending_receipt_id"] == pending.id  # type: ignore[index]

        answer = httpx.post(f"{sidecar.url}/approvals/{aid}/operator-respond",
                            json={"outcome": "approved", "reason": "checked the order"}, timeout=30)
        assert answer.status_code == 200, answer.text
        resolution = answer.json()["receipt"]
        assert answer.json()["approval"]["status"] == "approved"
        assert resolution["decision"]["verdict"] == "approval_resolution"
        assert resolution["metadata"]["approval_resolution"]["pending_receipt_id"] == pending.id
        assert resolution["metadata"]["approval_resolution"]["reason"] == "checked the order"
        assert_receipt_verifies(resolution)

        again = httpx.post(f"{sidecar.url}/approvals/{aid}/operator-respond", json={"outcome": "denied"}, timeout=30)
        assert again.status_code == 409 and "answered once" in again.json()["message"]
        with pytest.raises(ApprovalConflictError):
            await client.respond_approval(aid, "approved")

        allow = await _ask(client, cap, "run-1:0:approved", approval_id=aid)
        assert allow.decision.is_allowed and allow.metadata == {"approval_id": aid}
        assert_receipt_verifies(_served(sidecar, allow))
        assert await _ask(client, cap, "run-1:0:approved", approval_id=aid) == allow  # retry: same receipt
        second = await _ask(client, cap, "run-1:1", approval_id=aid)
        assert second.decision.guard == "approval-consumed"
        info = httpx.get(f"{sidecar.url}/v1/capabilities/{cap}", timeout=30)
        assert info.status_code == 200
        listed = await client.list_receipts(cap)
        assert [r.decision.verdict for r in listed] == ["pending_approval", "approval_resolution", "allow", "deny"]
        for r in listed:
            assert_receipt_verifies(_served(sidecar, r))
        assert await ChioClient.verify_receipt_chain(client, [r for r in await client.list_receipts()])
        chain = httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=60).json()
        assert chain["ok"] is True, chain


async def test_deny_revoke_and_parameter_mismatch_over_http(sidecar: Sidecar) -> None:
    cap = _new_cap(sidecar)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        denied = _aid(await _ask(client, cap, "d-1"))
        receipt = await client.respond_approval(denied, "denied", "not this customer")
        assert receipt.metadata["approval_resolution"]["outcome"] == "denied"  # type: ignore[index]
        assert (await _ask(client, cap, "d-1:b", approval_id=denied)).decision.guard == "approval-denied"

        approved = _aid(await _ask(client, cap, "m-1"))
        await client.respond_approval(approved, "approved")
        other = await _ask(client, cap, "m-1:b", approval_id=approved, params={"order": "B-2", "amount": 250})
        assert other.decision.guard == "approval-parameters-mismatch"

        await client.revoke_capability(cap)
        revoked = await _ask(client, cap, "m-1:c", approval_id=approved)
        assert revoked.decision.verdict == "deny" and revoked.decision.guard == "revocation"


def _keypair() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


async def test_signed_tokens_trusted_through_the_cli(sidecar: Sidecar) -> None:
    key, public = _keypair()
    stranger, _ = _keypair()
    cap = _new_cap(sidecar)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        aid = _aid(await _ask(client, cap, "t-1"))
        approval = await client.get_approval(aid)
        assert approval is not None
        good = sign_approval_token(key, approval, "approved", reason="finance ok")
        refused = httpx.post(f"{sidecar.url}/approvals/{aid}/respond", json=good, timeout=30)
        assert refused.status_code == 403 and "not trusted" in refused.json()["message"]

        done = run_cli("approvals", "trust", public, "--data-dir", str(sidecar.data_dir))
        assert done.returncode == 0, done.stderr

        untrusted = sign_approval_token(stranger, approval, "approved")
        assert httpx.post(f"{sidecar.url}/approvals/{aid}/respond", json=untrusted, timeout=30).status_code == 403
        forged = {**sign_approval_token(key, approval, "denied"), "decision": "approved"}
        answer = httpx.post(f"{sidecar.url}/approvals/{aid}/respond", json=forged, timeout=30)
        assert answer.status_code == 403 and "signature" in answer.json()["message"]
        assert (await client.get_approval(aid))["status"] == "pending"  # type: ignore[index]

        receipt = await client.respond_approval_token(good)
        res = receipt.metadata["approval_resolution"]  # type: ignore[index]
        assert res["approver_key"] == public and res["token_id"] == good["id"] and res["reason"] == "finance ok"
        assert httpx.post(f"{sidecar.url}/approvals/{aid}/respond", json={"token": good}, timeout=30).status_code == 409
        assert (await _ask(client, cap, "t-1:b", approval_id=aid)).decision.is_allowed


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/approvals/{aid}/operator-respond", {"outcome": "maybe"}, 422),
        ("POST", "/approvals/{aid}/operator-respond", {"outcome": "approved", "reason": 5}, 422),
        ("POST", "/approvals/{aid}/operator-respond", {"outcome": "approved", "by": "me"}, 422),
        ("POST", "/approvals/{aid}/operator-respond", b"not json", 400),
        ("POST", "/approvals/{aid}/operator-respond", [1, 2], 422),
        ("POST", "/approvals/{aid}/respond", {"id": "x"}, 422),
        ("POST", "/approvals/{aid}/respond", {"token": "abc"}, 422),
        ("POST", "/approvals/apr-unknown/operator-respond", {"outcome": "approved"}, 404),
        ("GET", "/approvals/apr-unknown", None, 404),
        ("POST", "/v1/evaluate", {"capability_id": "x", "tool_server": "shop", "tool_name": "refund", "approval_id": 7}, 422),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_reason(
    sidecar: Sidecar, method: str, path: str, body: Any, status: int
) -> None:
    cap = _new_cap(sidecar)
    pending = httpx.post(f"{sidecar.url}/v1/evaluate", json={
        "capability_id": cap, "tool_server": "shop", "tool_name": "refund", "parameters": PARAMS,
        "cost": {"units": 500, "currency": "USD"}}, timeout=30).json()
    aid = pending["metadata"]["pending_approval"]["approval_id"]
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    resp = httpx.request(method, f"{sidecar.url}{path.format(aid=aid)}", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["message"]
    assert httpx.get(f"{sidecar.url}/approvals/{aid}", timeout=30).json()["status"] == "pending"  # nothing answered


async def test_cli_lists_shows_approves_and_denies_beside_the_sidecar(sidecar: Sidecar) -> None:
    cap = _new_cap(sidecar)
    data_dir = str(sidecar.data_dir)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        first = _aid(await _ask(client, cap, "cli-1"))
        second = _aid(await _ask(client, cap, "cli-2", params={"order": "C-3", "amount": 250}))
        listed = run_cli("approvals", "list", "--data-dir", data_dir)
        assert listed.returncode == 0 and first in listed.stdout and second in listed.stdout, listed.stdout
        shown = run_cli("approvals", "show", first, "--data-dir", data_dir)
        assert shown.returncode == 0 and '"A-17"' in shown.stdout
        # --approver is checked, not trusted: bob must be a registered approver credential
        unknown = run_cli("approvals", "approve", first, "--approver", "bob", "--data-dir", data_dir)
        assert unknown.returncode == 1 and "not an active approver" in unknown.stderr, unknown.stderr
        assert run_cli("credentials", "add", "bob", "--role", "approver", "--data-dir", data_dir).returncode == 0
        ok = run_cli("approvals", "approve", first, "--reason", "fine", "--approver", "bob", "--data-dir", data_dir)
        assert ok.returncode == 0 and "approved" in ok.stdout, ok.stderr
        approval = (await client.get_approval(first)) or {}
        assert [(a["name"], a["role"]) for a in approval["approvals"]] == [("bob", "approver")]
        no = run_cli("approvals", "deny", second, "--data-dir", data_dir)
        assert no.returncode == 0, no.stderr
        twice = run_cli("approvals", "approve", first, "--data-dir", data_dir)
        assert twice.returncode == 1 and "answered once" in twice.stderr
        missing = run_cli("approvals", "show", "apr-nope", "--data-dir", data_dir)
        assert missing.returncode == 1 and "no approval" in missing.stderr
        assert (await _ask(client, cap, "cli-1:b", approval_id=first)).decision.is_allowed
        assert (await _ask(client, cap, "cli-2:b", approval_id=second,
                           params={"order": "C-3", "amount": 250})).decision.guard == "approval-denied"


@pytest.fixture
def short_ttl_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sidecar]:
    monkeypatch.setenv("CHIO_APPROVAL_TTL", "1")
    proc = Sidecar(tmp_path / "kernel").start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_timeout_over_http_is_approval_timeout(short_ttl_sidecar: Sidecar) -> None:
    cap = _new_cap(short_ttl_sidecar)
    async with SidecarClient(short_ttl_sidecar.url, timeout=30) as client:
        aid = _aid(await _ask(client, cap, "ttl-1"))
        while (await client.get_approval(aid))["status"] != "expired":  # type: ignore[index]
            time.sleep(0.2)  # wall-clock TTL of 1 s; no assertion on how long it takes
        late = httpx.post(f"{short_ttl_sidecar.url}/approvals/{aid}/operator-respond", json={"outcome": "approved"}, timeout=30)
        assert late.status_code == 409 and "expired" in late.json()["message"]
        denied = await _ask(client, cap, "ttl-1:b", approval_id=aid)
        assert denied.decision.verdict == "deny" and denied.decision.guard == "approval-timeout"


def test_cli_scope_file_takes_upstreams_constraint_shape(tmp_path: Path) -> None:
    import json

    scope_file = tmp_path / "scope.json"
    scope_file.write_text(json.dumps({"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}]}]}))
    made = run_cli("capability", "create", "--subject", "agent:x", "--scope-file", str(scope_file),
                   "--data-dir", str(tmp_path / "k"), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token"]["scope"]["grants"][0]["constraints"] == [
        {"type": "require_approval_above", "value": 100}]
    scope_file.write_text(json.dumps({"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold": 100}}]}]}))
    bad = run_cli("capability", "create", "--subject", "agent:x", "--scope-file", str(scope_file),
                  "--data-dir", str(tmp_path / "k"))
    assert bad.returncode == 1 and "threshold_units" in bad.stderr
