"""Human approval as a kernel verdict, on the embedded kernel (docs/approvals.md).

A ``require_approval_above`` grant sends a call at or above its threshold to a person: a signed,
chained ``pending_approval`` receipt, nothing charged; the operator (or a signed token from a
trusted approver key) answers once; the re-evaluation with ``approval_id`` re-runs every guard and
is charged once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioReceipt, ChioScope, Constraint, MonetaryAmount
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chio_durable import GovernedCall
from chio_durable._transport import EmbeddedTransport
from chio_kernel import (
    ApprovalConflictError,
    ApprovalNotFoundError,
    ApprovalTokenError,
    Kernel,
    KernelInputError,
    LocalChioClient,
    Principal,
    sign_approval_token,
)
from kernel_helpers import Clock, grant, scope

UPSTREAM = {"type": "require_approval_above", "value": {"threshold_units": 100}}
PARAMS = {"order": "A-17", "amount": 250}


def _cap(kernel: Kernel, *, threshold: int = 100, max_invocations: int | None = 5, **kw: Any) -> str:
    """A capability whose shop/refund grant needs approval at ``threshold`` units (upstream's dict shape)."""
    scope_dict = {
        "grants": [{
            "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
            "constraints": [{"type": "require_approval_above", "value": {"threshold_units": threshold}}],
            **({"max_invocations": max_invocations} if max_invocations is not None else {}),
        }]
    }
    return kernel.create_capability("agent:refunds", scope_dict, **kw).id


def _usage(kernel: Kernel, cap: str) -> list[dict[str, int]]:
    info = kernel.capability_info(cap)
    assert info is not None
    return list(info["usage"])


def _ask(kernel: Kernel, cap: str, units: int | None = 250, key: str | None = "flow-1:call-0", **kw: Any) -> ChioReceipt:
    cost = None if units is None else {"units": units, "currency": "USD"}
    return kernel.evaluate(cap, "shop", "refund", dict(kw.pop("params", PARAMS)), idempotency_key=key, cost=cost, **kw)


def _approval_id(receipt: ChioReceipt) -> str:
    assert receipt.metadata is not None
    return str(receipt.metadata["pending_approval"]["approval_id"])


def _keypair() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


# --- the constraint -------------------------------------------------------------------------------


def test_upstream_dict_shape_is_accepted_and_issued_as_the_sdk_form(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:x", {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"], "constraints": [UPSTREAM]}]})
    assert token.scope.grants[0].constraints == [Constraint(type="require_approval_above", value=100)]
    # the plain integer (what chio_sdk's Constraint can hold) means the same
    same = kernel.create_capability("agent:x", scope(grant("shop", "refund", Constraint(type="require_approval_above", value=100))))
    assert same.scope.grants[0].constraints == token.scope.grants[0].constraints


@pytest.mark.parametrize("value", [{"threshold_units": -1}, {"threshold_units": "100"}, {"units": 5}, {"threshold_units": 1, "x": 2}, "abc"])
def test_a_malformed_threshold_is_refused_with_a_reason(kernel: Kernel, value: Any) -> None:
    bad = {"grants": [{"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
                       "constraints": [{"type": "require_approval_above", "value": value}]}]}
    with pytest.raises(KernelInputError, match="require_approval_above|threshold_units"):
        kernel.create_capability("agent:x", bad)


def test_below_the_threshold_is_a_plain_allow_and_no_cost_counts_as_zero(kernel: Kernel) -> None:
    cap = _cap(kernel)
    assert _ask(kernel, cap, units=99, key=None).decision.verdict == "allow"
    assert _ask(kernel, cap, units=None, key=None).decision.verdict == "allow"  # 0 < 100
    zero = _cap(kernel, threshold=0)
    pending = _ask(kernel, zero, units=None, key=None)  # 0 >= 0: a person decides every call
    assert pending.decision.verdict == "pending_approval"
    assert _ask(kernel, cap, units=100, key=None).decision.verdict == "pending_approval"  # N or more


def test_an_attenuated_child_keeps_its_parents_approval_rule(kernel: Kernel) -> None:
    parent = _cap(kernel, max_invocations=None)
    child = kernel.attenuate_capability(parent, kernel.get_capability(parent).scope)  # type: ignore[union-attr]
    assert kernel.evaluate(child.id, "shop", "refund", PARAMS, cost={"units": 500, "currency": "USD"}).decision.verdict == "pending_approval"


