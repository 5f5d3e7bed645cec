"""Budget holds (issue 11): hold on a costed allow, settle / release / expire as signed chained receipts,
op_id idempotency, 409-style conflicts, capped capture, the idempotency-key reuse rule, concurrency
(asyncio and threads), a Hypothesis state machine and a kernel killed between hold and settle."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioReceipt, MonetaryAmount, ToolGrant

from chio_kernel import (
    HoldConflictError,
    IdempotencyKeyReusedError,
    Kernel,
    KernelInputError,
    LocalChioClient,
    UnknownHoldError,
)
from chio_kernel._kernel import receipt_wire_dict
from chio_kernel._request import make_request
from kernel_helpers import Clock, grant, scope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))
from independent_verifier import assert_receipt_verifies  # noqa: E402


def usd(units: int) -> MonetaryAmount:
    return MonetaryAmount(units=units, currency="USD")


def budget(total: int, **limits: Any) -> ToolGrant:
    return grant("model", "*", max_total_cost=usd(total), **limits)


def row(kernel: Kernel, capability_id: str, index: int = 0) -> dict[str, Any]:
    rows = [r for r in kernel.budgets(capability_id) if r["capability_id"] == capability_id and r["grant_index"] == index]
    assert len(rows) == 1
    return rows[0]


def call(kernel: Kernel, cap: str, units: int, n: int = 0, key: str | None = None) -> ChioReceipt:
    return kernel.evaluate(cap, "model", "gpt", {"n": n}, cost=usd(units), idempotency_key=key)


def assert_chain(kernel: Kernel) -> None:
    report = kernel.verify_chain()
    assert report.ok, report.reason
    for r in kernel.list_receipts():
        assert_receipt_verifies(receipt_wire_dict(r))  # a verifier written from the rule alone


def test_allow_places_a_hold_and_settle_captures_the_actual_cost(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    allow = call(kernel, cap, 60)
    assert allow.decision.verdict == "allow"
    assert kernel.get_hold(allow.id)["state"] == "open"
    r = row(kernel, cap)
    assert (r["captured"], r["held"], r["remaining"], r["open_holds"]) == (0, 60, 40, 1)
    # the hold counts against the budget: 60 held + 50 > 100
    assert call(kernel, cap, 50, n=1).decision.guard == "cost"
    settled = kernel.settle(allow.id, usd(25), "op-1")
    meta = settled.metadata["budget"]
    assert settled.tool_server == "chio.budget" and settled.tool_name == "settle"
    assert meta["hold_receipt_id"] == allow.id and meta["captured"] == {"units": 25, "currency": "USD"}
    assert meta["released_units"] == 35 and meta["capped"] is False
    r = row(kernel, cap)
    assert (r["captured"], r["held"], r["remaining"]) == (25, 0, 75)
    assert call(kernel, cap, 75, n=2).decision.verdict == "allow"
    assert call(kernel, cap, 1, n=3).decision.guard == "cost"
    assert_chain(kernel)


def test_same_op_id_returns_the_first_receipt_and_a_different_close_is_a_conflict(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    allow = call(kernel, cap, 40)
    first = kernel.settle(allow.id, usd(10), "op-1")
    again = kernel.settle(allow.id, {"units": 10, "currency": "USD"}, "op-1")
    assert again.id == first.id and again.signature == first.signature
    count = kernel.receipt_count()
    with pytest.raises(HoldConflictError, match="already settled") as info:
        kernel.settle(allow.id, usd(11), "op-2")
    assert info.value.closed_by == first.id
    with pytest.raises(HoldConflictError, match="already settled"):
        kernel.release(allow.id, "op-3", "compensate")
    with pytest.raises(HoldConflictError, match="different operation"):
        kernel.settle(allow.id, usd(12), "op-1")  # op_id of the first settle, other amount
    assert kernel.receipt_count() == count  # refusals record nothing
    assert row(kernel, cap)["captured"] == 10


def test_actual_above_the_hold_is_captured_only_up_to_the_budget_left(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    a = call(kernel, cap, 30)
    b = call(kernel, cap, 50, n=1)
    # a's actual 45 > its hold 30: budget left for a = 100 - 50 (b held) = 50 -> 45 fits
    s = kernel.settle(a.id, usd(45), "a")
    assert s.metadata["budget"]["captured"]["units"] == 45 and s.metadata["budget"]["capped"] is False
    # b's actual 90: only 100 - 45 = 55 left for it
    s = kernel.settle(b.id, usd(90), "b")
    meta = s.metadata["budget"]
    assert meta["capped"] is True and meta["requested"]["units"] == 90 and meta["captured"]["units"] == 55
    r = row(kernel, cap)
    assert (r["captured"], r["held"], r["remaining"]) == (100, 0, 0)
    assert_chain(kernel)


def test_release_frees_the_whole_hold(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    allow = call(kernel, cap, 100)
    assert call(kernel, cap, 1, n=1).decision.guard == "cost"
    rel = kernel.release(allow.id, "saga-1", "workflow compensated")
    assert rel.tool_name == "release" and rel.metadata["budget"]["reason"] == "workflow compensated"
    assert rel.metadata["budget"]["released_units"] == 100
    assert kernel.release(allow.id, "saga-1", "workflow compensated").id == rel.id
    with pytest.raises(HoldConflictError):
        kernel.settle(allow.id, usd(5), "late")
    assert row(kernel, cap)["remaining"] == 100
    assert_chain(kernel)


def test_hold_expires_after_the_ttl(chio_home: Path, clock: Clock) -> None:
    with Kernel(chio_home, clock=clock, hold_ttl=60) as kernel:
        cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
        allow = call(kernel, cap, 100)
        clock.advance(59)
        assert call(kernel, cap, 1, n=1).decision.guard == "cost"
        clock.advance(1)
        # the next costed evaluation expires the due hold in its own transaction, then is decided
        assert call(kernel, cap, 100, n=2).decision.verdict == "allow"
        expiry = [r for r in kernel.list_receipts() if r.tool_name == "expire"]
        assert len(expiry) == 1 and expiry[0].metadata["budget"]["hold_receipt_id"] == allow.id
        assert kernel.get_hold(allow.id)["state"] == "expired"
        # releasing an expired hold: already free, answered with the expiry receipt
        assert kernel.release(allow.id, "saga", "compensate").id == expiry[0].id
        clock.advance(60)
        swept = kernel.expire_holds()  # the explicit sweep
        assert len(swept) == 1 and kernel.expire_holds() == []
        assert row(kernel, cap)["remaining"] == 100
        assert_chain(kernel)


def test_settle_after_expiry_is_a_late_capture_up_to_the_budget_left(chio_home: Path, clock: Clock) -> None:
    with Kernel(chio_home, clock=clock, hold_ttl=10) as kernel:
        cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
        slow = call(kernel, cap, 60)
        clock.advance(11)
        other = call(kernel, cap, 70, n=1)  # expires `slow`, then holds 70
        assert other.decision.verdict == "allow"
        late = kernel.settle(slow.id, usd(60), "slow-done")
        meta = late.metadata["budget"]
        assert meta["after_expiry"] is True and meta["captured"]["units"] == 30 and meta["capped"] is True
        r = row(kernel, cap)
        assert r["captured"] + r["held"] == 100 and r["remaining"] == 0
        assert_chain(kernel)


def test_no_hold_is_a_clear_error(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100), grant("fs", "read")), 3600).id
    uncosted = kernel.evaluate(cap, "fs", "read", {})
    denied = call(kernel, cap, 1000)
    assert denied.decision.guard == "cost"
    for rid in (uncosted.id, denied.id):
        with pytest.raises(UnknownHoldError, match="holds no budget"):
            kernel.settle(rid, usd(1), "x")
    with pytest.raises(UnknownHoldError, match="no receipt"):
        kernel.release("rcpt-nope", "x")
    allow = call(kernel, cap, 10)
    with pytest.raises(KernelInputError, match="in EUR"):
        kernel.settle(allow.id, MonetaryAmount(units=1, currency="EUR"), "x")
    with pytest.raises(KernelInputError):
        kernel.settle(allow.id, {"units": -1, "currency": "USD"}, "x")
    with pytest.raises(KernelInputError):
        kernel.settle(allow.id, usd(1), "")
    assert kernel.get_hold(allow.id)["state"] == "open"


def test_attenuated_capability_holds_on_its_ancestors_budget_too(kernel: Kernel) -> None:
    root = kernel.create_capability("agent:a", scope(budget(100)), 3600)
    child = kernel.attenuate_capability(root.id, scope(budget(80))).id
    allow = call(kernel, child, 70)
    assert row(kernel, root.id)["held"] == 70 and row(kernel, child)["held"] == 70
    assert call(kernel, root.id, 40, n=1).decision.guard == "cost"  # the parent's budget is held too
    kernel.settle(allow.id, usd(20), "op")
    assert row(kernel, root.id)["captured"] == 20 and row(kernel, child)["remaining"] == 60
    assert row(kernel, root.id)["remaining"] == 80


def test_idempotency_key_reused_for_a_different_call_is_refused(kernel: Kernel) -> None:
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    first = call(kernel, cap, 10, key="run-1/step-1")
    assert call(kernel, cap, 10, key="run-1/step-1").id == first.id  # same call: same receipt, one hold
    for other in (
        lambda: call(kernel, cap, 11, key="run-1/step-1"),  # another cost
        lambda: call(kernel, cap, 10, n=1, key="run-1/step-1"),  # other parameters
        lambda: kernel.evaluate(cap, "model", "other", {"n": 0}, cost=usd(10), idempotency_key="run-1/step-1"),
    ):
        with pytest.raises(IdempotencyKeyReusedError, match="different call"):
            other()
    assert row(kernel, cap)["held"] == 10 and row(kernel, cap)["open_holds"] == 1


def test_hold_ttl_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIO_HOLD_TTL", "5")
    with Kernel(tmp_path / "a") as k:
        assert k.hold_ttl == 5.0
    with Kernel(tmp_path / "b", hold_ttl=7) as k:
        assert k.hold_ttl == 7.0
    monkeypatch.delenv("CHIO_HOLD_TTL")
    with Kernel(tmp_path / "c") as k:
        assert k.hold_ttl == 3600.0
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(KernelInputError, match="hold_ttl"):
            Kernel(tmp_path / "d", hold_ttl=bad)
    monkeypatch.setenv("CHIO_HOLD_TTL", "soon")
    with pytest.raises(KernelInputError, match="CHIO_HOLD_TTL"):
        Kernel(tmp_path / "e")


def test_keys_remembered_before_the_key_rule_still_answer(kernel: Kernel) -> None:
    # a store written by an older build remembered allows in `idempotency` (by call fingerprint) only
    cap = kernel.create_capability("agent:a", scope(budget(100)), 3600).id
    old = call(kernel, cap, 10)
    seq = kernel.list_receipts_with_seq()[-1][0]
    req = make_request(cap, "model", "gpt", {"n": 0}, "old-key", usd(10), "Invoke")
    with kernel._store.write() as st:
        st.remember_idempotency(req.idem_hash, seq)
    assert call(kernel, cap, 10, key="old-key").id == old.id
    assert row(kernel, cap)["open_holds"] == 1


async def test_50_concurrent_retries_of_one_key_on_local_client_make_one_hold(chio_home: Path) -> None:
    async with LocalChioClient(chio_home) as client:
        cap = (await client.create_capability(subject="agent:a", scope=scope(budget(1000)))).id

        async def attempt() -> ChioReceipt:
            return await client.evaluate_tool_call(
                capability_id=cap, tool_server="model", tool_name="gpt", parameters={"q": 1},
                idempotency_key="wf-1/model#1", cost=usd(100),
            )

        receipts = await asyncio.gather(*(attempt() for _ in range(50)))
        assert {r.id for r in receipts} == {receipts[0].id}
        rows = await client.budgets(cap)
        assert (rows[0]["held"], rows[0]["open_holds"], rows[0]["invocations"]) == (100, 1, 1)
        settles = await asyncio.gather(*(client.settle(receipts[0].id, usd(40), "settle-1") for _ in range(50)))
        assert len({s.id for s in settles}) == 1
        rows = await client.budgets(cap)
        assert (rows[0]["captured"], rows[0]["held"]) == (40, 0)
        assert client.kernel.verify_chain().ok


def test_50_concurrent_retries_of_one_key_on_threads_make_one_hold(chio_home: Path) -> None:
    with Kernel(chio_home) as kernel:
        cap = kernel.create_capability("agent:a", scope(budget(1000)), 3600).id
        results: list[ChioReceipt] = []
        lock = threading.Lock()
        start = threading.Barrier(50)

        def attempt() -> None:
            start.wait()
            r = call(kernel, cap, 100, key="wf-1/model#1")
            with lock:
                results.append(r)

        threads = [threading.Thread(target=attempt) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 50 and len({r.id for r in results}) == 1
        r = row(kernel, cap)
        assert (r["held"], r["open_holds"], r["invocations"]) == (100, 1, 1)


# --- kill -9 between hold and settle ---------------------------------------------------------------

_HOLDER = """
import sys, time
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant
from chio_kernel import Kernel
k = Kernel(sys.argv[1], hold_ttl=30)
usd = MonetaryAmount(units=100, currency="USD")
g = ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE], max_total_cost=usd)
k.create_capability("agent:a", ChioScope(grants=[g]), 86400, capability_id="cap-killed")
r = k.evaluate("cap-killed", "model", "gpt", {}, cost=usd)
print(r.id, flush=True)
time.sleep(3600)  # killed here: between hold and settle
"""


def test_kill_9_between_hold_and_settle_then_the_expiry_restores_the_budget(chio_home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(chio_home)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        rid = proc.stdout.readline().strip()
        assert rid.startswith("rcpt-"), rid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    offset = [0.0]
    with Kernel(chio_home, clock=lambda: time.time() + offset[0]) as kernel:
        r = row(kernel, "cap-killed")
        assert (r["held"], r["remaining"]) == (100, 0)  # the killed kernel's hold survived it
        assert call(kernel, "cap-killed", 1).decision.guard == "cost"
        offset[0] = 31.0  # past the killed kernel's hold TTL (stored with the hold)
        assert call(kernel, "cap-killed", 100, n=1).decision.verdict == "allow"
        expired = [x for x in kernel.list_receipts() if x.tool_name == "expire"]
        assert [x.metadata["budget"]["hold_receipt_id"] for x in expired] == [rid]
        assert_chain(kernel)


# --- Hypothesis: sequences of hold, retry, key reuse, settle, release, expire and clock moves --------

import shutil  # noqa: E402
import tempfile  # noqa: E402

from hypothesis import settings, strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

TOTAL = 100
TTL = 100.0


class HoldMachine(RuleBasedStateMachine):
    """The kernel against a model of its holds: every answer and the budget numbers must match the
    model exactly, and captured + open holds never exceed max_total_cost."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="chio-holds-")
        self.clock = Clock()
        self.kernel = Kernel(self.dir, clock=self.clock, hold_ttl=TTL)
        self.cap = self.kernel.create_capability("agent:h", scope(budget(TOTAL)), 10**7).id
        self.holds: dict[str, dict[str, Any]] = {}  # rid -> units, expires, state, captured, closed_by
        self.keys: dict[str, tuple[int, int, str]] = {}  # key -> (n, units, rid)
        self.last_op: dict[str, tuple[str, Any, str, str]] = {}  # rid -> (kind, arg, op_id, receipt id)
        self.n = 0

    def teardown(self) -> None:
        try:
            report = self.kernel.verify_chain()
            assert report.ok, report.reason
        finally:
            self.kernel.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # the model
    def committed(self) -> int:
        return sum(h["units"] for h in self.holds.values() if h["state"] == "open") + sum(
            h["captured"] for h in self.holds.values()
        )

    def model_expire(self) -> None:
        for h in self.holds.values():
            if h["state"] == "open" and h["expires"] <= self.clock.now:
                h["state"] = "expired"

    @rule(units=st.integers(0, 60), keyed=st.booleans())
    def hold(self, units: int, keyed: bool) -> None:
        self.n += 1
        key = f"k{self.n}" if keyed else None
        self.model_expire()
        r = call(self.kernel, self.cap, units, n=self.n, key=key)
        if self.committed() + units <= TOTAL:
            assert r.decision.verdict == "allow", r.decision
            self.holds[r.id] = {"units": units, "expires": self.clock.now + TTL, "state": "open", "captured": 0}
            if key is not None:
                self.keys[key] = (self.n, units, r.id)
        else:
            assert r.decision.guard == "cost", r.decision

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.keys)))
        n, units, rid = self.keys[key]
        self.model_expire()
        assert call(self.kernel, self.cap, units, n=n, key=key).id == rid  # one hold, whatever happened since

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def reuse_key(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.keys)))
        n, units, _ = self.keys[key]
        with pytest.raises(IdempotencyKeyReusedError):
            call(self.kernel, self.cap, units + 1, n=n, key=key)  # rolled back: no expiry either

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.holds)))

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), actual=st.integers(0, 120))
    def settle(self, data: st.DataObject, actual: int) -> None:
        rid = self.pick(data)
        h = self.holds[rid]
        op = f"op{self.n}-{actual}"
        self.n += 1
        if h["state"] in ("settled", "released"):
            with pytest.raises(HoldConflictError):
                self.kernel.settle(rid, usd(actual), op)
            return
        held = h["units"] if h["state"] == "open" else 0
        expected = min(actual, max(TOTAL - (self.committed() - held), 0))
        s = self.kernel.settle(rid, usd(actual), op)
        meta = s.metadata["budget"]
        assert meta["captured"]["units"] == expected and meta["capped"] == (expected < actual)
        assert meta["after_expiry"] == (h["state"] == "expired")
        h.update(state="settled", captured=expected)
        self.last_op[rid] = ("settle", actual, op, s.id)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = self.pick(data)
        h = self.holds[rid]
        op = f"rel{self.n}"
        self.n += 1
        if h["state"] in ("settled", "released"):
            with pytest.raises(HoldConflictError):
                self.kernel.release(rid, op)
            return
        r = self.kernel.release(rid, op)
        if h["state"] == "expired":
            assert r.tool_name == "expire"  # already free: its expiry receipt
        else:
            assert r.tool_name == "release"
            h["state"] = "released"
        self.last_op[rid] = ("release", None, op, r.id)

    @precondition(lambda self: self.last_op)
    @rule(data=st.data())
    def repeat_op(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.last_op)))
        kind, arg, op, receipt_id = self.last_op[rid]
        again = self.kernel.settle(rid, usd(arg), op) if kind == "settle" else self.kernel.release(rid, op)
        assert again.id == receipt_id

    @rule(seconds=st.sampled_from([0.0, 1.0, 50.0, 99.0, 100.0, 150.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def sweep(self) -> None:
        due = sum(1 for h in self.holds.values() if h["state"] == "open" and h["expires"] <= self.clock.now)
        assert len(self.kernel.expire_holds()) == due
        self.model_expire()

    @invariant()
    def budget_is_exact(self) -> None:
        self.model_expire()  # budgets() expires due holds first, as the model does here
        r = row(self.kernel, self.cap)
        held = sum(h["units"] for h in self.holds.values() if h["state"] == "open")
        captured = sum(h["captured"] for h in self.holds.values())
        assert (r["held"], r["captured"]) == (held, captured)
        assert r["captured"] + r["held"] <= TOTAL
        assert r["remaining"] == TOTAL - captured - held


TestHoldMachine = HoldMachine.TestCase
TestHoldMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
