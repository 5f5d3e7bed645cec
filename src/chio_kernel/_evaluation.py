"""The evaluation service: decide one call, charge it and record its receipt, in group commits.

Before the write transaction: input checks, canonical forms and hashes (``chio_kernel._request``,
called by the facade) and the pure guards (scope, constraints: :meth:`Evaluator.prepare`). Inside it
(:meth:`Evaluator.evaluate_in`): validity, the idempotency rule, budgets and rate limits, the
approval gate, then the receipt; concurrent callers share one transaction (``_group_commit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from chio_sdk.models import ChioReceipt

from chio_kernel._approvals import Approvals, _Pending
from chio_kernel._capabilities import LoadCap, Trust, _Cap
from chio_kernel._errors import StoreConflictError
from chio_kernel._group_commit import GroupCommitter, max_batch_from_env
from chio_kernel._holds import Holds
from chio_kernel._idempotency import remember, remembered_answer
from chio_kernel._policy import Deny, check_valid, decide, passing_grants
from chio_kernel._receipts import ALLOW, ReceiptChain
from chio_kernel._request import EvalRequest, Precheck
from chio_kernel._store import GENESIS_HASH, StoreReader, StoreWriter

__all__ = ["Evaluator"]

#: A request whose transaction PostgreSQL rolled back to break a deadlock runs again, this often at most.
_CONFLICT_RETRIES = 5


def _counted(cap: _Cap) -> bool:
    """Does deciding a call on ``cap`` read or charge shared counters (budgets, a rate window)?"""
    if cap.rate_max is not None:
        return True
    return any(
        g.max_invocations is not None or g.max_total_cost is not None or g.max_cost_per_invocation is not None
        for g in cap.grants
    )


class Evaluator:
    """Decides calls (``Kernel.evaluate`` delegates here); holds the group committer."""

    def __init__(
        self,
        caps: dict[str, _Cap],
        load_cap: LoadCap,
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        clock: Callable[[], float],
        chain: ReceiptChain,
        services: tuple[Approvals, Holds, Trust],
        where: str,
    ) -> None:
        """Wire the evaluation to what it needs.

        Args:
            caps: the verified-capability cache (read without a lock before the transaction).
            load_cap: loads a verified capability inside a store transaction.
            read: a short read transaction; write: a write transaction.
            clock: unix seconds.
            chain: signs and appends receipts.
            services: the approval gate, the holds, and the trust (its ``on_write`` hook).
            where: the kernel's ``base_url`` (in deny reasons).
        """
        self._caps = caps
        self._load_cap = load_cap
        self._read = read
        self._write = write
        self._clock = clock
        self._chain = chain
        self._approvals, self._holds, self._trust = services
        self._watch_keys = type(self._trust).on_write is not Trust.on_write  # a fleet: retired keys
        self._where = where
        self.committer: GroupCommitter[EvalRequest, ChioReceipt] = GroupCommitter(
            self.run_batch, max_batch_from_env()
        )

    def prepare(self, req: EvalRequest) -> EvalRequest:
        """Everything else before the write transaction: the pure guards of the checked request
        (``_request.make_request``); returns ``req``."""
        # The pure guards (scope, constraints: regex_match may be slow) need no database state:
        # run them before the write transaction, so a slow call never blocks others.
        # (A root capability without constraints has nothing slow to check: skip the extra pass.)
        cached = self._caps.get(req.capability_id)
        if cached is None or cached.constrained or len(cached.lineage) > 1:
            req.pre = self.precheck(req)
        return req

    def precheck(self, req: EvalRequest) -> Precheck | None:
        """The pure guards (scope, constraints) for the capability and its ancestors, outside the
        write transaction: per capability id, its grants that cover the call and pass their
        constraints, or the deny. None if the capability is unknown (decided in the transaction)."""
        root = self._cached_load(req.capability_id)
        if root is None:
            return None
        caps = [root]
        for ancestor_id in root.lineage[1:]:
            ancestor = self._cached_load(ancestor_id)
            if ancestor is not None:
                caps.append(ancestor)
        out: Precheck = {}
        for depth, c in enumerate(caps):
            try:
                out[c.token.id] = passing_grants(c, depth > 0, req.tool_server, req.tool_name, req.op, req.params)
            except Deny as deny:
                out[c.token.id] = deny
        return out

    def _cached_load(self, cid: str) -> _Cap | None:
        cap = self._caps.get(cid)  # tokens are immutable: a cached entry needs no lock
        if cap is None:
            with self._read() as st:  # a short read (no transaction held)
                cap = self._load_cap(st, cid)
        return cap

    def run_batch(self, reqs: Sequence[EvalRequest]) -> list[ChioReceipt | BaseException]:
        """Decide ``reqs`` in ONE write transaction (group commit); results are released after its
        commit. If any of them raises, everything is rolled back and each runs in its own
        transaction, so an error reaches only its caller."""
        if len(reqs) > 1:
            try:
                with self._write() as st:
                    if st.ROW_LOCKS:  # every capability the batch counts on, locked at once in id order
                        st.lock_capabilities([i for r in reqs for i in self._counted_lineage(r.capability_id)])
                    out: list[ChioReceipt | BaseException] = [self.evaluate_in(st, r) for r in reqs]
                return out
            except Exception:
                pass  # fall through: one transaction each
        return [self._evaluate_alone(r) for r in reqs]

    def _evaluate_alone(self, req: EvalRequest) -> ChioReceipt | BaseException:
        """One request in its own transaction; a deadlock PostgreSQL broke (nothing decided) is retried."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with self._write() as st:
                    return self.evaluate_in(st, req)
            except StoreConflictError as err:
                if attempt == _CONFLICT_RETRIES - 1:
                    return err
            except BaseException as err:
                return err
        raise AssertionError("unreachable")  # pragma: no cover

    def _counted_lineage(self, capability_id: str) -> list[str]:
        """The ids of a capability's lineage whose shared counters (budgets, rate windows) a decision
        reads: those with limits, and those not cached yet (unknown: locked to be safe)."""
        cap = self._caps.get(capability_id)
        if cap is None:
            return [capability_id]
        out = []
        for cid in cap.lineage:
            c = self._caps.get(cid)
            if c is None or _counted(c):
                out.append(cid)
        return out

    def evaluate_in(self, st: StoreWriter, req: EvalRequest) -> ChioReceipt:
        """Decide, charge and record one call inside the caller's write transaction."""
        if self._watch_keys and self._trust.on_write(st):  # a fleet key was retired: re-check every capability
            self._caps.clear()
        now = self._clock()
        if st.ROW_LOCKS:  # concurrent writers: lock the shared counters first (nothing when unlimited)
            cap = self._load_cap(st, req.capability_id)
            if cap is not None:
                st.lock_capabilities(self._counted_lineage(req.capability_id))
            if req.idem_hash is not None and req.key_hash is not None:
                st.claim_idempotency_key(req.key_hash)
            if req.cost_t is not None and cap is not None:  # the due holds this decision counts
                self._holds.expire_due(st, now, touching=cap.lineage)
        else:
            if req.cost_t is not None:  # holds past their TTL free their budget before this call is decided
                self._holds.expire_due(st, now)
            cap = self._load_cap(st, req.capability_id)
        # One statement reads the chain head and the revocation state (of the capability and
        # its ancestors) inside the write transaction: another process's revoke is seen.
        if cap is not None:
            head_seq, prev_hash, revoked = st.head_and_revoked(cap.lineage)
        else:
            head_seq, prev_hash = st.chain_head()
            revoked = None
        try:
            check_valid(cap, req.capability_id, now, revoked, self._where)
            if req.idem_hash is not None:
                assert req.key is not None and req.key_hash is not None
                # same key, same call: its receipt; same key, another call: refused (Stripe's rule)
                body = remembered_answer(st, req.key_hash, req.idem_hash, req.key)
                if body is not None:
                    return ChioReceipt.model_validate_json(body)
            assert cap is not None
            lineage = self._lineage(st, cap)
            charges, rated = decide(
                st, lineage, req.tool_server, req.tool_name, req.op, req.params, req.cost_t, now, req.pre
            )
            # every other guard passed: does a human have to approve (or has one)? (deny > pending > allow)
            gate = self._approvals.gate(st, req, lineage, now)
        except Deny as deny:
            decision = {"verdict": "deny", "guard": deny.guard, "reason": deny.reason}
            policy_hash = cap.policy_hash if cap is not None else GENESIS_HASH
            return self._chain.append(st, head_seq, prev_hash, now, req, decision, policy_hash, req.metadata)[0]
        if isinstance(gate, _Pending):  # nothing charged
            return self._approvals.pending_receipt(st, head_seq, prev_hash, now, req, cap, gate)
        if gate is not None:  # the approval is still pending: its pending receipt again
            return gate
        # allow: charge, then record (and hold a declared cost until settled, released or expired)
        for charged_id, grant_index in charges:
            st.charge(charged_id, grant_index, req.cost_t[0] if req.cost_t else 0)
        for rated_id in rated:
            st.record_rate_event(rated_id, now)
        if req.approval_id is None:
            receipt, seq = self._chain.append(
                st, head_seq, prev_hash, now, req, ALLOW, cap.policy_hash, req.metadata
            )
        else:
            receipt, seq = self._approvals.approved_allow_receipt(st, head_seq, prev_hash, now, req, cap.policy_hash)
        if req.idem_hash is not None:
            remember(st, req.key_hash, req.idem_hash, seq)
        if req.cost_t is not None:
            self._holds.place(st, receipt.id, req.capability_id, cap.policy_hash, req.cost_t, charges, now)
        return receipt

    def _lineage(self, st: StoreReader, cap: _Cap) -> list[_Cap]:
        lineage = [cap]
        for ancestor_id in cap.lineage[1:]:
            ancestor = self._load_cap(st, ancestor_id)
            if ancestor is not None:  # a trusted foreign root this kernel never stored: its budgets live there
                lineage.append(ancestor)
        return lineage