# --- the pending receipt ----------------------------------------------------------------------------


def test_pending_is_signed_chained_idempotent_and_charges_nothing(kernel: Kernel, clock: Clock) -> None:
    cap = _cap(kernel, ttl_seconds=10 * 86400)
    before = kernel.receipt_count()
    first = _ask(kernel, cap)
    assert first.decision.verdict == "pending_approval" and first.decision.guard == "approval"
    assert not first.decision.is_allowed and not first.decision.is_denied
    meta = first.metadata["pending_approval"]  # type: ignore[index]
    assert set(meta) == {"approval_id", "parameter_hash", "expires_at", "summary", "cost"}
    assert meta["cost"] == {"units": 250, "currency": "USD"}  # the declared cost, as the inbox shows it
    assert meta["parameter_hash"] == first.action.parameter_hash
    assert meta["expires_at"] == int(clock.now) + kernel.approval_ttl
    assert kernel.verify_receipt(first)
    assert kernel.get_receipt(first.id) == first  # stored exactly as handed out
    # a retry with the same idempotency key: the same receipt, the same approval, nothing new
    again = _ask(kernel, cap)
    assert again == first and kernel.receipt_count() == before + 1
    assert [a["id"] for a in kernel.list_approvals()] == [meta["approval_id"]]
    assert _usage(kernel, cap) == []  # no invocation counted, no cost spent
    # another idempotency key is another request for approval
    other = _ask(kernel, cap, key="flow-2:call-0")
    assert _approval_id(other) != meta["approval_id"]
    assert kernel.verify_chain().ok


def test_the_wait_ends_no_later_than_the_capability(kernel: Kernel, clock: Clock) -> None:
    cap = _cap(kernel, ttl_seconds=600)  # shorter than the approval TTL (a day)
    meta = _ask(kernel, cap).metadata["pending_approval"]  # type: ignore[index]
    assert meta["expires_at"] == int(clock.now) + 600


def test_deny_beats_pending(kernel: Kernel) -> None:
    cap = _cap(kernel, max_invocations=1)
    assert _ask(kernel, cap, units=5, key=None).decision.is_allowed  # uses the one invocation
    over = _ask(kernel, cap, units=500, key=None)
    assert over.decision.verdict == "deny" and over.decision.guard == "max_invocations"
    assert kernel.list_approvals() == []
    kernel.revoke_capability(cap)
    assert _ask(kernel, cap).decision.guard == "revocation"


# --- resolving and re-evaluating --------------------------------------------------------------------


def test_approve_then_reevaluate_allows_once_and_charges_once(kernel: Kernel) -> None:
    cap = _cap(kernel)
    pending = _ask(kernel, cap)
    aid = _approval_id(pending)
    resolution = kernel.respond_approval(aid, "approved", "refund is legit", approver=Principal("approver", "alice"))
    assert resolution.decision.verdict == "approval_resolution" and not resolution.decision.is_allowed
    res = resolution.metadata["approval_resolution"]  # type: ignore[index]
    assert res == {"approval_id": aid, "outcome": "approved", "approver_key": kernel.public_key_hex,
                   "approver": "alice", "approver_role": "approver", "reason": "refund is legit",
                   "pending_receipt_id": pending.id}
    assert resolution.action.parameter_hash == pending.action.parameter_hash
    assert kernel.get_approval(aid)["status"] == "approved"  # type: ignore[index]
    assert kernel.list_approvals() == []

    allow = _ask(kernel, cap, key="flow-1:call-0:approved", approval_id=aid)
    assert allow.decision.is_allowed and allow.metadata == {"approval_id": aid}
    assert kernel.verify_receipt(allow)
    assert _usage(kernel, cap) == [{"grant_index": 0, "invocations": 1, "cost_units": 250}]
    # the same idempotency key: the same allow, charged once
    assert _ask(kernel, cap, key="flow-1:call-0:approved", approval_id=aid) == allow
    # another key (a second run of the tool): refused, the approval was used
    second = _ask(kernel, cap, key="flow-1:call-1", approval_id=aid)
    assert second.decision.verdict == "deny" and second.decision.guard == "approval-consumed"
    assert _usage(kernel, cap) == [{"grant_index": 0, "invocations": 1, "cost_units": 250}]
    assert kernel.get_approval(aid)["consumed_receipt_id"] == allow.id  # type: ignore[index]
    assert kernel.verify_chain().ok


