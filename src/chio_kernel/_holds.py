"""Budgets in money: holds that settle, release or expire (the hold service).

An allow for a call that declares a cost places a **hold** for that cost on every budgeted grant it
charged (the capability's and its ancestors'). While the hold is open its units count in the
grant's ``usage.cost_units``, so the kernel's one budget check (``_policy.check_budget``:
``committed + cost <= max_total_cost``) keeps ``captured + open holds <= max_total_cost`` exactly.
A hold then closes once:

* **settle** (``Kernel.settle``) captures the actual cost and frees the rest; an actual cost above
  the hold is captured only up to what the budget has left (``capped``);
* **release** (``Kernel.release``) frees the whole hold (compensation);
* **expire**: a hold not closed within the kernel's hold TTL is freed, lazily inside the write
  transaction of the next evaluation that declares a cost, or by ``Kernel.expire_holds()``.

Each close is a signed receipt chained like every other (``tool_server`` ``chio.budget``,
``tool_name`` ``settle`` / ``release`` / ``expire``, ``metadata["budget"]`` pointing at the allow).
Everything runs inside ONE store write transaction (the store serialises writers: threads,
processes, a fleet on PostgreSQL), so the arithmetic is exact. See ``docs/budgets.md``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from chio_sdk.models import ChioReceipt, MonetaryAmount

from chio_kernel._coerce import _coerce_cost, _require_str, from_env
from chio_kernel._errors import (
    CapabilityError,
    HoldConflictError,
    IdempotencyKeyReusedError,
    KernelConflictError,
    KernelInputError,
    UnknownHoldError,
)
from chio_kernel._capabilities import LoadCap
from chio_kernel._paging import Page, Yielder, check_limit, decode_cursor, encode_cursor
from chio_kernel._receipts import ALLOW, CallRecord, ReceiptChain
from chio_kernel._run_context import check_run_metadata, merge_run_metadata
from chio_kernel._store import HoldRow, StoreReader, StoreWriter
from chio_kernel.canonical import canonical_json

__all__ = [
    "BUDGET_TOOL_SERVER",
    "DEFAULT_HOLD_TTL",
    "HOLD_TTL_ENV",
    "HoldConflictError",
    "IdempotencyKeyReusedError",
    "KernelConflictError",
    "UnknownHoldError",
    "Holds",
    "capture_amount",
    "resolve_hold_ttl",
]

#: Seconds an unsettled hold lives before it expires (``Kernel(hold_ttl=)``, ``$CHIO_HOLD_TTL``).
DEFAULT_HOLD_TTL = 3600.0
HOLD_TTL_ENV = "CHIO_HOLD_TTL"
#: ``tool_server`` of the settle / release / expire receipts (they are no tool call).
BUDGET_TOOL_SERVER = "chio.budget"
#: The states a hold can be in (``holds_page(state=)``).
HOLD_STATES = ("open", "settled", "released", "expired")
#: At most this many due holds are expired inside one evaluation's transaction (the rest next time).
_EXPIRE_BATCH = 256


def resolve_hold_ttl(value: float | None) -> float:
    """The hold TTL in seconds: ``value``, else ``$CHIO_HOLD_TTL``, else :data:`DEFAULT_HOLD_TTL`."""
    value, where = from_env(value, "hold_ttl", HOLD_TTL_ENV, float, "a number of seconds")
    if value is None:
        return DEFAULT_HOLD_TTL
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise KernelInputError(f"{where} must be a positive number of seconds, got {value!r}")
    return float(value)


def capture_amount(actual: int, rooms: Sequence[int]) -> tuple[int, bool]:
    """Pure settle arithmetic: ``(captured, capped)`` for an ``actual`` cost.

    ``rooms``: for each charged grant with a ``max_total_cost``, its limit minus everything committed
    on it except this hold. The capture is the actual cost, at most the smallest room (never below 0);
    ``capped`` says the actual cost did not fit.
    """
    captured = actual
    for room in rooms:
        captured = min(captured, max(room, 0))
    return captured, captured < actual


def _money(units: int, currency: str) -> dict[str, Any]:
    return {"units": units, "currency": currency}


def _expiry_answer(st: StoreReader, hold: HoldRow) -> tuple[ChioReceipt, int]:
    """A release of an expired hold: already free, so its goal is met; the expiry receipt answers."""
    assert hold.closed_seq is not None and hold.closed_by is not None
    body = st.receipt_body(hold.closed_by)
    assert body is not None
    return ChioReceipt.model_validate_json(body), hold.closed_seq


def _budget_call(capability_id: str, op: str, parameters: dict[str, Any]) -> CallRecord:
    """A settle/release/expire as the receipt records it (``tool_server`` ``chio.budget``)."""
    param_hash = hashlib.sha256(canonical_json(parameters)).hexdigest()
    return CallRecord(capability_id, BUDGET_TOOL_SERVER, op, parameters, param_hash)


class Holds:
    """The hold service (``Kernel.settle`` / ``release`` / ``expire_holds`` / ``budgets`` delegate
    here). Stateless apart from the TTL: everything lives in the store."""

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float],
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        load_cap: LoadCap,
        chain: ReceiptChain,
    ) -> None:
        """Holds live ``ttl`` seconds by ``clock``; stored via ``read`` / ``write``, receipts via ``chain``."""
        self.ttl = ttl
        self.busy: Callable[[], bool] | None = None  # evaluations in flight: pages pause for them
        self._clock = clock
        self._read = read
        self._write = write
        self._load_cap = load_cap
        self._chain = chain

    # --- inside an evaluation's transaction ---

    def place(
        self,
        st: StoreWriter,
        receipt_id: str,
        capability_id: str,
        policy_hash: str,
        cost_t: tuple[int, str],
        charges: Sequence[tuple[str, int]],
        now: float,
    ) -> None:
        """Open a hold for an allow that declared a cost (its charges already counted it)."""
        units, currency = cost_t
        st.insert_hold(
            HoldRow(receipt_id, capability_id, policy_hash, units, currency, now, now + self.ttl), charges
        )

    def expire_due(
        self, st: StoreWriter, now: float, limit: int = _EXPIRE_BATCH, touching: Sequence[str] | None = None
    ) -> list[ChioReceipt]:
        """Expire the open holds whose TTL has passed (a signed receipt each); before budget checks.

        ``touching``: only the holds that charged one of these capabilities (an evaluation's lineage).
        With concurrent writers (``st.ROW_LOCKS``) the charged capabilities are locked first, in id
        order, and each hold is read again under the locks (another kernel may have closed it).
        """
        out = []
        due = st.due_holds(now, limit, touching)
        if st.ROW_LOCKS and due:
            grants_of = {h.receipt_id: st.hold_grants(h.receipt_id) for h in due}
            st.lock_capabilities([cid for grants in grants_of.values() for cid, _ in grants])
            due = [h for h in (st.hold(h.receipt_id) for h in due) if h is not None and h.state == "open"]
        for hold in due:
            grants = st.hold_grants(hold.receipt_id)
            for cid, index in grants:
                st.adjust_cost(cid, index, -hold.units)
            budget = {
                "op": "expire",
                "hold_receipt_id": hold.receipt_id,
                "hold": _money(hold.units, hold.currency),
                "released_units": hold.units,
                "hold_expired_at": int(hold.expires_at),
            }
            receipt, seq = self._append(st, now, hold, "expire", {"hold_receipt_id": hold.receipt_id}, budget)
            st.close_hold(hold.receipt_id, "expired", 0, receipt.id, seq)
            out.append(receipt)
        return out

    def _append(
        self, st: StoreWriter, now: float, hold: HoldRow, op: str, parameters: dict[str, Any], budget: dict[str, Any],
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[ChioReceipt, int]:
        head_seq, prev_hash = st.chain_head()
        return self._chain.append(
            st, head_seq, prev_hash, now, _budget_call(hold.capability_id, op, parameters), ALLOW,
            hold.policy_hash, merge_run_metadata({"budget": budget}, metadata),
        )

    # --- the public operations ---

    def settle(
        self, receipt_id: str, actual_cost: MonetaryAmount | Mapping[str, Any], op_id: str,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        rid = _require_str("receipt_id", receipt_id, max_len=256)
        op = _require_str("op_id", op_id, max_len=256)
        cost = _coerce_cost(actual_cost)
        if cost is None:
            raise KernelInputError("actual_cost is required: {'units': int, 'currency': str} (minor units)")
        units, currency = cost
        with self._write() as st:
            return self._close(st, rid, op, "settle", f"settle\x1f{units}\x1f{currency}", (units, currency), None,
                               check_run_metadata(metadata))

    def release(
        self, receipt_id: str, op_id: str, reason: str = "released", metadata: Mapping[str, str] | None = None
    ) -> ChioReceipt:
        rid = _require_str("receipt_id", receipt_id, max_len=256)
        op = _require_str("op_id", op_id, max_len=256)
        why = _require_str("reason", reason, max_len=1024)
        with self._write() as st:
            return self._close(st, rid, op, "release", "release", None, why, check_run_metadata(metadata))

    def expire(self) -> list[ChioReceipt]:
        out: list[ChioReceipt] = []
        while True:
            with self._write() as st:
                batch = self.expire_due(st, self._clock())
            out.extend(batch)
            if len(batch) < _EXPIRE_BATCH:
                return out

    def _close(
        self,
        st: StoreWriter,
        rid: str,
        op_id: str,
        kind: str,
        fingerprint: str,
        actual: tuple[int, str] | None,
        reason: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        now = self._clock()
        if st.ROW_LOCKS:  # concurrent writers: the charged capabilities, then the hold row, locked first
            st.lock_capabilities([cid for cid, _ in st.hold_grants(rid)])
            st.hold(rid)
        prior = st.hold_op(rid, op_id)
        if prior is not None:
            if prior[0] == fingerprint:  # the same operation again (a retry): its first receipt
                return ChioReceipt.model_validate_json(prior[1])
            raise HoldConflictError(
                f"op_id {op_id!r} was already used on the hold of {rid} for a different operation; "
                "use a new op_id for a new operation"
            )
        hold = st.hold(rid)
        if hold is None:
            exists = st.receipt_body(rid) is not None
            raise UnknownHoldError(
                f"receipt {rid} holds no budget (a deny, or an allow whose call declared no cost)"
                if exists else f"no receipt {rid!r} in this kernel's store"
            )
        if hold.state in ("settled", "released"):
            raise HoldConflictError(
                f"the hold of {rid} was already {hold.state} by receipt {hold.closed_by}; a hold closes once "
                f"(a retry must reuse the op_id of the first {'settle' if hold.state == 'settled' else 'release'})",
                closed_by=hold.closed_by,
            )
        if kind == "release" and hold.state == "expired":
            receipt, seq = _expiry_answer(st, hold)
        elif kind == "release":
            receipt, seq = self._release_hold(st, now, hold, op_id, reason, metadata)
        else:
            assert actual is not None
            receipt, seq = self._settle_hold(st, now, hold, op_id, actual, metadata)
        st.remember_hold_op(rid, op_id, fingerprint, seq)
        return receipt

    def _release_hold(
        self, st: StoreWriter, now: float, hold: HoldRow, op_id: str, reason: str | None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[ChioReceipt, int]:
        """Free an open hold: ``(release receipt, seq)``."""
        rid = hold.receipt_id
        for cid, index in st.hold_grants(rid):
            st.adjust_cost(cid, index, -hold.units)
        params: dict[str, Any] = {"hold_receipt_id": rid, "op_id": op_id, "reason": reason}
        budget: dict[str, Any] = {
            "op": "release",
            "hold_receipt_id": rid,
            "op_id": op_id,
            "reason": reason,
            "hold": _money(hold.units, hold.currency),
            "released_units": hold.units,
        }
        receipt, seq = self._append(st, now, hold, "release", params, budget, metadata)
        st.close_hold(rid, "released", 0, receipt.id, seq)
        return receipt, seq

    def _settle_hold(
        self, st: StoreWriter, now: float, hold: HoldRow, op_id: str, actual: tuple[int, str],
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[ChioReceipt, int]:
        """Capture ``actual`` (up to the budget left) and free the rest: ``(settle receipt, seq)``."""
        rid = hold.receipt_id
        units, currency = actual
        if currency != hold.currency:
            raise KernelInputError(
                f"actual_cost is in {currency}, but the hold of {rid} is in {hold.currency}; settle in "
                f"{hold.currency}"
            )
        expired = hold.state == "expired"
        held = 0 if expired else hold.units  # an expired hold was freed already: a late capture
        grants = st.hold_grants(rid)
        rooms = []
        for cid, index in grants:
            cap = self._load_cap(st, cid)
            total = cap.grants[index].max_total_cost if cap is not None and index < len(cap.grants) else None
            if total is not None:
                rooms.append(total.units - (st.usage(cid, index)[1] - held))
        captured, capped = capture_amount(units, rooms)
        for cid, index in grants:
            st.adjust_cost(cid, index, captured - held)
        params = {"hold_receipt_id": rid, "op_id": op_id, "actual_cost": _money(units, currency)}
        budget = {
            "op": "settle",
            "hold_receipt_id": rid,
            "op_id": op_id,
            "hold": _money(hold.units, hold.currency),
            "requested": _money(units, currency),
            "captured": _money(captured, currency),
            "released_units": max(held - captured, 0),
            "capped": capped,
            "after_expiry": expired,
        }
        receipt, seq = self._append(st, now, hold, "settle", params, budget, metadata)
        st.close_hold(rid, "settled", captured, receipt.id, seq)
        return receipt, seq

    # --- reads ---

    def get(self, receipt_id: str) -> dict[str, Any] | None:
        rid = _require_str("receipt_id", receipt_id, max_len=256)
        with self._read() as st:
            hold = st.hold(rid)
            grants = st.hold_grants(rid) if hold is not None else []
        return None if hold is None else _hold_view(hold, grants)

    def page(
        self, state: str | None, capability_id: str | None, limit: int | None, cursor: str | None
    ) -> Page[dict[str, Any]]:
        """Holds newest first, one page (see ``Kernel.holds_page``)."""
        if state not in (None, *HOLD_STATES):
            raise KernelInputError(f"state must be one of {', '.join(HOLD_STATES)} or None, got {state!r:.40}")
        if capability_id is not None:
            _require_str("capability_id", capability_id, max_len=256)
        n = check_limit(limit)
        filters = [state, capability_id]
        pos = decode_cursor(cursor, "holds", filters, (float, str))
        Yielder(self.busy).pause()
        with self._read() as st:
            rows = st.holds_page(state, capability_id, (pos[0], pos[1]) if pos else None, n + 1)
            items = [_hold_view(h, st.hold_grants(h.receipt_id)) for h in rows[:n]]
        last = rows[n - 1] if len(rows) > n else None
        return Page(items, None if last is None else encode_cursor("holds", filters, [last.created_at, last.receipt_id]))

    def budgets(self, capability_id: str) -> list[dict[str, Any]]:
        cid = _require_str("capability_id", capability_id, max_len=256)
        self.expire()  # due expiries first: the numbers below are exact
        with self._read() as st:
            cap = self._load_cap(st, cid)
            if cap is None:
                raise CapabilityError(f"no capability {cid!r} in this kernel")
            lineage = [cap]
            for ancestor_id in cap.lineage[1:]:
                ancestor = self._load_cap(st, ancestor_id)
                if ancestor is not None:
                    lineage.append(ancestor)
            return [row for depth, c in enumerate(lineage) for row in _budget_rows(st, c.token, depth > 0)]


def _hold_view(hold: HoldRow, grants: list[tuple[str, int]]) -> dict[str, Any]:
    """A hold as ``Kernel.get_hold`` / ``holds_page`` answer it."""
    return {
        "receipt_id": hold.receipt_id,
        "capability_id": hold.capability_id,
        "amount": _money(hold.units, hold.currency),
        "state": hold.state,
        "captured_units": hold.captured_units,
        "created_at": hold.created_at,
        "expires_at": hold.expires_at,
        "closed_by": hold.closed_by,
        "grants": [{"capability_id": c, "grant_index": i} for c, i in grants],
    }


def _budget_rows(st: StoreReader, token: Any, inherited: bool) -> list[dict[str, Any]]:
    usage = {index: (inv, units) for index, inv, units in st.usage_of(token.id)}
    held = {index: (units, n) for index, units, n in st.held_by_grant(token.id)}
    rows = []
    for index, g in enumerate(token.scope.grants):
        total, per = g.max_total_cost, g.max_cost_per_invocation
        if g.max_invocations is None and total is None and per is None:
            continue
        invocations, committed = usage.get(index, (0, 0))
        held_units, open_holds = held.get(index, (0, 0))
        limit = total.units if total is not None else None
        rows.append({
            "capability_id": token.id,
            "inherited": inherited,
            "grant_index": index,
            "server_id": g.server_id,
            "tool_name": g.tool_name,
            "currency": total.currency if total is not None else (per.currency if per is not None else None),
            "max_total_cost": limit,
            "max_cost_per_invocation": per.units if per is not None else None,
            "captured": max(committed - held_units, 0),
            "held": held_units,
            "open_holds": open_holds,
            "remaining": None if limit is None else max(limit - committed, 0),
            "invocations": invocations,
            "max_invocations": g.max_invocations,
        })
    return rows
