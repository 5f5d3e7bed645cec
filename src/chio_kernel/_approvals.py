"""Human approval as a kernel verdict (the rules are in ``docs/approvals.md``).

A grant constraint ``{"type": "require_approval_above", "value": {"threshold_units": N}}`` sends a
call whose declared cost is N units or more (no declared cost counts as 0) to a human:

* **pending** — when every other guard passes, the kernel answers a signed, chained receipt with
  ``decision.verdict = "pending_approval"``, guard ``approval`` and
  ``metadata.pending_approval = {approval_id, parameter_hash, expires_at, summary}``, and stores an
  approval bound to the call (capability, tool, operation, parameters, cost). Nothing is charged. The
  same idempotency key gets the same pending receipt back. A deny beats a pending approval (the
  other guards run first), and a pending approval beats an allow.
* **resolution** — the kernel's operator (:meth:`chio_kernel.Kernel.respond_approval`; the sidecar's
  ``POST /approvals/{id}/operator-respond``; ``chio-durable approvals approve|deny``) or a signed
  approval token from a trusted approver key (:meth:`chio_kernel.Kernel.respond_approval_token`;
  ``POST /approvals/{id}/respond``) answers it ONCE (a second answer is an
  :class:`ApprovalConflictError`, HTTP 409). Each answer is a signed receipt in the chain
  (``decision.verdict = "approval_resolution"``, ``metadata.approval_resolution``).
* **re-evaluation** — the same call sent again with ``approval_id`` re-runs every guard and is
  allowed (and charged) only if the approval was approved, has not expired, the capability is still
  valid and the call is the one approved; the allow receipt carries ``metadata.approval_id``. An
  approval is used by ONE allow: a second re-evaluation under another idempotency key is a deny
  (``approval-consumed``); the same idempotency key gets the same allow receipt back.
* **waking the run** — a waiting run registers wakes on its approval
  (:meth:`chio_kernel.Kernel.register_approval_wake`); once an answer is committed the kernel calls
  their wakers (``chio_kernel._wakers``), after the commit and outside every store lock. A wake only
  wakes the run; the re-evaluation above decides.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chio_sdk.models import ChioReceipt, Operation

try:  # orjson (a dependency of prefect) parses a page of pending receipts ~5x faster than the stdlib
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the stdlib parser
    from json import loads as _loads  # type: ignore[assignment]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chio_kernel._capabilities import LoadCap, _Cap
from chio_kernel._coerce import (
    APPROVAL_CONSTRAINT,
    MAX_STORED_INT,
    _iso,
    _require_str,
    approval_rule,
    approval_threshold_value,
)
from chio_kernel._errors import (
    ApprovalConflictError,
    ApprovalError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTokenError,
    KernelInputError,
)
from chio_kernel._idempotency import remember
from chio_kernel._paging import MAX_PAGE_LIMIT, Page, Yielder, check_limit, decode_cursor, encode_cursor
from chio_kernel._ids import _uuid7_str
from chio_kernel._money import format_money
from chio_kernel._policy import Deny
from chio_kernel._receipts import ALLOW, CallRecord, ReceiptChain
from chio_kernel._request import EvalRequest, call_hash
from chio_kernel._roles import SHARED_PRINCIPALS, Principal
from chio_kernel._run_context import ROLE_KEY, merge_run_metadata, principal_name, run_context_of
from chio_kernel._store import GENESIS_HASH, ApprovalRow, StoreReader, StoreWriter
from chio_kernel.canonical import canonical_json
from chio_kernel._guards import grant_matches
from chio_kernel._wakers import MAX_WAKES, check_wake, run_wakes
from chio_kernel.signing import verify_hex

__all__ = [
    "APPROVAL_CONSTRAINT",
    "APPROVAL_GUARD",
    "APPROVAL_TTL_ENV",
    "APPROVERS_FILE",
    "DEFAULT_APPROVAL_TTL",
    "PENDING_HEADER",
    "PENDING_VERDICT",
    "RESOLUTION_VERDICT",
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalTokenError",
    "Approvals",
    "approval_requirement",
    "approval_settings",
    "sign_approval_token",
]

#: ``decision.verdict`` of a call waiting for a human (``is_allowed`` and ``is_denied`` are both False).
PENDING_VERDICT = "pending_approval"
#: ``decision.verdict`` of the receipt that records a human's answer (it allows nothing by itself).
RESOLUTION_VERDICT = "approval_resolution"
#: The guard named by pending and resolution receipts.
APPROVAL_GUARD = "approval"
#: The request header by which a sidecar client says it understands ``pending_approval`` receipts
#: (value ``understood``); without it a pending call is answered with a signed deny (fail closed).
PENDING_HEADER = "X-Chio-Pending"
#: Seconds an approval may wait (default :data:`DEFAULT_APPROVAL_TTL`); ``Kernel(approval_ttl=)`` wins.
APPROVAL_TTL_ENV = "CHIO_APPROVAL_TTL"
DEFAULT_APPROVAL_TTL = 86_400
#: Trusted approver public keys, one hex key per line (``#`` comments), in the data directory.
APPROVERS_FILE = "approvers"
#: The answers a human can give.
OUTCOMES = ("approved", "denied")
#: Seconds an approval token's ``issued_at`` may lie in the future (clock skew between machines).
TOKEN_CLOCK_SKEW = 60
#: A page of approvals reads at most this many batches of rows (pending ones whose capability was
#: revoked meanwhile are skipped by a ``pending`` listing): bounded work, a short page goes on.
_PAGE_ROUNDS = 4
_TOKEN_FIELDS = frozenset(
    {"id", "approver", "subject", "request_id", "parameter_hash", "issued_at", "expires_at", "decision", "signature"}
)
_TOKEN_OPTIONAL = frozenset({"reason"})
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class _Pending:
    """The call needs a human: the lowest threshold reached, the capability that set it, and how many
    distinct approvers must say yes (the most any reached rule asks for)."""

    threshold: int
    capability_id: str
    approvers: int = 1


def approval_requirement(
    lineage: Sequence[_Cap], tool_server: str, tool_name: str, op: Operation, cost_units: int
) -> tuple[int, str, int] | None:
    """``(threshold, capability id, approvers)`` if the call needs a human, else None.

    Every grant of the capability AND of its ancestors that covers the call counts (a delegated
    capability keeps its parent's approval rule); the lowest threshold reached wins, and the largest
    number of approvers any reached rule asks for. A value that is not a valid rule counts as
    threshold 0 (fail closed: every call needs a human).
    """
    best: tuple[int, str, int] | None = None
    for c in lineage:
        if not c.constrained:
            continue
        for g in c.grants:
            for con in g.constraints:
                if con.type != APPROVAL_CONSTRAINT or not grant_matches(g, tool_server, tool_name, op):
                    continue
                try:
                    threshold, approvers = approval_rule(con.value, "require_approval_above")
                except KernelInputError:
                    threshold, approvers = 0, 1
                if cost_units < threshold:
                    continue
                if best is None:
                    best = (threshold, c.token.id, approvers)
                else:
                    low = (threshold, c.token.id) if threshold < best[0] else best[:2]
                    best = (low[0], low[1], max(approvers, best[2]))
    return best


def _check_hex_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or len(key) != 64 or not set(key.lower()) <= _HEX:
        raise KernelInputError(f"{what} {key!r:.80} is not a 64-hex-char Ed25519 public key")
    return key.lower()


def sign_approval_token(
    private_key: Ed25519PrivateKey,
    approval: Mapping[str, Any],
    decision: str,
    *,
    reason: str | None = None,
    ttl_seconds: int = 300,
    now: float | None = None,
    token_id: str | None = None,
) -> dict[str, Any]:
    """Sign an approval token that answers an approval, as a trusted approver.

    Upstream's token fields: ``id``, ``approver`` (the hex public key of ``private_key``),
    ``subject``, ``request_id`` (the approval id), ``parameter_hash`` (the parameter binding),
    ``issued_at``, ``expires_at``, ``decision``, optional ``reason``, and ``signature``: Ed25519 over
    the RFC 8785 canonical JSON of the token without ``signature`` (the rule of every other Chio
    signature). POST it to ``/approvals/{id}/respond`` or pass it to ``Kernel.respond_approval_token``;
    the kernel must trust the key (``approver_keys``).

    Args:
        private_key: the approver's Ed25519 key.
        approval: the approval as ``Kernel.get_approval`` returns it (``id``, ``subject``,
            ``parameter_hash`` are read).
        decision: ``"approved"`` or ``"denied"``.
        reason: why (signed into the token).
        ttl_seconds: how long the token stays usable from ``now``.
        now: the issue time in unix seconds (default: the clock now).
        token_id: the token's id (default: a new ``apt-...`` id).

    Returns:
        The signed token as a JSON dict.

    Raises:
        KernelInputError: ``decision`` is neither ``"approved"`` nor ``"denied"``.
    """
    if decision not in OUTCOMES:
        raise KernelInputError(f"decision must be 'approved' or 'denied', got {decision!r}")
    issued = int(now if now is not None else time.time())
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    token: dict[str, Any] = {
        "id": token_id or "apt-" + _uuid7_str(),
        "approver": public,
        "subject": str(approval["subject"]),
        "request_id": str(approval["id"]),
        "parameter_hash": str(approval["parameter_hash"]),
        "issued_at": issued,
        "expires_at": issued + int(ttl_seconds),
        "decision": decision,
    }
    if reason is not None:
        token["reason"] = reason
    token["signature"] = private_key.sign(canonical_json(token)).hex()
    return token


def _check_token(token: Any) -> dict[str, Any]:
    """The token's fields, type-checked (a :class:`KernelInputError` names what is wrong)."""
    if not isinstance(token, Mapping):
        raise KernelInputError(f"an approval token is a JSON object, got {type(token).__name__}")
    missing = sorted(_TOKEN_FIELDS - set(token))
    extra = sorted(set(token) - _TOKEN_FIELDS - _TOKEN_OPTIONAL)
    if missing or extra:
        raise KernelInputError(
            f"approval token fields are {sorted(_TOKEN_FIELDS)} (+ optional 'reason'); "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unknown {extra}" if extra else "")
        )
    for name in ("id", "subject", "request_id", "decision", "parameter_hash", "signature", "approver"):
        _require_str(f"approval token {name}", token[name], max_len=4096)
    for name in ("issued_at", "expires_at"):
        v = token[name]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53:
            raise KernelInputError(f"approval token {name} must be an integer (unix seconds), got {v!r:.40}")
    if token.get("reason") is not None:
        _require_str("approval token reason", token["reason"], max_len=4096)
    if token["decision"] not in OUTCOMES:
        raise KernelInputError(f"approval token decision must be 'approved' or 'denied', got {token['decision']!r:.40}")
    _check_hex_key(token["approver"], "approval token approver")
    return dict(token)


def approval_settings(approver_keys: Iterable[str], approval_ttl: int | None) -> tuple[frozenset[str], int]:
    """The approver keys and the approval TTL a kernel is given, checked (before anything is opened).

    Args:
        approver_keys: hex Ed25519 public keys.
        approval_ttl: seconds; None: ``$CHIO_APPROVAL_TTL``, else :data:`DEFAULT_APPROVAL_TTL`.

    Returns:
        ``(keys lower-cased, ttl)``.

    Raises:
        KernelInputError: a key is not a hex Ed25519 key, or the TTL is not valid.
    """
    keys = frozenset(_check_hex_key(k, "approver key") for k in approver_keys)
    return keys, _resolve_approval_ttl(approval_ttl)


def _resolve_approval_ttl(approval_ttl: int | None) -> int:
    """``approval_ttl``, else ``$CHIO_APPROVAL_TTL``, else :data:`DEFAULT_APPROVAL_TTL` (checked)."""
    if approval_ttl is None:
        raw = os.environ.get(APPROVAL_TTL_ENV, "").strip()
        if raw:
            try:
                approval_ttl = int(raw)
            except ValueError:
                raise KernelInputError(f"${APPROVAL_TTL_ENV} must be a whole number of seconds, got {raw!r}") from None
        else:
            approval_ttl = DEFAULT_APPROVAL_TTL
    if isinstance(approval_ttl, bool) or not isinstance(approval_ttl, int) or not 0 < approval_ttl <= 10 * 366 * 86400:
        raise KernelInputError(f"approval_ttl must be a positive number of seconds (at most 10 years), got {approval_ttl!r}")
    return approval_ttl


def _outcome(value: Any) -> str:
    if value not in OUTCOMES:
        raise KernelInputError(f"outcome must be 'approved' or 'denied', got {value!r:.40}")
    return str(value)


def _reason(value: Any) -> str | None:
    if value is None:
        return None
    return _require_str("reason", value, max_len=4096)


class Approvals:
    """The approval service (the rules are in the module doc): configuration, the evaluation's gate
    and receipts, reading, answering and waking. ``Kernel`` exposes its public methods."""

    def __init__(
        self,
        data_dir: Path,
        approver_keys: frozenset[str],
        approval_ttl: int,
        clock: Callable[[], float],
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        load_cap: LoadCap,
        chain: ReceiptChain,
    ) -> None:
        """Keep approvals in the store via ``read`` / ``write``, sign their receipts with ``chain``.

        ``approver_keys`` / ``approval_ttl`` as :func:`approval_settings` checked them.
        """
        self.data_dir = data_dir
        self._clock = clock
        self._read = read
        self._write = write
        self._load_cap = load_cap
        self._chain = chain
        self._approver_keys = approver_keys
        self._wake_reports: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._wake_reports_lock = threading.Lock()
        self._approval_ttl = approval_ttl
        #: True while evaluations are in flight: listings pause for them (set by the kernel).
        self.busy: Callable[[], bool] | None = None

    # --- configuration ---

    @property
    def approval_ttl(self) -> int:
        """See ``Kernel`` (the public doc is there)."""
        return self._approval_ttl

    @property
    def approver_keys(self) -> frozenset[str]:
        """See ``Kernel`` (the public doc is there)."""
        keys = set(self._approver_keys)
        path = self.data_dir / APPROVERS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return frozenset(keys)
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                keys.add(_check_hex_key(line, f"{path} line {n}:"))
        return frozenset(keys)

    def trust_approver(self, public_key: str) -> None:
        """See ``Kernel`` (the public doc is there)."""
        key = _check_hex_key(public_key, "approver key")
        if key in self.approver_keys:
            return
        path = self.data_dir / APPROVERS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(key + "\n")

    # --- evaluation (called by Kernel._evaluate_in inside its write transaction) ---

    def gate(
        self, st: StoreWriter, req: EvalRequest, lineage: Sequence[_Cap], now: float
    ) -> ChioReceipt | _Pending | None:
        """After every other guard passed: None (go on and allow), a :class:`_Pending` (the call needs
        a human), a stored receipt to answer as is (the approval is still pending), or a
        :class:`Deny` (raised)."""
        approval_id = req.approval_id
        if approval_id is None:
            if not any(c.constrained for c in lineage):
                return None
            need = approval_requirement(
                lineage, req.tool_server, req.tool_name, req.op, req.cost_t[0] if req.cost_t else 0
            )
            return None if need is None else _Pending(*need)
        row = st.approval(approval_id)
        if row is None:
            raise Deny("approval-unknown", f"no approval {approval_id!r} in this kernel; send the call without approval_id to ask for one")
        if (row.capability_id, row.tool_server, row.tool_name) != (req.capability_id, req.tool_server, req.tool_name):
            raise Deny(
                "approval-unknown",
                f"approval {approval_id} was asked for {row.tool_server}/{row.tool_name} under capability "
                f"{row.capability_id}, not for this call",
            )
        if row.parameter_hash != req.param_hash:
            raise Deny(
                "approval-parameters-mismatch",
                f"approval {approval_id} approves parameters with hash {row.parameter_hash}; this call's "
                f"parameters hash to {req.param_hash}. An approval covers only the parameters approved",
            )
        if row.call_hash != call_hash(req):
            raise Deny(
                "approval-parameters-mismatch",
                f"approval {approval_id} approves another operation or declared cost for this call; "
                "send the call exactly as approved",
            )
        if row.status == "denied":
            raise Deny("approval-denied", f"approval {approval_id} was denied by {row.approver}: {row.reason}")
        if now >= row.expires_at and not (row.status == "approved" and row.consumed_receipt_id is not None):
            raise Deny(
                "approval-timeout",
                f"approval {approval_id} expired at {_iso(row.expires_at)} "
                f"({'approved' if row.status == 'approved' else 'nobody answered'} in time); ask again",
            )
        if row.status == "pending":
            body = st.receipt_body(row.pending_receipt_id)
            if body is None:  # pragma: no cover - the pending receipt is written with the approval
                raise Deny("approval-unknown", f"approval {approval_id} has no pending receipt")
            return ChioReceipt.model_validate_json(body)
        if row.consumed_receipt_id is not None:
            raise Deny(
                "approval-consumed",
                f"approval {approval_id} was already used by receipt {row.consumed_receipt_id}; one approval "
                "allows one call (retry with the same idempotency key to get that receipt back)",
            )
        return None

    def pending_receipt(
        self, st: StoreWriter, head_seq: int, prev_hash: str, now: float, req: EvalRequest, cap: _Cap,
        pending: _Pending,
    ) -> ChioReceipt:
        """Record the approval and its signed pending receipt (nothing charged)."""
        approval_id = "apr-" + _uuid7_str()
        # a wait beyond the capability's own expiry could never end in an allow
        expires_at = min(int(now) + self._approval_ttl, int(cap.token.expires_at))
        cost = format_money(*req.cost_t) if req.cost_t else "no declared cost"
        summary = (
            f"{req.op.value} {req.tool_server}/{req.tool_name} by {cap.token.subject} under capability "
            f"{req.capability_id}, cost {cost}"
        )
        who = "a person must" if pending.approvers == 1 else f"{pending.approvers} distinct approvers must"
        reason = (
            f"{req.tool_server}/{req.tool_name} costs {cost}, at or above the approval threshold "
            f"{_threshold_text(pending.threshold, req.cost_t)} of capability {pending.capability_id}: {who} approve "
            f"{approval_id} (`chio-durable approvals approve {approval_id}`) before {_iso(expires_at)}, then the "
            "call is sent again with approval_id"
        )
        info: dict[str, Any] = {
            "approval_id": approval_id,
            "parameter_hash": req.param_hash,
            "expires_at": expires_at,
            "summary": summary,
        }
        if req.cost_t:  # the declared cost, as the inbox shows it
            info["cost"] = {"units": req.cost_t[0], "currency": req.cost_t[1]}
        if pending.approvers > 1:
            info["approvals_needed"] = pending.approvers
        # the caller's run context too (the kernel's keys win)
        metadata = merge_run_metadata({"pending_approval": info}, req.metadata)
        receipt, seq = self._chain.append(
            st, head_seq, prev_hash, now, req,
            {"verdict": PENDING_VERDICT, "guard": APPROVAL_GUARD, "reason": reason}, cap.policy_hash, metadata,
        )
        st.insert_approval(ApprovalRow(
            id=approval_id, capability_id=req.capability_id, tool_server=req.tool_server, tool_name=req.tool_name,
            parameter_hash=req.param_hash, call_hash=call_hash(req), subject=cap.token.subject, summary=summary,
            created_at=int(now), expires_at=expires_at, status="pending", pending_receipt_id=receipt.id,
        ))
        remember(st, req.key_hash, req.idem_hash, seq)
        return receipt

    def approved_allow_receipt(
        self, st: StoreWriter, head_seq: int, prev_hash: str, now: float, req: EvalRequest, policy_hash: str
    ) -> tuple[ChioReceipt, int]:
        """The allow receipt of a re-evaluation under an approval (``metadata.approval_id``) and its
        store seq; uses the approval up."""
        assert req.approval_id is not None
        receipt, seq = self._chain.append(
            st, head_seq, prev_hash, now, req, ALLOW, policy_hash,
            merge_run_metadata({"approval_id": req.approval_id}, req.metadata),
        )
        if not st.consume_approval(req.approval_id, receipt.id):  # pragma: no cover - checked in this transaction
            raise RuntimeError(f"approval {req.approval_id} was used meanwhile")
        return receipt, seq

    def pending_as_deny(self, pending: ChioReceipt, metadata: Mapping[str, str] | None = None) -> ChioReceipt:
        """A signed deny (guard ``approval``) answering a pending call to a client that has not said it
        understands ``pending_approval``: the approval stays recorded and answerable; the deny names it
        and how to approve it. ``metadata``: who asked (as the pending receipt's run context)."""
        info = (pending.metadata or {}).get("pending_approval") or {}
        approval_id = str(info.get("approval_id", ""))
        reason = (
            f"approval {approval_id} waits for a person (pending_approval); this client did not say it understands "
            f"pending approvals (header '{PENDING_HEADER}: understood'), so the call is denied here. A person "
            f"approves it with `chio-durable approvals approve {approval_id}` (or POST /approvals/{approval_id}/"
            "operator-respond with an approver credential); then a client that understands approvals sends the "
            "call again with approval_id"
        )
        action = pending.action
        call = CallRecord(pending.capability_id, pending.tool_server, pending.tool_name,
                          dict(action.parameters), action.parameter_hash)
        extra = merge_run_metadata({"pending_approval": dict(info), "approval_id": approval_id}, metadata)
        with self._write() as st:
            head_seq, prev_hash = st.chain_head()
            receipt, _ = self._chain.append(
                st, head_seq, prev_hash, self._clock(), call,
                {"verdict": "deny", "guard": APPROVAL_GUARD, "reason": reason}, pending.policy_hash, extra,
            )
            return receipt

    # --- reading approvals ---

    def _approval_view(self, st: StoreReader, row: ApprovalRow, now: float) -> dict[str, Any]:
        return self._approval_views(st, [row], now)[0]

    def _approval_views(
        self, st: StoreReader, rows: Sequence[ApprovalRow], now: float, pause: Callable[[], None] = lambda: None
    ) -> list[dict[str, Any]]:
        """Approvals as ``get_approval`` answers them; a page's revocations and pending receipts in
        one statement each (``pause`` between the steps)."""
        lineages = {}
        for row in rows:
            cap = self._load_cap(st, row.capability_id)
            lineages[row.id] = cap.lineage if cap is not None else (row.capability_id,)
        pause()
        revoked_ids = st.revoked_among(sorted({cid for lineage in lineages.values() for cid in lineage}))
        pause()
        bodies = st.receipt_bodies([row.pending_receipt_id for row in rows])
        pause()
        answers = st.approval_answers_among([row.id for row in rows])
        out = []
        for i, row in enumerate(rows):
            if i % 25 == 24:
                pause()
            revoked = next((c for c in lineages[row.id] if c in revoked_ids), None)
            out.append(self._view(row, now, revoked, bodies.get(row.pending_receipt_id), answers.get(row.id, [])))
        return out

    @staticmethod
    def _view(
        row: ApprovalRow, now: float, revoked: str | None, body: str | None, answers: Sequence[tuple[Any, ...]]
    ) -> dict[str, Any]:
        status, approver, reason = row.status, row.approver, row.reason
        if status == "pending" and now >= row.expires_at:
            status = "expired"
        elif status == "pending" and revoked is not None:
            status, reason = "denied", f"capability {revoked} was revoked during the wait"
        pending = _loads(body) if body is not None else None
        params = pending["action"]["parameters"] if pending is not None else None
        md = (pending.get("metadata") or {}) if pending is not None else {}
        asker = principal_name(md)
        return {
            "id": row.id,
            "status": status,
            "capability_id": row.capability_id,
            "tool_server": row.tool_server,
            "tool_name": row.tool_name,
            "parameters": params,
            "parameter_hash": row.parameter_hash,
            "subject": row.subject,
            "summary": row.summary,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "pending_receipt_id": row.pending_receipt_id,
            "resolved_at": row.resolved_at,
            "approver": approver,
            "reason": reason,
            "resolution_receipt_id": row.resolution_receipt_id,
            "consumed_receipt_id": row.consumed_receipt_id,
            "requested_by": None if asker is None else {"role": md.get(ROLE_KEY), "name": asker},
            "approvals_needed": _needed(md),
            "approvals": [
                {"name": name, "role": role, "at": at, "receipt_id": rid}
                for name, role, at, rid in answers
            ],
        }

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        """See ``Kernel`` (the public doc is there)."""
        _require_str("approval_id", approval_id, max_len=256)
        with self._read() as st:
            row = st.approval(approval_id)
            return None if row is None else self._approval_view(st, row, self._clock())

    def list_approvals(self, status: str | None = "pending", *, limit: int | None = None) -> list[dict[str, Any]]:
        """See ``Kernel`` (the public doc is there)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_STORED_INT):
            raise KernelInputError(f"limit must be an integer from 0 to {MAX_STORED_INT}, got {limit!r:.40}")
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while limit is None or len(out) < limit:
            want = MAX_PAGE_LIMIT if limit is None else min(MAX_PAGE_LIMIT, limit - len(out))
            if want == 0:
                break
            page = self.page(status, want, cursor)
            out += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return out

    def page(self, status: str | None, limit: int | None, cursor: str | None) -> Page[dict[str, Any]]:
        """Approvals newest first, one page (see ``Kernel.approvals_page``)."""
        if status not in (None, "pending", "approved", "denied", "expired"):
            raise KernelInputError(
                f"status must be 'pending', 'approved', 'denied', 'expired', or None for every approval, got {status!r:.40}"
            )
        n = check_limit(limit)
        pos = decode_cursor(cursor, "approvals", [status], (int, str))
        before = (pos[0], pos[1]) if pos else None
        now = self._clock()
        # the stored status and expiry in SQL; "pending" whose capability was revoked shows as denied
        stored = None if status is None else ("pending" if status in ("pending", "expired") else status)
        expiry = (status == "expired", int(now)) if status in ("pending", "expired") else None
        if status == "denied":
            stored, expiry = None, None  # stored denied ones, and pending ones revoked meanwhile
        out: list[dict[str, Any]] = []
        pause = Yielder(self.busy).pause
        with self._read() as st:
            for _ in range(_PAGE_ROUNDS):  # bounded work: a page may be short, its cursor goes on
                want = n - len(out)
                pause()
                rows = st.approvals_page(stored, before, want + 1, expiry)
                out += [v for v in self._approval_views(st, rows[:want], now, pause) if status in (None, v["status"])]
                if rows[:want]:
                    before = (rows[:want][-1].created_at, rows[:want][-1].id)
                if len(rows) <= want:
                    return Page(out, None)
                if len(out) == n:
                    break
        assert before is not None
        return Page(out, encode_cursor("approvals", [status], list(before)))

    # --- resolving ---

    def respond_approval(
        self, approval_id: str, outcome: str, reason: str | None = None, *,
        approver: Principal | str | None = None,
    ) -> ChioReceipt:
        """See ``Kernel`` (the public doc is there)."""
        _require_str("approval_id", approval_id, max_len=256)
        if approver is None:
            who = IN_PROCESS_OPERATOR
        elif isinstance(approver, Principal):
            who = approver
        else:
            warnings.warn(
                "respond_approval(approver='NAME') is deprecated: pass approver=Principal(role, name), the "
                "authenticated approver (chio_kernel.Principal); a plain label is recorded as an operator",
                DeprecationWarning, stacklevel=3,
            )
            who = Principal("operator", _require_str("approver", approver, max_len=256))
        return self._resolve(approval_id, _outcome(outcome), _reason(reason), self._chain.key, who, None)

    def respond_approval_token(self, token: Mapping[str, Any], approval_id: str | None = None) -> ChioReceipt:
        """See ``Kernel`` (the public doc is there)."""
        data = _check_token(token)
        if approval_id is not None and data["request_id"] != approval_id:
            raise ApprovalTokenError(f"the token answers request {data['request_id']!r}, not approval {approval_id!r}")
        approver = data["approver"].lower()
        if approver not in self.approver_keys:
            raise ApprovalTokenError(
                f"approver key {approver} is not trusted by this kernel (add it with "
                "`chio-durable approvals trust KEY` or Kernel(approver_keys=[...]))"
            )
        body = {k: v for k, v in data.items() if k != "signature"}
        if not verify_hex(approver, data["signature"], canonical_json(body)):
            raise ApprovalTokenError(f"approval token {data['id']!r} has an invalid signature (forged or altered)")
        now = self._clock()
        if data["issued_at"] > now + TOKEN_CLOCK_SKEW or now >= data["expires_at"]:
            raise ApprovalTokenError(
                f"approval token {data['id']!r} is valid from {_iso(data['issued_at'])} to {_iso(data['expires_at'])}, "
                f"not now ({_iso(now)})"
            )

        def bound(row: ApprovalRow) -> None:
            if data["parameter_hash"] != row.parameter_hash:
                raise ApprovalTokenError(
                    f"approval token {data['id']!r} is bound to other parameters than approval {row.id}"
                )
            if data["subject"] != row.subject:
                raise ApprovalTokenError(f"approval token {data['id']!r} names another subject than approval {row.id}")

        reason = data.get("reason") or f"signed approval token {data['id']}"
        who = Principal("approver", approver)  # the key that signed is the approver's name
        return self._resolve(data["request_id"], data["decision"], reason, approver, who, data["id"], bound)

    def _resolve(
        self,
        approval_id: str,
        outcome: str,
        reason: str | None,
        approver_key: str,
        who: Principal,
        token_id: str | None,
        check: Callable[[ApprovalRow], None] | None = None,
    ) -> ChioReceipt:
        if who.role not in ("approver", "operator"):
            raise ApprovalForbiddenError(
                f"credential {who.name!r} is a {who.role}: only an approver or the operator answers approvals"
            )
        with self._write() as st:
            row = st.approval(approval_id)
            if row is None:
                raise ApprovalNotFoundError(f"no approval {approval_id!r} in this kernel")
            if check is not None:
                check(row)
            now = self._clock()
            head_seq, prev_hash, cap = self._answerable(st, row, outcome, now)
            pending_body = st.receipt_body(row.pending_receipt_id)
            pending = ChioReceipt.model_validate_json(pending_body) if pending_body else None
            md = (pending.metadata or {}) if pending is not None else {}
            answers = _check_answerer(row, who, md, st.approval_answers(approval_id))
            needed = _needed(md)
            final = outcome == "denied" or len(answers) + 1 >= needed
            text = reason if reason is not None else outcome
            resolution: dict[str, Any] = {
                "approval_id": approval_id,
                "outcome": outcome,
                "approver_key": approver_key,
                "approver": who.name,
                "approver_role": who.role,
                "reason": text,
                "pending_receipt_id": row.pending_receipt_id,
            }
            if token_id is not None:
                resolution["token_id"] = token_id
            if needed > 1:
                resolution["approvals"] = len(answers) + (outcome == "approved")
                resolution["approvals_needed"] = needed
            count = "" if needed == 1 or outcome == "denied" else f" ({len(answers) + 1} of {needed})"
            params = pending.action.parameters if pending is not None else {}
            receipt, _ = self._chain.append(
                st, head_seq, prev_hash, now,
                CallRecord(row.capability_id, row.tool_server, row.tool_name, params, row.parameter_hash),
                {"verdict": RESOLUTION_VERDICT, "guard": APPROVAL_GUARD,
                 "reason": f"{outcome} by {who.name}{count}: {text}"},
                cap.policy_hash if cap is not None else GENESIS_HASH,
                merge_run_metadata({"approval_resolution": resolution}, run_context_of(md)),  # the run's too
            )
            st.insert_approval_answer(approval_id, who.name, who.role, int(now), receipt.id)
            if not final:
                return receipt  # more approvers must answer: still pending, nobody to wake
            if not st.resolve_approval(approval_id, outcome, int(now), approver_key, text, receipt.id):
                raise ApprovalConflictError(f"approval {approval_id} was answered meanwhile")  # pragma: no cover
            # read in the resolving transaction: a wake registered after this commit sees the answer
            # and wakes its run itself (register_approval_wake), so each wake is called once
            wakes = st.approval_wakes(approval_id)
        outcome_view = _wake_outcome(approval_id, outcome, approver_key, text, receipt.id)
        self._remember_wakes(approval_id, run_wakes(approval_id, wakes, outcome_view) if wakes else [])
        return receipt

    def _answerable(self, st: StoreWriter, row: ApprovalRow, outcome: str, now: float) -> tuple[int, str, _Cap | None]:
        """``(head seq, head hash, capability)`` once the approval can still be answered ``outcome``;
        :class:`ApprovalConflictError` if it was answered, expired, or (approving) its capability revoked."""
        if row.status != "pending":
            raise ApprovalConflictError(
                f"approval {row.id} was already answered: {row.status} by {row.approver} at "
                f"{_iso(row.resolved_at or 0)} (receipt {row.resolution_receipt_id}); each approval is answered once"
            )
        if now >= row.expires_at:
            raise ApprovalConflictError(
                f"approval {row.id} expired at {_iso(row.expires_at)}; the call is denied (approval-timeout)"
            )
        cap = self._load_cap(st, row.capability_id)
        head_seq, prev_hash, revoked = st.head_and_revoked(cap.lineage if cap is not None else (row.capability_id,))
        if revoked is not None and outcome == "approved":
            raise ApprovalConflictError(
                f"capability {revoked} was revoked during the wait; approval {row.id} can no longer be granted"
            )
        return head_seq, prev_hash, cap

    # --- waking the run (chio_kernel._wakers) ---

    def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> dict[str, Any]:
        """Register what wakes the run waiting for this approval once it is answered (the public doc is on ``Kernel``)."""
        _require_str("approval_id", approval_id, max_len=256)
        text = check_wake(wake)
        with self._write() as st:
            row = st.approval(approval_id)
            if row is None:
                raise ApprovalNotFoundError(f"no approval {approval_id!r} in this kernel")
            known = st.approval_wakes(approval_id)
            if text not in known and len(known) >= MAX_WAKES:
                raise KernelInputError(
                    f"approval {approval_id} has {len(known)} wakes registered already, the most it takes is "
                    f"{MAX_WAKES}; register the same wake again (it is deduplicated) instead of a new one each time"
                )
            st.add_approval_wake(approval_id, text, self._clock())
            view = self._approval_view(st, row, self._clock())
        woken: list[dict[str, Any]] = []
        if row.status in OUTCOMES:  # answered before the run registered: wake it now
            assert row.approver is not None and row.resolution_receipt_id is not None
            outcome = _wake_outcome(approval_id, row.status, row.approver, row.reason, row.resolution_receipt_id)
            woken = run_wakes(approval_id, [text], outcome)
        return {"approval_id": approval_id, "status": view["status"], "woken": woken}

    def last_wake_report(self, approval_id: str) -> list[dict[str, Any]] | None:
        """What answering this approval in THIS process woke (the wakes registered on it) (the public doc is on ``Kernel``)."""
        with self._wake_reports_lock:
            report = self._wake_reports.get(approval_id)
            return None if report is None else [dict(r) for r in report]

    def _remember_wakes(self, approval_id: str, report: list[dict[str, Any]]) -> None:
        with self._wake_reports_lock:
            self._wake_reports[approval_id] = report
            self._wake_reports.move_to_end(approval_id)
            while len(self._wake_reports) > _WAKE_REPORTS_KEPT:
                self._wake_reports.popitem(last=False)


_WAKE_REPORTS_KEPT = 1024

#: Who answers through ``Kernel.respond_approval`` without naming a principal: the in-process caller,
#: which holds the kernel itself (the operator).
IN_PROCESS_OPERATOR = Principal("operator", "operator")


def _needed(pending_metadata: Mapping[str, Any]) -> int:
    """How many distinct approvers the pending call needs (its receipt's ``approvals_needed``, else 1)."""
    info = pending_metadata.get("pending_approval")
    needed = info.get("approvals_needed", 1) if isinstance(info, Mapping) else 1
    return needed if isinstance(needed, int) and needed >= 1 else 1


def _check_answerer(
    row: ApprovalRow, who: Principal, pending_metadata: Mapping[str, Any], answers: list[tuple[str, str, int, str]]
) -> list[tuple[str, str, int, str]]:
    """The answers so far, once ``who`` may add one: not the principal whose call waits, and not twice."""
    asker = principal_name(pending_metadata)
    if asker is not None and asker == who.name and who not in SHARED_PRINCIPALS:
        raise ApprovalForbiddenError(
            f"credential {who.name!r} asked for the call that waits on approval {row.id}; the principal whose "
            "call waits cannot approve it (another approver must)"
        )
    if any(name == who.name for name, _, _, _ in answers):
        raise ApprovalConflictError(
            f"{who.name} answered approval {row.id} already; the same approver counts once (it needs "
            f"{_needed(pending_metadata) - len(answers)} more distinct approver(s))"
        )
    return answers


def _wake_outcome(
    approval_id: str, status: str, approver: str, reason: str | None, resolution_receipt_id: str
) -> dict[str, Any]:
    """What a waker is told about the answer (it only wakes the run; the kernel decides)."""
    return {
        "approval_id": approval_id,
        "status": status,
        "approver": approver,
        "reason": reason,
        "resolution_receipt_id": resolution_receipt_id,
    }


def _threshold_text(threshold: int, cost_t: tuple[int, str] | None) -> str:
    """The approval threshold (minor units) in the call's currency, or as units when none was declared."""
    return format_money(threshold, cost_t[1]) if cost_t else f"{threshold} (minor units)"