def test_reevaluation_while_still_pending_answers_the_pending_receipt(kernel: Kernel) -> None:
    cap = _cap(kernel)
    pending = _ask(kernel, cap)
    assert _ask(kernel, cap, key="other", approval_id=_approval_id(pending)) == pending
    assert _usage(kernel, cap) == []


def test_deny_is_final_and_a_second_answer_conflicts(kernel: Kernel) -> None:
    cap = _cap(kernel)
    aid = _approval_id(_ask(kernel, cap))
    kernel.respond_approval(aid, "denied", "not this customer")
    with pytest.raises(ApprovalConflictError, match="already answered: denied"):
        kernel.respond_approval(aid, "approved")
    with pytest.raises(ApprovalConflictError):
        kernel.respond_approval(aid, "denied")
    denied = _ask(kernel, cap, key="k2", approval_id=aid)
    assert denied.decision.guard == "approval-denied" and "not this customer" in (denied.decision.reason or "")
    assert _usage(kernel, cap) == []


def test_local_client_raises_the_conflict_clearly(kernel: Kernel) -> None:
    cap = _cap(kernel)

    async def run() -> None:
        client = LocalChioClient(kernel=kernel)
        pending = await client.evaluate_tool_call(
            capability_id=cap, tool_server="shop", tool_name="refund", parameters=PARAMS,
            cost=MonetaryAmount(units=250, currency="USD"),
        )
        aid = _approval_id(pending)
        assert [a["id"] for a in await client.list_pending_approvals()] == [aid]
        await client.respond_approval(aid, "approved")
        with pytest.raises(ApprovalConflictError, match="answered once"):
            await client.respond_approval(aid, "approved")
        allow = await client.evaluate_tool_call(
            capability_id=cap, tool_server="shop", tool_name="refund", parameters=PARAMS,
            cost=MonetaryAmount(units=250, currency="USD"), approval_id=aid,
        )
        assert allow.decision.is_allowed

    asyncio.run(run())


def test_timeout_denies_with_approval_timeout(kernel: Kernel, clock: Clock) -> None:
    short = Kernel(kernel.data_dir, clock=clock, approval_ttl=60)
    try:
        cap = _cap(short)
        pending = _ask(short, cap)
        aid = _approval_id(pending)
        assert pending.metadata["pending_approval"]["expires_at"] == int(clock.now) + 60  # type: ignore[index]
        clock.advance(61)
        assert short.get_approval(aid)["status"] == "expired"  # type: ignore[index]
        assert short.list_approvals() == [] and [a["id"] for a in short.list_approvals("expired")] == [aid]
        with pytest.raises(ApprovalConflictError, match="expired"):
            short.respond_approval(aid, "approved")
        late = _ask(short, cap, key="k2", approval_id=aid)
        assert late.decision.verdict == "deny" and late.decision.guard == "approval-timeout"
        # approved in time but used too late: also a timeout
        aid2 = _approval_id(_ask(short, cap, key="k3"))
        short.respond_approval(aid2, "approved")
        clock.advance(61)
        assert _ask(short, cap, key="k4", approval_id=aid2).decision.guard == "approval-timeout"
        assert _usage(short, cap) == []
    finally:
        short.close()


