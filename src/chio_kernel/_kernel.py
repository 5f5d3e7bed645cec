"""The embedded Chio kernel: capabilities, guards, evaluation and the signed receipt chain.

See ``docs/kernel.md`` for the rules this module implements (signed bodies, guard order, budgets,
idempotency, rate limits, storage durability).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chio_sdk.models import CapabilityToken, ChioReceipt, ChioScope, MonetaryAmount, Operation, ToolGrant
from pydantic import ValidationError

from chio_kernel.canonical import canonical_json, canonical_json_str
from chio_kernel.signing import KEY_FILE, Signer, default_data_dir, ensure_data_dir, load_or_create_key
from chio_kernel._approvals import ApprovalsMixin, _Pending, build_signed_receipt
from chio_kernel._capabilities import Capabilities, _Cap, capability_signing_bytes
from chio_kernel._coerce import (
    MAX_COST_UNITS,
    _coerce_cost,
    _coerce_operation,
    _require_str,
    check_scope_fields,
)
from chio_kernel._errors import CapabilityError, ChioKernelError, KernelInputError, KernelKeyMissingError
from chio_kernel._group_commit import GroupCommitter, max_batch_from_env
from chio_kernel._sqlite_store import DB_FILE, SQLiteStore
from chio_kernel._ids import uuid7
from chio_kernel._holds import Holds, key_fingerprint_hash, remembered_allow, resolve_hold_ttl
from chio_kernel._policy import _Deny, check_valid, decide, passing_grants
from chio_kernel._run_context import check_run_metadata
from chio_kernel._receipts import (
    ChainReport,
    _chain_dumps,
    build_receipt,
    check_http_receipt_body,
    receipt_chain_hash,
    receipt_signing_bytes,
    receipt_wire_dict,
    verify_receipt_dict,
)
from chio_kernel._store import GENESIS_HASH, KernelStore, ReceiptQuery, StoreReader, StoreWriter

__all__ = [
    "CapabilityError",
    "ChainReport",
    "ChioKernelError",
    "Kernel",
    "KernelInputError",
    "KernelKeyMissingError",
    "MAX_COST_UNITS",
    "capability_signing_bytes",
    "check_scope_fields",
    "receipt_chain_hash",
    "receipt_signing_bytes",
    "receipt_wire_dict",
    "resolve_store",
    "uuid7",
]


#: A declared ``cost.units`` is at most this (the store keeps spent units as a 64-bit integer).


# --- ids ---------------------------------------------------------------------------------------


# --- signed bodies (ONE rule each for signing and verifying) ----------------------------------




# --- capability cache entry -------------------------------------------------------------------


def _refuse_missing_key(data_dir: Path, store: KernelStore) -> None:
    """Raise :class:`KernelKeyMissingError` if ``kernel.key`` is absent but the store holds
    capabilities or receipts (a new key would silently orphan them)."""
    if (data_dir / KEY_FILE).exists():
        return
    counts = store.stored_counts()
    if not counts.capabilities and not counts.receipts:
        return  # a store that never held anything: nothing to orphan
    key_hint = f" (its public key starts {counts.newest_key[:16]})" if counts.newest_key else ""
    raise KernelKeyMissingError(
        f"the kernel signing key {data_dir / KEY_FILE} is missing, but the store {data_dir / DB_FILE} holds "
        f"{counts.capabilities} capabilities and {counts.receipts} receipts signed with it; a new key would "
        f"invalidate all of them. Restore kernel.key from your backup into {data_dir}{key_hint}; or, to start "
        f"a new kernel identity, use another data directory (--data-dir / CHIO_HOME) or move kernel.db, "
        f"kernel.db-wal and kernel.db-shm out of {data_dir}."
    )


@dataclass(slots=True)
class _EvalRequest:
    """One evaluation, coerced and hashed before the write transaction (see ``Kernel.evaluate``)."""

    capability_id: str
    tool_server: str
    tool_name: str
    op: Operation
    params: dict[str, Any]
    params_text: str  # canonical JSON (what the signature covers)
    params_ascii: str  # the chain-hash serialisation
    param_hash: str
    cost_t: tuple[int, str] | None
    idem_hash: str | None
    pre: dict[str, list[tuple[int, ToolGrant]] | _Deny] | None
    approval_id: str | None = None  # a re-evaluation under this approval (chio_kernel._approvals)
    key: str | None = None  # the idempotency key itself (for the key-reuse rule's message)
    key_hash: str | None = None  # the key's own hash (the key-reuse rule, chio_kernel._holds)
    metadata: dict[str, str] | None = None  # the caller's run context, signed (chio_kernel._run_context)


# --- the kernel --------------------------------------------------------------------------------


#: The environment variable that selects the store when ``store`` is not given (docs/fleet.md).
STORE_ENV = "CHIO_STORE"


def resolve_store(store: str | None) -> str | None:
    """The PostgreSQL URL a kernel should use, or None for the default SQLite store in its data dir.

    ``store`` (else ``$CHIO_STORE``): ``postgresql://...`` / ``postgres://...`` selects PostgreSQL;
    ``None``, ``""`` or ``"sqlite"`` the SQLite store. Anything else is a :class:`KernelInputError`.
    """
    value = store if store is not None else os.environ.get(STORE_ENV, "")
    if not isinstance(value, str):
        raise KernelInputError(f"store must be a postgresql:// URL or 'sqlite', got {type(value).__name__}")
    value = value.strip()
    if value in ("", "sqlite"):
        return None
    if value.startswith(("postgresql://", "postgres://")):
        return value
    where = "store" if store is not None else f"${STORE_ENV}"
    raise KernelInputError(
        f"{where} must be a PostgreSQL URL (postgresql://user@host:5432/dbname) or 'sqlite' (the default: "
        f"kernel.db in the data directory), got {value[:40]!r}"
    )


class Kernel(ApprovalsMixin):
    """The embedded Chio kernel. Safe to share across threads; several processes may share a data dir.

    Args:
        data_dir: where the signing key and the store live (default ``$CHIO_HOME`` or
            ``~/.chio-durable``); created with mode 0700.
        store: ``"postgresql://..."`` to share one PostgreSQL store (one chain, exact budgets)
            with a fleet of kernels; default ``$CHIO_STORE``, else SQLite in ``data_dir``
            (docs/fleet.md). The signing key stays in ``data_dir`` either way.
        trusted_keys: hex Ed25519 public keys of other kernels whose capability tokens (and
            receipts) also validate here.
        fsync: ``synchronous=FULL`` (survive power loss too) instead of WAL ``NORMAL`` (survive a
            killed process).
        clock: the time source in unix seconds (default ``time.time``; tests move it).
        approver_keys: hex Ed25519 public keys whose signed approval tokens may answer approvals
            (plus the data directory's ``approvers`` file; docs/approvals.md).
        approval_ttl: seconds a pending approval waits before it times out (default
            ``$CHIO_APPROVAL_TTL``, else one day).
        hold_ttl: seconds a budget hold lives unsettled before it expires (default
            ``$CHIO_HOLD_TTL``, else 3600; see ``docs/budgets.md``).
    """

    def __new__(cls, *args: Any, store: str | None = None, **kwargs: Any) -> Kernel:
        # A PostgreSQL store (argument or $CHIO_STORE) selects the fleet kernel (chio_kernel._fleet).
        if cls is Kernel and resolve_store(store) is not None:
            from chio_kernel._fleet import PostgresKernel

            return super().__new__(PostgresKernel)
        return super().__new__(cls)

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        store: str | None = None,
        trusted_keys: Iterable[str] = (),
        fsync: bool = False,
        clock: Callable[[], float] | None = None,
        approver_keys: Iterable[str] = (),
        approval_ttl: int | None = None,
        hold_ttl: float | None = None,
    ) -> None:
        self._holds = Holds(self, resolve_hold_ttl(hold_ttl))
        self.data_dir: Path = ensure_data_dir(Path(data_dir) if data_dir is not None else default_data_dir())
        dsn = resolve_store(store)  # None: SQLite in data_dir
        if dsn is None and not (self.data_dir / KEY_FILE).exists() and (self.data_dir / DB_FILE).exists():
            probe = SQLiteStore(self.data_dir, fsync=fsync)
            try:
                _refuse_missing_key(self.data_dir, probe)
            finally:
                probe.close()
        self._signer = Signer(load_or_create_key(self.data_dir))
        self.public_key_hex: str = self._signer.public_key_hex
        trusted = set()
        for key in trusted_keys:
            if not isinstance(key, str) or len(key) != 64:
                raise KernelInputError(f"trusted key {key!r} is not a 64-hex-char Ed25519 public key")
            try:
                bytes.fromhex(key)
            except ValueError:
                raise KernelInputError(f"trusted key {key!r} is not hex") from None
            trusted.add(key.lower())
        self.trusted_keys: frozenset[str] = frozenset(trusted)
        self._issuers = frozenset({self.public_key_hex}) | self.trusted_keys
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._init_approvals(approver_keys, approval_ttl)
        # opened after the key: load_or_create_key tightens a fresh data dir, which a store file would hide
        self._store: KernelStore
        if dsn is None:
            self._store = SQLiteStore(self.data_dir, fsync=fsync)
        else:  # a fleet's store: this kernel's key stays in data_dir and is registered there
            from chio_kernel._postgres_store import PostgresStore

            self._store = PostgresStore(
                dsn, signer_key=self.public_key_hex, label=f"{socket.gethostname()}:{self.data_dir}"
            )
        self._closed = False
        self._capabilities = Capabilities(
            self._signer, self.trusted_keys, lambda: self._clock(), self._read, self._write
        )
        self._caps: dict[str, _Cap] = self._capabilities._caps  # the verified-capability cache
        self._committer: GroupCommitter[_EvalRequest, ChioReceipt] = GroupCommitter(
            self._run_batch, max_batch_from_env()
        )

    # --- plumbing ---

    @property
    def base_url(self) -> str:
        """Where this kernel lives, for messages: ``embedded:<data_dir>``."""
        return f"embedded:{self.data_dir}"

    def __repr__(self) -> str:
        return f"Kernel(data_dir={str(self.data_dir)!r}, key={self.public_key_hex[:16]}…)"

    def close(self) -> None:
        """Close the store connection (the kernel cannot be used afterwards)."""
        if not self._closed:
            self._closed = True
            self._store.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> AbstractContextManager[StoreReader]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        return self._store.read()

    def _write(self) -> AbstractContextManager[StoreWriter]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        return self._store.write()

    # --- capabilities (chio_kernel._capabilities does the work) ---

    def _load_cap(self, st: StoreReader, capability_id: str) -> _Cap | None:
        return self._capabilities._load_cap(st, capability_id)

    def create_capability(
        self,
        subject: str,
        scope: ChioScope | Mapping[str, Any],
        ttl_seconds: int = 3600,
        capability_id: str | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> CapabilityToken:
        """Issue a signed capability token for ``subject`` with ``scope``, valid ``ttl_seconds``.

        ``capability_id`` may be chosen by the caller (``cap-research-pipeline``). Re-creating an
        existing id returns the stored token if it is still valid and has the same subject, scope and
        rate limit (idempotent provisioning); otherwise :class:`CapabilityError`.
        ``rate_limit=(max_calls, per_seconds)`` limits allowed calls per sliding window.
        """
        return self._capabilities.create_capability(subject, scope, ttl_seconds, capability_id, rate_limit)

    def get_capability(self, capability_id: str) -> CapabilityToken | None:
        """The stored token with this id, or None."""
        return self._capabilities.get_capability(capability_id)

    def list_capabilities(self) -> list[CapabilityToken]:
        """Every stored token, oldest first."""
        return self._capabilities.list_capabilities()

    def capability_info(self, capability_id: str) -> dict[str, Any] | None:
        """Token plus kernel-side state (parent, revoked, rate limit, usage per grant) for one id."""
        return self._capabilities.capability_info(capability_id)

    def is_revoked(self, capability_id: str) -> bool:
        """Is this capability (or one of its ancestors) revoked?"""
        return self._capabilities.is_revoked(capability_id)

    def validate_capability(self, token: CapabilityToken | Mapping[str, Any]) -> tuple[bool, str | None]:
        """``(valid, reason)``: signature, issuer (this kernel or a trusted key), time window,
        revocation (of the token or an ancestor) and delegation chain."""
        return self._capabilities.validate_capability(token)

    def attenuate_capability(
        self,
        parent: CapabilityToken | Mapping[str, Any] | str,
        new_scope: ChioScope | Mapping[str, Any],
        ttl_seconds: int | None = None,
        capability_id: str | None = None,
        *,
        subject: str | None = None,
    ) -> CapabilityToken:
        """A child token with ``new_scope`` ⊆ the parent's scope and a signed delegation link.

        ``parent`` is a token or the id of a stored one; it must be valid. The child expires at the
        parent's expiry, or ``now + ttl_seconds`` if that is earlier. ``subject`` defaults to the
        parent's subject. Raises :class:`CapabilityError` naming the offending grant if the scope is
        not a subset.
        """
        return self._capabilities.attenuate_capability(parent, new_scope, ttl_seconds, capability_id, subject=subject)

    def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and all its descendants; returns every id in that subtree (root first).

        Revoking an already revoked capability is allowed (returns the same ids); an unknown id
        raises :class:`CapabilityError`.
        """
        return self._capabilities.revoke_capability(capability_id)

    # --- evaluation ---

    def evaluate(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        cost: MonetaryAmount | Mapping[str, Any] | None = None,
        operation: Operation | str = Operation.INVOKE,
        approval_id: str | None = None,
        canonical_parameters: str | None = None,
        parameter_hash: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Decide one call and return its signed, stored receipt (allow or deny; never raises for a deny).

        A call that needs a human (a ``require_approval_above`` grant) gets a ``pending_approval``
        receipt; send it again with ``approval_id`` once approved (docs/approvals.md). Raises
        :class:`KernelInputError` (a ``ValueError``) for malformed input. Concurrent calls
        (threads) share one write transaction (group commit, see ``docs/kernel.md``); the receipt is
        committed before this returns.

        ``canonical_parameters`` / ``parameter_hash`` (both or neither): the RFC 8785 canonical JSON
        of ``parameters`` (``chio_kernel.canonical.canonical_json_str``) and its sha256 hex, already
        computed by an IN-PROCESS caller from these very parameters (chio_durable's embedded
        transport hands over its ``GovernedCall``'s), so they are not computed twice. They are
        trusted as given: the receipt signs them. Never pass values that came from outside the
        process (the sidecar does not: it lets the kernel compute them).

        ``metadata``: the caller's run context (``{"flow_run_id": ...}``, ``{"workflow_id": ...}``),
        signed into the receipt's ``metadata`` so ``Kernel.query_receipts(metadata=...)`` and
        ``chio-durable receipts list --flow-run/--workflow-id`` find it: at most 16 keys of letters,
        digits, ``_ . -``, string values of at most 512 characters (else :class:`KernelInputError`).
        It is not part of the idempotency fingerprint: a retry carrying another attempt's context
        gets the first receipt back (with the first context).
        """
        req = self._prepare(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id=approval_id, canonical_parameters=canonical_parameters, parameter_hash=parameter_hash,
            metadata=metadata,
        )
        return self._committer.submit(req)

    def record_denial(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        *,
        guard: str,
        reason: str,
        envelope: ChioScope | None = None,
        operation: Operation = Operation.INVOKE,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Sign and chain a deny receipt for a call refused before it could be evaluated (a layer's
        envelope or configuration guard); with ``envelope`` the kernel checks the call is outside it.
        ``metadata``: the caller's run context, signed into the receipt as in :meth:`evaluate`.
        See ``chio_kernel._denials``. Raises :class:`KernelInputError` for what it will not sign."""
        from chio_kernel._denials import record_denial

        return record_denial(
            self, capability_id, tool_server, tool_name, parameters,
            guard=guard, reason=reason, envelope=envelope, operation=operation, metadata=metadata,
        )

    async def _evaluate_async(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        cost: MonetaryAmount | Mapping[str, Any] | None = None,
        operation: Operation | str = Operation.INVOKE,
        approval_id: str | None = None,
        canonical_parameters: str | None = None,
        parameter_hash: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """:meth:`evaluate` for asyncio callers: the calls made in one turn of the event loop share
        one write transaction (LocalChioClient uses this)."""
        req = self._prepare(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id=approval_id, canonical_parameters=canonical_parameters, parameter_hash=parameter_hash,
            metadata=metadata,
        )
        return await self._committer.submit_async(req)

    def _prepare(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        idempotency_key: str | None,
        cost: MonetaryAmount | Mapping[str, Any] | None,
        operation: Operation | str,
        approval_id: str | None = None,
        canonical_parameters: str | None = None,
        parameter_hash: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> _EvalRequest:
        """Input checks, canonical forms and hashes, and the pure guards: everything before the
        write transaction."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        for name, value, max_len in (
            ("capability_id", capability_id, 256), ("tool_server", tool_server, 1024), ("tool_name", tool_name, 1024)
        ):
            if type(value) is not str or not value or len(value) > max_len or not value.isascii() or "\x00" in value:
                _require_str(name, value, max_len=max_len)  # raises with the precise message, or accepts Unicode
        if not isinstance(parameters, dict):
            raise KernelInputError(
                f"parameters must be a dict of parameter name -> JSON value, got {type(parameters).__name__}"
            )
        if canonical_parameters is not None or parameter_hash is not None:
            # an in-process caller's own canonical form and hash of these parameters (see evaluate)
            if type(canonical_parameters) is not str or type(parameter_hash) is not str or len(parameter_hash) != 64:
                raise KernelInputError(
                    "canonical_parameters and parameter_hash go together: the canonical JSON of the parameters "
                    "and its sha256 hex (or neither)"
                )
            params_text, param_hash = canonical_parameters, parameter_hash
        else:
            try:
                params_text = canonical_json_str(parameters)
                param_hash = hashlib.sha256(params_text.encode("utf-8")).hexdigest()
            except ValueError as err:
                raise KernelInputError(f"parameters are not JSON-able: {err}") from None
        # The receipt records a private, JSON-normalised copy of the parameters (tuples -> lists,
        # enums -> values; floats keep their exact value), via the text the chain hash uses.
        try:
            params_ascii = _chain_dumps(parameters)
        except (TypeError, ValueError) as err:  # pragma: no cover - canonical_json refused these already
            raise KernelInputError(f"parameters are not JSON-able: {err}") from None
        params = json.loads(params_ascii)
        op = operation if type(operation) is Operation else _coerce_operation(operation)
        cost_t = None if cost is None else _coerce_cost(cost)
        if approval_id is not None:
            _require_str("approval_id", approval_id, max_len=256)
        run_metadata = None if metadata is None else check_run_metadata(metadata)
        idem_hash = None
        if idempotency_key is not None:
            _require_str("idempotency_key", idempotency_key, max_len=1024)
            # The key identifies the call position; the fingerprint makes sure a stored allow is only
            # ever returned for the very same call (capability, tool, operation, parameters, cost).
            idem_hash = hashlib.sha256(
                "\x1f".join(
                    (idempotency_key, capability_id, tool_server, tool_name, op.value, param_hash,
                     "" if cost_t is None else f"{cost_t[0]} {cost_t[1]}")
                    + (() if approval_id is None else (approval_id,))  # a re-evaluation is another answer
                ).encode()
            ).hexdigest()

        # The pure guards (scope, constraints: regex_match may be slow) need no database state:
        # run them before the write transaction, so a slow call never blocks others.
        # (A root capability without constraints has nothing slow to check: skip the extra pass.)
        cached = self._caps.get(capability_id)
        pre = (
            self._precheck(capability_id, tool_server, tool_name, op, params)
            if cached is None or cached.constrained or len(cached.lineage) > 1
            else None
        )
        return _EvalRequest(
            capability_id, tool_server, tool_name, op, params, params_text, params_ascii, param_hash, cost_t,
            idem_hash, pre, approval_id, idempotency_key,
            # a re-evaluation under an approval is its own entry under the key: the pending answer
            # stays the answer of the key alone, the allow that of the key with the approval
            None if idempotency_key is None
            else key_fingerprint_hash(idempotency_key if approval_id is None else f"{idempotency_key}\x1f{approval_id}"),
            metadata=run_metadata,  # not in the fingerprint: another attempt's context, the same call
        )

    def _run_batch(self, reqs: Sequence[_EvalRequest]) -> list[ChioReceipt | BaseException]:
        """Decide ``reqs`` in ONE write transaction (group commit); results are released after its
        commit. If any of them raises, everything is rolled back and each runs in its own
        transaction, so an error reaches only its caller."""
        if len(reqs) > 1:
            try:
                with self._write() as st:
                    out: list[ChioReceipt | BaseException] = [self._evaluate_in(st, r) for r in reqs]
                return out
            except Exception:
                pass  # fall through: one transaction each
        results: list[ChioReceipt | BaseException] = []
        for r in reqs:
            try:
                with self._write() as st:
                    results.append(self._evaluate_in(st, r))
            except BaseException as err:
                results.append(err)
        return results

    def _evaluate_in(self, st: StoreWriter, req: _EvalRequest) -> ChioReceipt:
        """Decide, charge and record one call inside the caller's write transaction."""
        capability_id, tool_server, tool_name = req.capability_id, req.tool_server, req.tool_name
        now = self._clock()
        if req.cost_t is not None:  # holds past their TTL free their budget before this call is decided
            self._holds.expire_due(st, now)
        cap = self._load_cap(st, capability_id)
        # One statement reads the chain head and the revocation state (of the capability and
        # its ancestors) inside the write transaction: another process's revoke is seen.
        if cap is not None:
            head_seq, prev_hash, revoked = st.head_and_revoked(cap.lineage)
        else:
            head_seq, prev_hash = st.chain_head()
            revoked = None
        try:
            check_valid(cap, capability_id, now, revoked, self.base_url)
            if req.idem_hash is not None:
                assert req.key is not None and req.key_hash is not None
                # same key, same call: its receipt; same key, another call: refused (Stripe's rule)
                body = remembered_allow(st, req.key_hash, req.idem_hash, req.key)
                if body is not None:
                    return ChioReceipt.model_validate_json(body)
            assert cap is not None
            lineage = [cap]
            for ancestor_id in cap.lineage[1:]:
                ancestor = self._load_cap(st, ancestor_id)
                if ancestor is not None:  # a trusted foreign root this kernel never stored: its budgets live there
                    lineage.append(ancestor)
            charges, rated = decide(st, lineage, tool_server, tool_name, req.op, req.params, req.cost_t, now, req.pre)
            # every other guard passed: does a human have to approve (or has one)? (deny > pending > allow)
            gate = self._approval_gate(st, req, lineage, now)
        except _Deny as deny:
            policy_hash = cap.policy_hash if cap is not None else GENESIS_HASH
            return self._append_receipt(st, head_seq, prev_hash, now, req, deny, policy_hash)
        if isinstance(gate, _Pending):  # nothing charged
            return self._pending_receipt(st, head_seq, prev_hash, now, req, cap, gate)
        if gate is not None:  # the approval is still pending: its pending receipt again
            return gate
        # allow: charge, then record
        for charged_id, grant_index in charges:
            st.charge(charged_id, grant_index, req.cost_t[0] if req.cost_t else 0)
        for rated_id in rated:
            st.record_rate_event(rated_id, now)
        if req.approval_id is None:
            receipt = self._append_receipt(st, head_seq, prev_hash, now, req, None, cap.policy_hash)
        else:
            receipt = self._approved_allow_receipt(st, head_seq, prev_hash, now, req, cap.policy_hash)
        if req.idem_hash is not None:
            assert req.key_hash is not None
            st.remember_idempotency_key(req.key_hash, req.idem_hash, head_seq + 1)
        if req.cost_t is not None:  # a declared cost is a hold until settled, released or expired
            self._holds.place(st, receipt.id, capability_id, cap.policy_hash, req.cost_t, charges, now)
        return receipt

    def _precheck(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        op: Operation,
        params: dict[str, Any],
    ) -> dict[str, list[tuple[int, ToolGrant]] | _Deny] | None:
        """The pure guards (scope, constraints) for the capability and its ancestors, outside the
        write transaction: per capability id, its grants that cover the call and pass their
        constraints, or the deny. None if the capability is unknown (decided in the transaction)."""
        def load(cid: str) -> _Cap | None:
            cap = self._caps.get(cid)  # tokens are immutable: a cached entry needs no lock
            if cap is None:
                with self._read() as st:  # a short read (no transaction held)
                    cap = self._load_cap(st, cid)
            return cap

        root = load(capability_id)
        if root is None:
            return None
        caps = [root]
        for ancestor_id in root.lineage[1:]:
            ancestor = load(ancestor_id)
            if ancestor is not None:
                caps.append(ancestor)
        out: dict[str, list[tuple[int, ToolGrant]] | _Deny] = {}
        for depth, c in enumerate(caps):
            try:
                out[c.token.id] = passing_grants(c, depth > 0, tool_server, tool_name, op, params)
            except _Deny as deny:
                out[c.token.id] = deny
        return out

    def _append_receipt(
        self,
        st: StoreWriter,
        head_seq: int,
        prev_hash: str,
        now: float,
        req: _EvalRequest,
        deny: _Deny | None,
        policy_hash: str,
    ) -> ChioReceipt:
        if req.metadata:  # the caller's run context: the general builder (the spliced one has no metadata)
            receipt, stored, chain_hash = build_signed_receipt(
                self._signer.sign_hex, self.public_key_hex, prev_hash, now, req.capability_id, req.tool_server,
                req.tool_name, req.params, req.param_hash,
                {"verdict": "allow"} if deny is None else {"verdict": "deny", "guard": deny.guard, "reason": deny.reason},
                policy_hash, dict(req.metadata),
            )
            st.append_receipt(head_seq + 1, receipt.id, req.capability_id, receipt.decision.verdict, chain_hash, stored)
            return receipt
        receipt, stored, chain_hash = build_receipt(
            self._signer.sign_hex, self.public_key_hex, prev_hash, now, req.capability_id, req.tool_server,
            req.tool_name, req.params, req.params_text, req.params_ascii, req.param_hash,
            None if deny is None else (deny.guard, deny.reason), policy_hash,
        )
        st.append_receipt(head_seq + 1, receipt.id, req.capability_id, receipt.decision.verdict, chain_hash, stored)
        return receipt

    # --- budget holds (chio_kernel._holds does the work; docs/budgets.md) ---

    @property
    def hold_ttl(self) -> float:
        """Seconds an unsettled hold lives before it expires."""
        return self._holds.ttl

    def settle(self, receipt_id: str, actual_cost: MonetaryAmount | Mapping[str, Any], op_id: str) -> ChioReceipt:
        """Settle the hold placed by the allow ``receipt_id``: capture ``actual_cost``, free the rest.

        Returns the signed settle receipt (``metadata["budget"]``: hold, requested, captured,
        ``capped`` when the actual cost did not fit the budget left and was captured only up to it).
        The same ``op_id`` again returns that receipt; a different settle/release of a closed hold
        raises :class:`~chio_kernel.HoldConflictError`; no hold for that id:
        :class:`~chio_kernel.UnknownHoldError`. A settle after the hold expired captures up to the
        budget left then (``after_expiry``).
        """
        return self._holds.settle(receipt_id, actual_cost, op_id)

    def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt:
        """Free the whole hold of the allow ``receipt_id`` (compensation); the signed release receipt.

        Same ``op_id`` rules as :meth:`settle`. Releasing a hold that already expired returns the
        expiry receipt (it is free already).
        """
        return self._holds.release(receipt_id, op_id, reason)

    def expire_holds(self) -> list[ChioReceipt]:
        """Expire every open hold past the TTL now (a signed receipt each). Evaluations that declare a
        cost do this lazily in their own transaction; call this to sweep without one."""
        return self._holds.expire()

    def get_hold(self, receipt_id: str) -> dict[str, Any] | None:
        """The hold of allow ``receipt_id`` (``amount``, ``state``, ``captured_units``, ``expires_at``,
        ``closed_by``, ``grants``), or None."""
        return self._holds.get(receipt_id)

    def budgets(self, capability_id: str) -> list[dict[str, Any]]:
        """Per budgeted grant of the capability and its ancestors: ``captured``, ``held``,
        ``remaining`` (of ``max_total_cost``), ``currency``, ``invocations``... Due holds are expired
        first, so the numbers are exact."""
        return self._holds.budgets(capability_id)

    # --- receipts ---

    def sign_http_receipt(self, body: Mapping[str, Any]) -> str:
        """Hex Ed25519 signature, by this kernel's key, of an ``HttpReceipt``'s signed body (its
        fields but ``signature``, as the sidecar's ``/chio/evaluate`` builds it): over its canonical
        JSON, the same rule as tool receipts.

        Only HttpReceipt bodies are signed (``id`` ``hrcpt-...``, HttpReceipt fields only), so this is
        no way to sign a tool receipt or a capability token.
        """
        check_http_receipt_body(body)
        return self._signer.sign_hex(canonical_json(dict(body)))

    def verify_receipt(self, receipt: ChioReceipt | Mapping[str, Any]) -> bool:
        """True if the receipt is signed by this kernel (or a trusted key) and its parameter hash matches."""
        if isinstance(receipt, ChioReceipt):
            data = receipt.model_dump(exclude_none=True)
        elif isinstance(receipt, Mapping):
            try:
                data = ChioReceipt.model_validate(dict(receipt)).model_dump(exclude_none=True)
            except ValidationError as err:
                raise KernelInputError(f"not a valid ChioReceipt: {err}") from err
        else:
            raise KernelInputError(f"expected a chio_sdk.models.ChioReceipt, got {type(receipt).__name__}")
        return self._verify_receipt_dict(data) is None

    def _verify_receipt_dict(self, data: dict[str, Any]) -> str | None:
        return verify_receipt_dict(data, self._issuers)

    def get_receipt(self, receipt_id: str) -> ChioReceipt | None:
        """The stored receipt with this id, or None."""
        receipt_id = _require_str("receipt_id", receipt_id, max_len=256)
        with self._read() as st:
            body = st.receipt_body(receipt_id)
        return ChioReceipt.model_validate_json(body) if body is not None else None

    def list_receipts_with_seq(
        self,
        *,
        capability_id: str | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
    ) -> list[tuple[int, ChioReceipt]]:
        """``(seq, receipt)`` pairs in store order (for paging with ``after_seq``)."""
        if capability_id is not None:
            _require_str("capability_id", capability_id, max_len=256)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise KernelInputError(f"limit must be a non-negative integer, got {limit!r}")
        if after_seq is not None and (isinstance(after_seq, bool) or not isinstance(after_seq, int)):
            raise KernelInputError(f"after_seq must be an integer, got {after_seq!r}")
        if capability_id is not None:
            self._index_by_capability()
        with self._read() as st:
            rows = st.receipts_after(after_seq if after_seq is not None else 0, limit, capability_id)
        return [(seq, ChioReceipt.model_validate_json(body)) for seq, body in rows]

    def _index_by_capability(self) -> None:
        """Catch the by-capability receipt index up (the store does it in short transactions)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        self._store.catch_up_capability_index()

    def list_receipts(
        self,
        *,
        capability_id: str | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
    ) -> list[ChioReceipt]:
        """Receipts in store (chain) order, optionally for one capability, after a seq, up to ``limit``."""
        return [r for _, r in self.list_receipts_with_seq(capability_id=capability_id, limit=limit, after_seq=after_seq)]

    def receipt_count(self) -> int:
        """Number of receipts in the store."""
        with self._read() as st:
            return st.receipt_count()

    def query_receipts(
        self,
        *,
        capability_id: str | None = None,
        verdict: str | None = None,
        since: int | None = None,
        metadata: Mapping[str, str] | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        newest_first: bool = False,
        capability_index: bool = True,
    ) -> list[tuple[int, ChioReceipt]]:
        """``(seq, receipt)`` of the receipts matching every filter given, filtered by the store.

        ``verdict``: ``"allow"`` or ``"deny"``; ``since``: Unix seconds (receipt ``timestamp`` at or
        after it); ``metadata``: exact values of top-level keys of the receipt's ``metadata``;
        ``after_seq``: only receipts after this store position (for following the log);
        ``newest_first``: newest first, else chain order; ``capability_index=False``: match
        ``capability_id`` without the by-capability index (no write transaction to catch it up: for
        polling the few receipts after ``after_seq``).
        """
        if capability_id is not None:
            _require_str("capability_id", capability_id, max_len=256)
        if verdict is not None and verdict not in ("allow", "deny"):
            raise KernelInputError(f"verdict must be 'allow' or 'deny', got {verdict!r}")
        for name, value in (("since", since), ("after_seq", after_seq), ("limit", limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise KernelInputError(f"{name} must be a non-negative integer, got {value!r}")
        pairs = tuple((str(k), _require_str(f"metadata[{k!r}]", v)) for k, v in (metadata or {}).items())
        try:
            query = ReceiptQuery(after_seq=after_seq, limit=limit, newest_first=newest_first,
                                 capability_id=capability_id, verdict=verdict, since=since, metadata=pairs,
                                 capability_index=capability_index)
        except ValueError as err:
            raise KernelInputError(str(err)) from None
        if capability_id is not None and capability_index:
            self._index_by_capability()
        with self._read() as st:
            rows = st.query_receipts(query)
        return [(seq, ChioReceipt.model_validate_json(body)) for seq, body in rows]

    def verify_chain(self, *, batch: int = 2000) -> ChainReport:
        """Walk the store in seq order checking each signature and chain link; name the first broken index.

        Index = 0-based position in store order. (Like any hash chain without an external anchor,
        removing the newest receipts leaves a shorter valid chain; compare ``count`` with a count you
        recorded elsewhere to detect that.)
        """
        prev = GENESIS_HASH
        index = 0
        last_seq = 0
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        # One consistent read snapshot: the walk (long on a big store) neither holds the kernel's
        # locks nor blocks writers, so evaluations go on meanwhile.
        with self._store.snapshot() as st:
            head_seq, head_hash = st.chain_head()
            while True:
                rows = st.receipts_after(last_seq, batch)
                if not rows:
                    break
                for seq, text in rows:
                    try:
                        data = ChioReceipt.model_validate_json(text).model_dump(exclude_none=True)
                    except ValidationError as err:
                        return ChainReport(False, index, index, f"receipt at index {index} is not a valid receipt: {err}")
                    if data["content_hash"] != prev:
                        return ChainReport(
                            False, index, index,
                            f"receipt {data['id']} at index {index} does not chain to the previous receipt "
                            "(content_hash mismatch: a receipt before it was altered, removed or inserted)",
                        )
                    problem = self._verify_receipt_dict(data)
                    if problem is not None:
                        return ChainReport(False, index, index, f"index {index}: {problem}")
                    prev = receipt_chain_hash(data)
                    index += 1
                    last_seq = seq
        if head_seq != last_seq or head_hash != prev:  # the newest row's stored chain hash was altered
            return ChainReport(
                False, index, max(index - 1, 0),
                f"the newest receipt (seq {head_seq}) carries a chain hash that does not match its content",
            )
        return ChainReport(True, index, None, None)

    def health(self) -> dict[str, Any]:
        """Status summary (what the sidecar's ``/chio/health`` returns)."""
        with self._read() as st:
            head_seq = st.chain_head()[0]
        return {
            "status": "ok",
            "kernel_key": self.public_key_hex,
            "data_dir": str(self.data_dir),
            "receipts": head_seq,
            "mode": "embedded",
        }
