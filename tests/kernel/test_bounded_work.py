"""Bounded work: paged listings (limit + cursor, keyset order), reads that never wait for the writer,
bounded deny reasons, limits on grants and delegation depth, and the indexed subset check of
attenuation (the same answer as the all-pairs rule)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Constraint, Operation, PromptGrant, ResourceGrant, ToolGrant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chio_kernel import CapabilityError, CapabilityLimitError, Kernel, KernelInputError, Page
from chio_kernel._capabilities import _first_non_subset
from chio_kernel._guards import MAX_REASON_CHARS, bound_reason
from kernel_helpers import Clock
from listing_helpers import while_writing

APPROVAL = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}],
}]}
FILES = {"grants": [{"server_id": "files", "tool_name": "read", "operations": ["Invoke"]}]}
COSTED = {"grants": [{"server_id": "shop", "tool_name": "buy", "operations": ["Invoke"],
                      "max_total_cost": {"units": 1_000_000, "currency": "USD"}}]}


def _all_pages(fetch: Callable[[str | None], Page[Any]]) -> tuple[list[Any], int]:
    items: list[Any] = []
    cursor, pages = None, 0
    while True:
        page = fetch(cursor)
        pages += 1
        items += page.items
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor


def _pending(kernel: Kernel, cap: str, n: int, clock: Clock | None = None) -> list[str]:
    ids = []
    for i in range(n):
        receipt = kernel.evaluate(cap, "shop", "refund", {"order": i})
        assert receipt.metadata is not None
        ids.append(str(receipt.metadata["pending_approval"]["approval_id"]))
        if clock is not None and i % 3 == 2:
            clock.advance(1)  # several per second and several seconds: the id breaks created_at ties
    return ids


# --- paging ---


def test_approvals_page_newest_first_by_keyset_and_nothing_is_skipped_or_repeated(kernel: Kernel, clock: Clock) -> None:
    cap = kernel.create_capability("agent:refunds", APPROVAL).id
    ids = _pending(kernel, cap, 23, clock)
    items, pages = _all_pages(lambda c: kernel.approvals_page(limit=5, cursor=c))
    assert [a["id"] for a in items] == ids[::-1] and pages == 5
    first = kernel.approvals_page(limit=5)
    newer = _pending(kernel, cap, 2, clock)  # arrive while a reader pages: they sort before the cursor
    rest, _ = _all_pages(lambda c: kernel.approvals_page(limit=5, cursor=c or first.next_cursor))
    assert [a["id"] for a in first.items + rest] == ids[::-1]
    assert [a["id"] for a in kernel.list_approvals()] == (ids + newer)[::-1]
    assert [a["id"] for a in kernel.list_approvals(limit=3)] == (ids + newer)[::-1][:3]


def test_an_approvals_page_skips_what_its_status_excludes_and_goes_on(kernel: Kernel, clock: Clock) -> None:
    cap = kernel.create_capability("agent:refunds", APPROVAL).id
    other = kernel.create_capability("agent:refunds", APPROVAL).id
    keep = _pending(kernel, cap, 3, clock)
    gone = _pending(kernel, other, 12, clock)
    kernel.revoke_capability(other)  # its pending approvals now read as denied
    pending, _ = _all_pages(lambda c: kernel.approvals_page("pending", limit=2, cursor=c))
    assert [a["id"] for a in pending] == keep[::-1]
    denied, _ = _all_pages(lambda c: kernel.approvals_page("denied", limit=4, cursor=c))
    assert [a["id"] for a in denied] == gone[::-1]
    clock.advance(kernel.approval_ttl + 1)
    assert kernel.approvals_page("pending").items == []
    expired = kernel.approvals_page("expired", limit=1000).items  # expiry reads first, revoked or not
    assert [a["id"] for a in expired] == (keep + gone)[::-1]


def test_capabilities_receipts_and_holds_page(kernel: Kernel) -> None:
    caps = [kernel.create_capability("agent:a", FILES).id for _ in range(7)]
    items, pages = _all_pages(lambda c: kernel.capabilities_page(limit=3, cursor=c))
    assert [t.id for t in items] == caps and pages == 3
    assert [t.id for t in kernel.list_capabilities()] == caps

    for i in range(9):
        kernel.evaluate(caps[i % 2], "files", "read", {"i": i})
    chain, _ = _all_pages(lambda c: kernel.receipts_page(limit=4, cursor=c))
    assert [seq for seq, _ in chain] == list(range(1, 10))
    newest, _ = _all_pages(lambda c: kernel.receipts_page(limit=4, cursor=c, newest_first=True, capability_id=caps[0]))
    assert [seq for seq, _ in newest] == [9, 7, 5, 3, 1]
    assert all(r.capability_id == caps[0] for _, r in newest)

    buyer = kernel.create_capability("agent:buyer", COSTED).id
    allows = [kernel.evaluate(buyer, "shop", "buy", {"n": i}, cost={"units": 5, "currency": "USD"}).id
              for i in range(5)]
    kernel.release(allows[0], "op-0")
    holds, _ = _all_pages(lambda c: kernel.holds_page(limit=2, cursor=c))
    assert [h["receipt_id"] for h in holds] == allows[::-1]
    open_ones, _ = _all_pages(lambda c: kernel.holds_page(state="open", capability_id=buyer, limit=2, cursor=c))
    assert [h["receipt_id"] for h in open_ones] == allows[:0:-1]
    assert holds[-1]["state"] == "released" and holds[-1]["amount"] == {"units": 5, "currency": "USD"}


@pytest.mark.parametrize("call", [
    lambda k: k.approvals_page(cursor="not-a-cursor"),
    lambda k: k.approvals_page(cursor=k.capabilities_page(limit=1).next_cursor),  # another listing's
    lambda k: k.approvals_page("approved", cursor=k.approvals_page("pending", limit=1).next_cursor),  # other filter
    lambda k: k.receipts_page(cursor="eyJsIjoicmVjZWlwdHMiLCJmIjoiIiwiayI6WyJ4Il19"),  # a tampered position
    lambda k: k.holds_page(limit=0),
    lambda k: k.capabilities_page(limit=1001),
    lambda k: k.holds_page(state="lost"),
])
def test_a_bad_cursor_or_limit_is_refused_with_a_sentence(kernel: Kernel, call: Callable[[Kernel], Any]) -> None:
    kernel.create_capability("agent:a", FILES)
    kernel.create_capability("agent:a", FILES)
    cap = kernel.create_capability("agent:refunds", APPROVAL).id
    _pending(kernel, cap, 2)
    with pytest.raises(KernelInputError, match=r"cursor|limit|state"):
        call(kernel)


# --- no listing waits for the writer ---


def read_everything(kernel: Kernel) -> tuple[int, ...]:
    return (len(kernel.approvals_page(limit=1000)), len(kernel.capabilities_page()),
            len(kernel.receipts_page(newest_first=True)), len(kernel.holds_page()), len(kernel.list_approvals()),
            kernel.receipt_count())


def test_listings_never_wait_for_the_writer(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:refunds", APPROVAL).id
    _pending(kernel, cap, 3)
    assert while_writing(kernel, lambda: read_everything(kernel)) == (3, 1, 3, 0, 3, 3)


# --- deny reasons ---


def test_bound_reason_cuts_and_says_how_much_was_left_out() -> None:
    assert bound_reason("short") == "short"
    long = "x" * 239_037
    cut = bound_reason(long)
    assert len(cut) <= MAX_REASON_CHARS and cut.endswith("more characters left out)")
    head, tail = cut.split(" … (")
    assert len(head) + int(tail.split()[0]) == len(long)


def test_a_capability_with_10000_grants_denies_with_a_bounded_reason(tmp_path: Path) -> None:
    wide = {"grants": [{"server_id": "files", "tool_name": f"tool_{i}", "operations": ["Invoke"]} for i in range(10_000)]}
    with Kernel(tmp_path / "k", max_grants=10_000) as kernel:
        cap = kernel.create_capability("agent:wide", wide).id
        receipt = kernel.evaluate(cap, "files", "other", {})
        reason = receipt.decision.reason or ""
        assert receipt.decision.verdict == "deny" and receipt.decision.guard == "scope"
        assert len(reason) <= MAX_REASON_CHARS and "files/tool_0 (Invoke)" in reason
        assert "more grants" in reason and kernel.verify_receipt(receipt)
        recorded = kernel.record_denial(cap, "files", "other", {}, guard="layer", reason="why " * 5_000)
        assert len(recorded.decision.reason or "") <= MAX_REASON_CHARS and kernel.verify_receipt(recorded)
        assert kernel.verify_chain().ok


# --- limits ---


def test_grants_and_depth_are_limited_at_issue_and_attenuate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    many = {"grants": [{"server_id": "s", "tool_name": f"t{i}", "operations": ["Invoke"]} for i in range(1_001)]}
    with Kernel(tmp_path / "k") as kernel:
        assert (kernel.max_grants, kernel.max_delegation_depth) == (1_000, 32)
        with pytest.raises(CapabilityLimitError, match=r"1,001 grants.*at most 1,000.*--max-grants"):
            kernel.create_capability("agent:a", many)
        root = kernel.create_capability("agent:a", FILES)
        with pytest.raises(CapabilityLimitError, match="at most 1,000"):
            kernel.attenuate_capability(root.id, many)
        assert isinstance(CapabilityLimitError("x"), CapabilityError)
    monkeypatch.setenv("CHIO_MAX_DELEGATION_DEPTH", "3")
    with Kernel(tmp_path / "k") as kernel:
        cap = root
        for _ in range(3):
            cap = kernel.attenuate_capability(cap.id, FILES)
        with pytest.raises(CapabilityLimitError, match="4 delegations deep; this kernel allows at most 3"):
            kernel.attenuate_capability(cap.id, FILES)
        assert kernel.evaluate(cap.id, "files", "read", {}).decision.verdict == "allow"
    monkeypatch.setenv("CHIO_MAX_GRANTS", "none")
    with pytest.raises(KernelInputError, match=r"\$CHIO_MAX_GRANTS must be a whole number"):
        Kernel(tmp_path / "k")


def test_a_deep_chain_is_verified_link_by_link_on_a_cold_kernel(tmp_path: Path) -> None:
    with Kernel(tmp_path / "k", max_delegation_depth=64) as kernel:
        cap = kernel.create_capability("agent:a", FILES)
        chain = [cap]
        for i in range(64):
            chain.append(kernel.attenuate_capability(chain[-1].id, FILES, subject=f"agent:{i}"))
    with Kernel(tmp_path / "k", max_delegation_depth=64) as cold:
        assert cold.evaluate(chain[-1].id, "files", "read", {}).decision.verdict == "allow"
        assert all(cold.validate_capability(t) == (True, None) for t in chain)
        cold.revoke_capability(chain[30].id)
        assert cold.evaluate(chain[-1].id, "files", "read", {}).decision.guard == "revocation"
        forged = chain[-1].model_copy(update={"subject": "agent:other"})
        assert cold.validate_capability(forged)[0] is False


# --- the subset check of attenuation: indexed, the same answer as all pairs ---


def _all_pairs(child: ChioScope, parent: ChioScope) -> bool:
    """The rule as it was checked before: every child grant against every parent grant."""
    return (all(any(g.is_subset_of(p) for p in parent.grants) for g in child.grants)
            and all(any(g.is_subset_of(p) for p in parent.resource_grants) for g in child.resource_grants)
            and all(any(g.is_subset_of(p) for p in parent.prompt_grants) for g in child.prompt_grants))


_names = st.sampled_from(["a", "b", "*"])
_ops = st.lists(st.sampled_from([Operation.INVOKE, Operation.READ_RESULT]), min_size=1, max_size=2, unique=True)
_constraints = st.lists(
    st.builds(Constraint, type=st.sampled_from(["path_prefix", "domain_exact"]),
              value=st.sampled_from(["/a", "/b", 1, "x.org"])),
    max_size=3,
)
_grants = st.builds(
    ToolGrant, server_id=_names, tool_name=_names, operations=_ops, constraints=_constraints,
    max_invocations=st.one_of(st.none(), st.integers(1, 3)),
)
_scopes = st.builds(
    ChioScope,
    grants=st.lists(_grants, max_size=8),
    resource_grants=st.lists(st.builds(ResourceGrant, uri_pattern=_names, operations=_ops), max_size=3),
    prompt_grants=st.lists(st.builds(PromptGrant, prompt_name=_names, operations=_ops), max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parent=_scopes, child=_scopes, reuse=st.lists(st.integers(0, 7), max_size=4))
def test_the_indexed_subset_check_answers_as_all_pairs(parent: ChioScope, child: ChioScope, reuse: list[int]) -> None:
    if parent.grants:  # some child grants taken from the parent, so both answers occur
        child = child.model_copy(update={"grants": child.grants + [parent.grants[i % len(parent.grants)] for i in reuse]})
    assert (_first_non_subset(child, parent) is None) == _all_pairs(child, parent)


def test_a_threads_reader_connection_closes_with_its_thread(kernel: Kernel) -> None:
    import gc
    import threading

    kernel._checkpoints.stop()  # the checkpoint cutter's thread holds a reader of its own
    gc.collect()
    for _ in range(20):
        t = threading.Thread(target=kernel.capabilities_page)
        t.start()
        t.join()
    gc.collect()
    assert len(kernel._store._readers) == 0  # type: ignore[attr-defined]
    kernel.capabilities_page()
    assert len(kernel._store._readers) == 1  # type: ignore[attr-defined]