def test_approval_ttl_from_the_environment(chio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIO_APPROVAL_TTL", "120")
    with Kernel(chio_home) as k:
        assert k.approval_ttl == 120
    monkeypatch.setenv("CHIO_APPROVAL_TTL", "soon")
    with pytest.raises(KernelInputError, match="CHIO_APPROVAL_TTL"):
        Kernel(chio_home)


def test_revoke_during_the_wait_denies(kernel: Kernel) -> None:
    cap = _cap(kernel)
    aid = _approval_id(_ask(kernel, cap))
    kernel.respond_approval(aid, "approved")
    kernel.revoke_capability(cap)
    after = _ask(kernel, cap, key="k2", approval_id=aid)
    assert after.decision.verdict == "deny" and after.decision.guard == "revocation"
    # revoked before anyone answered: shown as denied, and it can no longer be approved
    cap2 = _cap(kernel)
    aid2 = _approval_id(_ask(kernel, cap2, key="flow-2:call-0"))  # a key names one call
    kernel.revoke_capability(cap2)
    view = kernel.get_approval(aid2)
    assert view is not None and view["status"] == "denied" and "revoked" in view["reason"]
    with pytest.raises(ApprovalConflictError, match="revoked"):
        kernel.respond_approval(aid2, "approved")
    assert _usage(kernel, cap) == [] and _usage(kernel, cap2) == []


def test_parameter_or_cost_mismatch_denies(kernel: Kernel) -> None:
    cap = _cap(kernel)
    aid = _approval_id(_ask(kernel, cap))
    kernel.respond_approval(aid, "approved")
    other = _ask(kernel, cap, key="k2", approval_id=aid, params={"order": "B-99", "amount": 250})
    assert other.decision.verdict == "deny" and other.decision.guard == "approval-parameters-mismatch"
    pricier = _ask(kernel, cap, units=9999, key="k3", approval_id=aid)
    assert pricier.decision.guard == "approval-parameters-mismatch"
    elsewhere = kernel.evaluate(_cap(kernel), "shop", "refund", PARAMS, cost={"units": 250, "currency": "USD"}, approval_id=aid)
    assert elsewhere.decision.guard == "approval-unknown"
    unknown = _ask(kernel, cap, key="k4", approval_id="apr-nope")
    assert unknown.decision.guard == "approval-unknown"
    # none of these used the approval up: the exact call still goes through, once
    assert _ask(kernel, cap, key="k5", approval_id=aid).decision.is_allowed
    assert _usage(kernel, cap) == [{"grant_index": 0, "invocations": 1, "cost_units": 250}]


def test_unknown_approval_and_bad_outcome(kernel: Kernel) -> None:
    with pytest.raises(ApprovalNotFoundError):
        kernel.respond_approval("apr-missing", "approved")
    cap = _cap(kernel)
    aid = _approval_id(_ask(kernel, cap))
    with pytest.raises(KernelInputError, match="outcome"):
        kernel.respond_approval(aid, "yes")
    assert kernel.get_approval("apr-missing") is None
    with pytest.raises(KernelInputError):
        kernel.list_approvals("maybe")


# --- signed approval tokens --------------------------------------------------------------------------


def test_a_trusted_approver_token_resolves_and_is_recorded(chio_home: Path, clock: Clock) -> None:
    key, public = _keypair()
    with Kernel(chio_home, clock=clock, approver_keys=[public]) as k:
        cap = _cap(k)
        aid = _approval_id(_ask(k, cap))
        token = sign_approval_token(key, k.get_approval(aid), "approved", reason="ok by finance", now=clock.now)  # type: ignore[arg-type]
        resolution = k.respond_approval_token(token)
        res = resolution.metadata["approval_resolution"]  # type: ignore[index]
        assert res["approver_key"] == public and res["token_id"] == token["id"] and res["outcome"] == "approved"
        assert res["reason"] == "ok by finance"
        with pytest.raises(ApprovalConflictError):
            k.respond_approval_token(token)  # replayed: answered once
        assert _ask(k, cap, key="k2", approval_id=aid).decision.is_allowed
        assert k.verify_chain().ok


def test_forged_untrusted_or_misbound_tokens_are_refused(chio_home: Path, clock: Clock) -> None:
    key, public = _keypair()
    stranger, _ = _keypair()
    with Kernel(chio_home, clock=clock, approver_keys=[public]) as k:
        cap = _cap(k)
        aid = _approval_id(_ask(k, cap))
        approval = k.get_approval(aid)
        assert approval is not None
        untrusted = sign_approval_token(stranger, approval, "approved", now=clock.now)
        with pytest.raises(ApprovalTokenError, match="not trusted"):
            k.respond_approval_token(untrusted)
        forged = dict(sign_approval_token(key, approval, "denied", now=clock.now), decision="approved")
        with pytest.raises(ApprovalTokenError, match="invalid signature"):
            k.respond_approval_token(forged)
        other_params = sign_approval_token(key, {**approval, "parameter_hash": "0" * 64}, "approved", now=clock.now)
        with pytest.raises(ApprovalTokenError, match="other parameters"):
            k.respond_approval_token(other_params)
        other_subject = sign_approval_token(key, {**approval, "subject": "agent:else"}, "approved", now=clock.now)
        with pytest.raises(ApprovalTokenError, match="another subject"):
            k.respond_approval_token(other_subject)
        stale = sign_approval_token(key, approval, "approved", now=clock.now - 1000, ttl_seconds=10)
        with pytest.raises(ApprovalTokenError, match="valid from"):
            k.respond_approval_token(stale)
        with pytest.raises(KernelInputError, match="missing"):
            k.respond_approval_token({"id": "x"})
        # nothing of that answered it: still pending, and the re-evaluation still waits
        assert k.get_approval(aid)["status"] == "pending"  # type: ignore[index]
        assert _ask(k, cap, key="k9", approval_id=aid).decision.verdict == "pending_approval"


def test_trusted_approvers_file(chio_home: Path, clock: Clock) -> None:
    key, public = _keypair()
    with Kernel(chio_home, clock=clock) as k:
        assert public not in k.approver_keys
        cap = _cap(k)
        aid = _approval_id(_ask(k, cap))
        token = sign_approval_token(key, k.get_approval(aid), "denied", now=clock.now)  # type: ignore[arg-type]
        with pytest.raises(ApprovalTokenError):
            k.respond_approval_token(token)
        k.trust_approver(public)
        assert (chio_home / "approvers").read_text().split() == [public]
        assert k.respond_approval_token(token).metadata["approval_resolution"]["outcome"] == "denied"  # type: ignore[index]
    with Kernel(chio_home) as again:  # kept across restarts
        assert public in again.approver_keys
    with pytest.raises(KernelInputError):
        Kernel(chio_home, approver_keys=["not-a-key"])


# --- what every layer sees ----------------------------------------------------------------------------


def test_transport_evaluation_exposes_pending_and_fails_closed(kernel: Kernel) -> None:
    cap = _cap(kernel)
    transport = EmbeddedTransport(kernel)
    call = GovernedCall("tool", "shop", "refund", PARAMS)
    cost = MonetaryAmount(units=250, currency="USD")
    ev = transport.evaluate_sync(call, capability_id=cap, idempotency_key="t-1", cost=cost)
    assert ev.pending and not ev.allowed and ev.approval_id is not None
    assert ev.pending_approval is not None and ev.pending_approval["approval_id"] == ev.approval_id
    kernel.respond_approval(ev.approval_id, "approved")
    ok = asyncio.run(transport.evaluate(call, capability_id=cap, idempotency_key="t-1:approved", cost=cost,
                                        approval_id=ev.approval_id))
    assert ok.allowed and not ok.pending and ok.approval_id == ev.approval_id


def test_receipts_are_served_as_signed(kernel: Kernel) -> None:
    """The stored text of a pending / resolution receipt parses back to what was handed out, and
    its JSON carries the metadata the signature covers."""
    cap = _cap(kernel)
    pending = _ask(kernel, cap)
    resolution = kernel.respond_approval(_approval_id(pending), "denied")
    for r in (pending, resolution):
        listed = [x for x in kernel.list_receipts() if x.id == r.id]
        assert listed == [r]
        assert json.loads(r.model_dump_json())["metadata"]


def test_the_resolution_receipt_carries_the_run_context_of_the_call_not_who_asked(kernel: Kernel) -> None:
    cap = _cap(kernel)
    pending = _ask(kernel, cap, metadata={"workflow_id": "wf-1", "run_id": "r-1"})
    aid = pending.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
    resolution = kernel.respond_approval(aid, "approved", "ok")
    meta = resolution.metadata or {}
    assert (meta["workflow_id"], meta["run_id"]) == ("wf-1", "r-1")  # `receipts list --workflow-id wf-1` finds it
    assert "pending_approval" not in meta and meta["approval_resolution"]["approval_id"] == aid
    found = kernel.query_receipts(metadata={"workflow_id": "wf-1"}, verdict="approval_resolution")
    assert [r.id for _, r in found] == [resolution.id]
