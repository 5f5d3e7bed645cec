"""The embedded Chio kernel: capabilities, guards, evaluation and the signed receipt chain.

See ``docs/kernel.md`` for the rules this module implements (signed bodies, guard order, budgets,
idempotency, rate limits, storage durability).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chio_sdk.models import CapabilityToken, ChioReceipt, ChioScope, MonetaryAmount, Operation

from chio_kernel import _telemetry
from chio_kernel._approvals import Approvals, approval_settings
from chio_kernel._capabilities import Capabilities, _Cap, capability_signing_bytes, resolve_limits
from chio_kernel._checkpoints import CheckpointReport, Checkpoints, checkpoint_settings, witness_file
from chio_kernel._coerce import MAX_COST_UNITS, check_scope_fields
from chio_kernel._denials import Denials
from chio_kernel._errors import CapabilityError, ChioKernelError, KernelInputError, KernelKeyMissingError
from chio_kernel._evaluation import Evaluator
from chio_kernel._evidence import lineage_row, write_evidence
from chio_kernel._form_denials import record_form_denial
from chio_kernel._holds import Holds, resolve_hold_ttl
from chio_kernel._ids import uuid7
from chio_kernel._paging import Page
from chio_kernel._receipt_log import ReceiptLog
from chio_kernel._receipts import (
    ChainReport,
    ReceiptChain,
    check_http_receipt_body,
    receipt_chain_hash,
    receipt_signing_bytes,
    receipt_wire_dict,
)
from chio_kernel._request import EvalRequest, make_request
from chio_kernel._roles import Credentials, Principal, Role
from chio_kernel._store import KernelStore, StoreReader, StoreWriter
from chio_kernel._store_factory import (
    STORE_ENV,
    StoreGate,
    open_kernel_store,
    refuse_missing_key,
    resolve_store,
    store_trust,
)
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import Signer, default_data_dir, ensure_data_dir, load_or_create_key
from chio_kernel._webhooks import WebhookOutbox

if TYPE_CHECKING:
    from chio_kernel._fleet import FleetKeys

__all__ = [
    "STORE_ENV",
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

_EvalRequest = EvalRequest  # the name this module used


def _lineage(info: Callable[[str], dict[str, Any] | None], capability_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The lineage rows of these capabilities and all their ancestors, ancestors first."""
    rows: dict[str, dict[str, Any]] = {}
    for cid in sorted(capability_ids):
        chain: list[dict[str, Any]] = []
        current: str | None = cid
        while current is not None and current not in rows:
            found = info(current)
            if found is None:
                break
            chain.append(lineage_row(found["token"], found["parent_id"]))
            rows[current] = chain[-1]
            current = found["parent_id"]
    return sorted(rows.values(), key=lambda r: (r["delegation_depth"], r["capability_id"]))


def _kernel_repr(data_dir: Path, store: str | None, key: str) -> str:
    """``Kernel(data_dir=..., [store=...,] key=...)`` (a fleet kernel names its store, password masked)."""
    where = "" if store is None else f", store={store!r}"
    return f"Kernel(data_dir={str(data_dir)!r}{where}, key={key[:16]}…)"


def _check_trusted_keys(trusted_keys: Iterable[str]) -> frozenset[str]:
    """``trusted_keys`` lower-cased, each a 64-hex-char Ed25519 public key (else :class:`KernelInputError`)."""
    trusted = set()
    for key in trusted_keys:
        if not isinstance(key, str) or len(key) != 64:
            raise KernelInputError(f"trusted key {key!r} is not a 64-hex-char Ed25519 public key")
        try:
            bytes.fromhex(key)
        except ValueError:
            raise KernelInputError(f"trusted key {key!r} is not hex") from None
        trusted.add(key.lower())
    return frozenset(trusted)


class Kernel:
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
        checkpoint_every: cut a signed Merkle checkpoint every this many receipts (default
            ``$CHIO_CHECKPOINT_EVERY``, else 256; 0: no automatic checkpoints; docs/checkpoints.md).
        checkpoint_interval: ... or once this many seconds passed with receipts pending, whichever
            comes first (default ``$CHIO_CHECKPOINT_INTERVAL``, else 2).
        max_grants: grants one capability may hold (tool, resource and prompt grants together;
            default ``$CHIO_MAX_GRANTS``, else 1,000); more is refused at issue and attenuate time
            with :class:`CapabilityLimitError`.
        max_delegation_depth: delegation links one capability may carry (default
            ``$CHIO_MAX_DELEGATION_DEPTH``, else 32); a deeper attenuation is refused likewise.
    """

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
        checkpoint_every: int | None = None,
        checkpoint_interval: float | None = None,
        max_grants: int | None = None,
        max_delegation_depth: int | None = None,
    ) -> None:
        """Open the kernel: its key, its store, and the services (see the class doc for the arguments).

        Raises:
            KernelInputError: a malformed argument or ``$CHIO_*`` setting.
            KernelKeyMissingError: ``kernel.key`` is gone next to a store that holds what it signed.
            StoreUnavailableError: the PostgreSQL store cannot be reached.
        """
        ttl = resolve_hold_ttl(hold_ttl)
        cp_every, cp_interval = checkpoint_settings(checkpoint_every, checkpoint_interval)
        self._limits = resolve_limits(max_grants, max_delegation_depth)
        self.data_dir: Path = ensure_data_dir(Path(data_dir) if data_dir is not None else default_data_dir())
        dsn = resolve_store(store)  # None: SQLite in data_dir
        if dsn is None:
            refuse_missing_key(self.data_dir, fsync)
        self._signer = Signer(load_or_create_key(self.data_dir))
        self.public_key_hex: str = self._signer.public_key_hex
        self.trusted_keys: frozenset[str] = _check_trusted_keys(trusted_keys)
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        approvers, approvals_ttl = approval_settings(approver_keys, approval_ttl)
        # opened after the key: load_or_create_key tightens a fresh data dir, which a store file would hide
        self._store: KernelStore = open_kernel_store(dsn, self.data_dir, fsync=fsync, signer_key=self.public_key_hex)
        self._build_services(ttl, approvers, approvals_ttl, None if dsn is None else self._store.description)
        witness = witness_file(self.data_dir, None if dsn is None else self._store.description)
        self._checkpoints = Checkpoints(self._gate, self._signer.sign_hex, self.public_key_hex, witness,
                                        self._clock, cp_every, cp_interval)
        self._checkpoints.start()

    def _build_services(
        self, hold_ttl: float, approvers: frozenset[str], approval_ttl: int, shared_store: str | None
    ) -> None:
        """The services, each handed what it needs (none holds the facade)."""
        clock, store = self._clock, self._store
        self._gate = gate = StoreGate(store, _kernel_repr(self.data_dir, shared_store, self.public_key_hex))
        self._trust, self._fleet = store_trust(store, self.public_key_hex, self.trusted_keys, gate.read, self.data_dir)
        self._capabilities = caps = Capabilities(self._signer, self._trust, clock, gate.read, gate.write, self._limits)
        self._caps: dict[str, _Cap] = caps.cache  # the verified-capability cache
        self._chain = chain = ReceiptChain(self._signer.sign_hex, self.public_key_hex)
        self._approvals = Approvals(self.data_dir, approvers, approval_ttl, clock, gate.read, gate.write, caps.load,
                                    chain)
        self._holds = Holds(hold_ttl, clock, gate.read, gate.write, caps.load, chain)
        self._denials = Denials(gate.write, caps.load, clock, chain)
        self._receipts = ReceiptLog(gate, self._trust)
        self._credentials = Credentials(gate.read, gate.write, clock)
        self._evaluation = Evaluator(caps.cache, caps.load, gate.read, gate.write, clock, chain,
                                     (self._approvals, self._holds, self._trust), self.base_url)
        self._prepare = self._evaluation.prepare  # the hot path's two steps, looked up once
        self._submit = self._evaluation.committer.submit
        # evaluations in flight (deque append/pop are atomic): listings pause for them
        self._in_flight: deque[None] = deque()
        self._approvals.busy = self._capabilities.busy = self._receipts.busy = self._holds.busy = self.evaluating

    # --- plumbing ---

    @property
    def base_url(self) -> str:
        """Where this kernel lives, for messages: ``embedded:<data_dir>``."""
        return f"embedded:{self.data_dir}"

    def __repr__(self) -> str:
        return _kernel_repr(self.data_dir, None if self._fleet is None else self._fleet.description, self.public_key_hex)

    def close(self) -> None:
        """Close the store connection (the kernel cannot be used afterwards; closing twice is a no-op)."""
        self._checkpoints.stop()
        self._gate.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> AbstractContextManager[StoreReader]:
        return self._gate.read()

    def _write(self) -> AbstractContextManager[StoreWriter]:
        return self._gate.write()

    def _load_cap(self, st: StoreReader, capability_id: str) -> _Cap | None:
        return self._capabilities.load(st, capability_id)

    def evaluating(self) -> bool:
        """Whether evaluations are in flight now (listings pause for them, see docs/kernel.md).

        Returns:
            True while an evaluation is being decided.
        """
        return bool(self._in_flight)

    @property
    def max_grants(self) -> int:
        """Grants one capability may hold (issue and attenuate refuse more: ``CapabilityLimitError``)."""
        return self._limits.max_grants

    @property
    def max_delegation_depth(self) -> int:
        """Delegation links one capability may carry (a deeper attenuation is refused)."""
        return self._limits.max_delegation_depth

    # --- a fleet's store (chio_kernel._fleet does the work; PostgreSQL only) ---

    def _fleet_keys(self, name: str) -> FleetKeys:
        if self._fleet is None:  # an AttributeError: hasattr(kernel, "registered_keys") tells a fleet kernel
            raise AttributeError(f"{name}: a kernel on a PostgreSQL store (a fleet) only, not on SQLite")
        return self._fleet

    @property
    def store(self) -> str:
        """The fleet store's URL, password masked (a kernel on PostgreSQL only: ``AttributeError`` on SQLite)."""
        return self._fleet_keys("store").description

    @property
    def registered_keys(self) -> Callable[[], list[dict[str, Any]]]:
        """Every kernel key registered in the fleet's store, oldest first (``registered_keys()``).

        A kernel on PostgreSQL only (``AttributeError`` on SQLite, so ``hasattr`` tells a fleet kernel).

        Returns:
            The bound method; it returns ``{"public_key", "label" (host:data_dir), "registered_at",
            "retired_at" (None while active), "retired_reason", "this_kernel"}`` per key.
        """
        return self._fleet_keys("registered_keys").registered_keys

    @property
    def retire_key(self) -> Callable[[str, str], None]:
        """Retire a registered kernel key (``retire_key(public_key, reason="retired")``).

        It signs nothing more and capabilities it signed deny on every kernel of the fleet; receipts it
        signed before still verify. Not reversible (give the host a new data directory, hence a new key).
        A kernel on PostgreSQL only (``AttributeError`` on SQLite).

        Returns:
            The bound operation; it raises :class:`KernelInputError` for an unknown or malformed key or
            an empty reason.
        """
        keys = self._fleet_keys("retire_key")

        def retire_key(public_key: str, reason: str = "retired") -> None:
            keys.retire_key(public_key, reason)

        return retire_key

    @property
    def check_key_active(self) -> Callable[[], None]:
        """Refuse to go on if this kernel's own key was retired from the fleet store (``check_key_active()``).

        A kernel on PostgreSQL only (``AttributeError`` on SQLite).

        Returns:
            The bound check; calling it raises
            :class:`~chio_kernel._errors.KernelKeyRetiredError` (saying what to do) if the key was
            retired: it could sign nothing, so a sidecar on it refuses to start.
        """
        return self._fleet_keys("check_key_active").check_key_active

    # --- capabilities (chio_kernel._capabilities does the work) ---

    def create_capability(
        self,
        subject: str,
        scope: ChioScope | Mapping[str, Any],
        ttl_seconds: int = 3600,
        capability_id: str | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> CapabilityToken:
        """Issue a signed capability token for ``subject`` with ``scope``.

        Args:
            subject: who the token is for (``agent:research``).
            scope: a ``ChioScope`` or its dict form (grants, constraints, budgets).
            ttl_seconds: validity from now.
            capability_id: the token's id, chosen by the caller (``cap-research-pipeline``); default a
                fresh ``cap-<uuidv7>``. Re-creating an existing id returns the stored token if it is still
                valid and has the same subject, scope and rate limit (idempotent provisioning).
            rate_limit: ``(max_calls, per_seconds)``: allowed calls per sliding window.

        Returns:
            The signed token (stored).

        Raises:
            CapabilityLimitError: more grants than :attr:`max_grants`.
            CapabilityError: the id is taken by another token, or a constraint cannot be used.
            KernelInputError: a malformed argument.
        """
        return self._capabilities.create_capability(subject, scope, ttl_seconds, capability_id, rate_limit)

    def get_capability(self, capability_id: str) -> CapabilityToken | None:
        """The stored token with this id.

        Args:
            capability_id: the token's id.

        Returns:
            The token, or None if this kernel never stored it.
        """
        return self._capabilities.get_capability(capability_id)

    def list_capabilities(self) -> list[CapabilityToken]:
        """Every stored token, oldest first.

        Returns:
            The tokens.
        """
        return self._capabilities.list_capabilities()

    def capabilities_page(self, *, limit: int | None = None, cursor: str | None = None) -> Page[CapabilityToken]:
        """One page of stored tokens, oldest first (``created_at``, then id).

        Args:
            limit: at most this many (1 to 1,000; default 100).
            cursor: the ``next_cursor`` of the previous page (None: the first page).

        Returns:
            The page: ``items`` and ``next_cursor`` (None on the last page).

        Raises:
            KernelInputError: a bad limit, or a cursor this listing did not hand out.
        """
        return self._capabilities.capabilities_page(limit, cursor)

    def capability_info(self, capability_id: str) -> dict[str, Any] | None:
        """A token plus its kernel-side state.

        Args:
            capability_id: the token's id.

        Returns:
            The token with its parent, revocation, rate limit and usage per grant, or None if unknown.
        """
        return self._capabilities.capability_info(capability_id)

    def is_revoked(self, capability_id: str) -> bool:
        """Whether this capability, or one of its ancestors, is revoked.

        Args:
            capability_id: the token's id.

        Returns:
            True if it or an ancestor is revoked.
        """
        return self._capabilities.is_revoked(capability_id)

    def validate_capability(self, token: CapabilityToken | Mapping[str, Any]) -> tuple[bool, str | None]:
        """Check a token: signature, issuer, time window, revocation and delegation chain.

        Args:
            token: a ``CapabilityToken`` or its dict form.

        Returns:
            ``(valid, reason)``: ``(True, None)``, or False and a reason a person can act on. The
            issuer must be this kernel, a trusted key or (on a fleet store) a registered, unretired key.

        Raises:
            KernelInputError: not a token.
        """
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
        """Derive a child token whose scope is a subset of its parent's, with a signed delegation link.

        Args:
            parent: a token, or the id of a stored one; it must be valid.
            new_scope: the child's scope (each grant within a parent grant).
            ttl_seconds: the child expires at the parent's expiry, or ``now + ttl_seconds`` if earlier.
            capability_id: the child's id (default a fresh one).
            subject: the child's subject (default the parent's).

        Returns:
            The signed child token (stored). It also spends its ancestors' budgets and rate limits.

        Raises:
            CapabilityLimitError: more grants than :attr:`max_grants`, or a chain deeper than
                :attr:`max_delegation_depth`.
            CapabilityError: the scope is not a subset (naming the offending grant), or the parent is
                unknown or not valid.
        """
        return self._capabilities.attenuate_capability(parent, new_scope, ttl_seconds, capability_id, subject=subject)

    def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and all its descendants.

        Args:
            capability_id: the root of the subtree to revoke (revoking it again is allowed).

        Returns:
            Every id in that subtree, root first.

        Raises:
            CapabilityError: unknown id.
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
        """Decide one call and return its signed, stored receipt (allow, deny or pending approval).

        A deny is a receipt, never an exception. A call that needs a human (a
        ``require_approval_above`` grant) gets a ``pending_approval`` receipt; send it again with
        ``approval_id`` once approved (docs/approvals.md). Concurrent calls (threads) share one write
        transaction (group commit, ``docs/kernel.md``); the receipt is committed before this returns.

        Args:
            capability_id: the capability the call runs under.
            tool_server: the tool's server.
            tool_name: the tool.
            parameters: the call's named parameters (JSON values).
            idempotency_key: names the call position: the same key for the same call returns the same
                receipt and charges nothing twice (docs/kernel.md, "Idempotency").
            cost: the declared cost ``{units, currency}``: checked against budgets and held until
                settled, released or expired (docs/budgets.md).
            operation: the operation (default ``invoke``).
            approval_id: a re-evaluation under this approval.
            canonical_parameters: with ``parameter_hash`` (both or neither), the RFC 8785 canonical
                JSON of ``parameters`` and its sha256 hex, already computed by an IN-PROCESS caller
                from these very parameters (the embedded transport hands over its ``GovernedCall``'s).
                Trusted as given: the receipt signs them. Never pass values from outside the process.
            parameter_hash: see ``canonical_parameters``.
            metadata: the caller's run context (``{"flow_run_id": ...}``), signed into the receipt's
                ``metadata`` so ``query_receipts(metadata=...)`` finds it: at most 16 keys of letters,
                digits, ``_ . -``, string values of at most 512 characters. Not part of the idempotency
                fingerprint: a retry carrying another attempt's context gets the first receipt back.

        Returns:
            The signed receipt.

        Raises:
            KernelInputError: malformed input (a ``ValueError``).
            IdempotencyKeyReusedError: the key was used for a different call.
        """
        if self._gate.closed:
            self._gate.check_open()
        req = self._prepare(make_request(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id, canonical_parameters, parameter_hash, metadata,
        ))
        flight = self._in_flight
        flight.append(None)
        try:
            return self._submit(req)
        finally:
            flight.pop()

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
        """Sign and chain a deny receipt for a call refused before it could be evaluated.

        A layer's envelope or configuration guard decided it (``chio_kernel._denials``).

        Args:
            capability_id: the capability, or ``""`` when the call had none.
            tool_server: the tool's server, or ``""``.
            tool_name: the tool.
            parameters: the call's named parameters.
            guard: the layer's guard name (not one of the kernel's own).
            reason: why, in words.
            envelope: the scope the layer says the call is outside of; the kernel checks it is.
            operation: the call's operation.
            metadata: the caller's run context, signed into the receipt as in :meth:`evaluate`.

        Returns:
            The signed deny receipt.

        Raises:
            KernelInputError: what the kernel will not sign (a kernel guard name, a call the envelope
                grants, malformed input).
        """
        return self._denials.record(
            capability_id, tool_server, tool_name, parameters,
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
        defer: bool = False,
    ) -> ChioReceipt:
        """:meth:`evaluate` for asyncio callers: the calls made in one turn of the event loop share
        one write transaction (LocalChioClient uses this; the sidecar with ``defer``, see
        ``GroupCommitter.submit_async``)."""
        if self._gate.closed:
            self._gate.check_open()
        req = self._prepare(make_request(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id, canonical_parameters, parameter_hash, metadata,
        ))
        flight = self._in_flight
        flight.append(None)
        try:
            return await self._evaluation.committer.submit_async(req, defer=defer)
        finally:
            flight.pop()

    # --- credentials and roles (chio_kernel._roles does the work; docs/security.md) ---

    def add_credential(self, name: str, role: Role | str) -> str:
        """Make a named credential with one role (an operator's action); returns its token, once.

        The store keeps only the token's SHA-256; the token cannot be shown again (revoke the
        credential and add another if it is lost).

        Args:
            name: 1-64 letters, digits, ``_ . @ -`` (``"alice"``, ``"worker-1"``); unique, also
                after revocation.
            role: ``"workload"``, ``"approver"`` or ``"operator"``.

        Returns:
            The bearer token, ``chio_<role>_<43 characters>``.

        Raises:
            CredentialError: a malformed name, an unknown role, or a name already taken.
        """
        return self._credentials.add(name, role)

    def revoke_credential(self, name: str) -> None:
        """Revoke a credential: its token authenticates nobody from now on (revoking twice is a no-op).

        A sidecar in another process notices within ``chio_kernel._roles.AUTH_CACHE_SECONDS``.

        Args:
            name: the credential's name.

        Raises:
            CredentialError: no credential of that name.
        """
        self._credentials.revoke(name)

    def list_credentials(self) -> list[dict[str, Any]]:
        """Every credential, oldest first: ``name``, ``role``, ``created_at``, ``revoked_at``, ``active``
        (never a token or its hash).

        Returns:
            The credentials.
        """
        return self._credentials.listed()

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token proves, or None (unknown, revoked or malformed).

        The token is looked up by its SHA-256 and the stored hash compared in constant time.

        Args:
            token: the bearer token.

        Returns:
            ``Principal(role, name)`` or None.
        """
        return self._credentials.authenticate(token)

    # --- approvals (chio_kernel._approvals does the work; docs/approvals.md) ---

    @property
    def approval_ttl(self) -> int:
        """Seconds a pending approval waits before it times out (then a re-evaluation denies, ``approval-timeout``)."""
        return self._approvals.approval_ttl

    @property
    def approver_keys(self) -> frozenset[str]:
        """Hex Ed25519 keys whose signed approval tokens this kernel accepts.

        ``approver_keys=`` plus the ``approvers`` file of the data directory, read anew each time (so
        ``chio-durable approvals trust`` takes effect on a running sidecar).
        """
        return self._approvals.approver_keys

    def trust_approver(self, public_key: str) -> None:
        """Add an approver key to the data directory's ``approvers`` file (kept across restarts).

        Args:
            public_key: the approver's hex Ed25519 public key.

        Raises:
            KernelInputError: not a 64-hex-char key.
        """
        self._approvals.trust_approver(public_key)

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        """One approval as a dict.

        Args:
            approval_id: the approval (``apr-...``).

        Returns:
            None if unknown, else ``status`` as it is NOW (``pending``, ``approved``, ``denied`` — also
            when its capability was revoked during the wait — or ``expired``); the call
            (``capability_id``, ``tool_server``, ``tool_name``, ``parameters``, ``parameter_hash``),
            ``subject``, ``summary``, ``created_at`` / ``expires_at`` (unix seconds), the receipts
            (``pending_receipt_id``, ``resolution_receipt_id``, ``consumed_receipt_id``) and the answer
            (``resolved_at``, ``approver``, ``reason``).
        """
        return self._approvals.get_approval(approval_id)

    def approvals_page(
        self, status: str | None = "pending", *, limit: int | None = None, cursor: str | None = None
    ) -> Page[dict[str, Any]]:
        """One page of approvals, newest first (``created_at``, then id), as :meth:`get_approval` returns them.

        Args:
            status: only those whose current status is this (``pending``, ``approved``, ``denied``,
                ``expired``), or all (None).
            limit: at most this many (1 to 1,000; default 100). A page may hold fewer while more
                follow (pending ones whose capability was revoked meanwhile are skipped by a
                ``pending`` page): page on until ``next_cursor`` is None.
            cursor: the ``next_cursor`` of the previous page (None: the first page).

        Returns:
            The page: ``items`` and ``next_cursor`` (None on the last page).

        Raises:
            KernelInputError: an unknown status, a bad limit, or a cursor this listing (with this
                status) did not hand out.
        """
        return self._approvals.page(status, limit, cursor)

    def list_approvals(self, status: str | None = "pending", *, limit: int | None = None) -> list[dict[str, Any]]:
        """Approvals newest first, as :meth:`get_approval` returns them (every page of :meth:`approvals_page`).

        Args:
            status: only those whose current status is this (``pending`` — still answerable —,
                ``approved``, ``denied``, ``expired``), or all (None).
            limit: at most this many.

        Returns:
            The approvals.

        Raises:
            KernelInputError: an unknown status or a bad limit.
        """
        return self._approvals.list_approvals(status, limit=limit)

    def respond_approval(
        self, approval_id: str, outcome: str, reason: str | None = None, *,
        approver: Principal | str | None = None,
    ) -> ChioReceipt:
        """An approver (or the operator) answers an approval; each answer is its own signed receipt.

        A grant may ask for K distinct approvers (``{"threshold_units": N, "approvers": K}``): the
        approval is approved by the K-th distinct approver's yes; one no denies it. After the final
        answer's commit it calls the waker of every wake registered on the approval (each bounded by
        ``$CHIO_WAKE_TIMEOUT``; a failing waker changes nothing and raises nothing here);
        :meth:`last_wake_report` tells what was woken.

        Args:
            approval_id: the approval.
            outcome: ``"approved"`` or ``"denied"``.
            reason: why (recorded and signed).
            approver: the authenticated principal answering (its name and role are signed into the
                resolution receipt); None: this process, as the operator (named ``operator``). A
                plain string is deprecated (recorded as an operator of that name, DeprecationWarning).

        Returns:
            The signed resolution receipt (in the chain).

        Raises:
            ApprovalNotFoundError: unknown approval.
            ApprovalConflictError: answered already, expired, its capability was revoked, or this
                approver answered it already.
            ApprovalForbiddenError: the approver is a workload, or the principal whose call waits.
            KernelInputError: a malformed argument.
        """
        if not _telemetry.enabled():
            return self._approvals.respond_approval(approval_id, outcome, reason, approver=approver)
        return _telemetry.traced_answer(
            self, approval_id, lambda: self._approvals.respond_approval(approval_id, outcome, reason, approver=approver)
        )

    def record_form_denial(self, approval_id: str, reason: str | None = None, *, source: str = "prefect-form") -> ChioReceipt:
        """Record a deny given in an engine's unauthenticated resume form (Prefect's ``decision: deny``).

        The form can only stop the call: the kernel signs a deny receipt (guard ``approval-denied``,
        metadata ``form_denial`` with ``authenticated: false`` and the source), and a still-pending
        approval becomes ``denied`` with that receipt as its resolution. An approval answered or
        expired already keeps its status; the deny is recorded all the same. Nothing here allows.

        Args:
            approval_id: the approval the paused run waited for.
            reason: what the person wrote in the form (recorded and signed), or None.
            source: which form (lowercase letters, digits, dashes), e.g. ``"prefect-form"``.

        Returns:
            The signed deny receipt (in the chain).

        Raises:
            ApprovalNotFoundError: unknown approval.
            KernelInputError: a malformed argument.
        """
        return record_form_denial(self._gate.write, self._capabilities.load, self._clock, self._chain,
                                  approval_id, reason, source)

    def respond_approval_token(self, token: Mapping[str, Any], approval_id: str | None = None) -> ChioReceipt:
        """Answer an approval with a signed approval token (see :func:`sign_approval_token`).

        The token must be signed by a key in :attr:`approver_keys`, name this approval
        (``request_id``), its ``parameter_hash`` and ``subject``, and be inside
        ``issued_at``..``expires_at``. Wakes the waiting run as :meth:`respond_approval` does.

        Args:
            token: the token (a dict).
            approval_id: when given, the approval the token must answer.

        Returns:
            The signed resolution receipt.

        Raises:
            ApprovalTokenError: the token is refused (untrusted key, bad signature, bound elsewhere,
                outside its window).
            ApprovalNotFoundError: unknown approval.
            ApprovalConflictError: answered already, expired, or its capability was revoked.
            KernelInputError: not a token.
        """
        if not _telemetry.enabled():
            return self._approvals.respond_approval_token(token, approval_id)
        answered = approval_id or str(token.get("request_id", "")) if isinstance(token, Mapping) else approval_id
        return _telemetry.traced_answer(
            self, answered or "", lambda: self._approvals.respond_approval_token(token, approval_id)
        )

    def pending_as_deny(self, pending: ChioReceipt, metadata: Mapping[str, str] | None = None) -> ChioReceipt:
        """A signed deny (guard ``approval``) for a client that does not understand ``pending_approval``.

        The sidecar answers a pending call with it unless the request says ``X-Chio-Pending:
        understood`` (a stock ``chio_sdk.ChioClient`` checks only ``is_denied``: without the deny it
        would run the call). The approval stays recorded; the deny names it and how to approve it.

        Args:
            pending: the pending receipt :meth:`evaluate` answered.
            metadata: who asked (signed into the deny's ``metadata``).

        Returns:
            The signed deny receipt (in the chain).
        """
        return self._approvals.pending_as_deny(pending, metadata)

    def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> dict[str, Any]:
        """Register what wakes the run waiting for this approval once it is answered.

        A wake is NOT authority: it only wakes the run, which asks the kernel again with the
        approval id; only the kernel's allow of that re-evaluation runs the call. Registering the
        same wake again is a no-op (a retried run registers again). Registering on an approval that
        is already answered wakes the run at once (the person may answer before the run registers).

        Args:
            approval_id: the approval (``apr-…``) the run waits for.
            wake: ``{"engine": "<name>", ...engine-specific JSON fields}``: ``engine`` 1 to 32
                characters of ``a-z0-9_-``, at most 4 KiB of canonical JSON, at most 8 distinct
                wakes per approval.

        Returns:
            ``{"approval_id", "status" (the approval's status now), "woken": [report, ...]}``;
            ``woken`` holds one ``{"engine", "ok", "message"}`` report if the approval was already
            answered (the wake was called), else is empty.

        Raises:
            ApprovalNotFoundError: no approval with this id.
            KernelInputError: the wake is malformed, too big, or one too many (nothing is written).
        """
        return self._approvals.register_approval_wake(approval_id, wake)

    def last_wake_report(self, approval_id: str) -> list[dict[str, Any]] | None:
        """What answering this approval in THIS process woke (the wakes registered on it).

        Args:
            approval_id: the approval answered with :meth:`respond_approval` or
                :meth:`respond_approval_token`.

        Returns:
            One ``{"engine", "ok", "message"}`` report per registered wake (``[]``: none was
            registered), or None if this process has not answered it (the most recent 1024 are kept).
        """
        return self._approvals.last_wake_report(approval_id)

    @property
    def webhooks(self) -> WebhookOutbox:
        """The approval webhook outbox in this kernel's store (``chio_kernel._webhooks``, docs/inbox.md).

        A :class:`~chio_kernel._webhooks.WebhookDeliverer` sends it; the inbox lists its dead letters.
        """
        outbox: WebhookOutbox | None = self.__dict__.get("_webhook_outbox")
        if outbox is None:
            outbox = WebhookOutbox(self._gate.read, self._gate.write, self._clock, self._approvals.get_approval)
            self.__dict__["_webhook_outbox"] = outbox
        return outbox

    # --- budget holds (chio_kernel._holds does the work; docs/budgets.md) ---

    @property
    def hold_ttl(self) -> float:
        """Seconds an unsettled hold lives before it expires."""
        return self._holds.ttl

    def settle(
        self, receipt_id: str, actual_cost: MonetaryAmount | Mapping[str, Any], op_id: str, *,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Settle the hold placed by an allow: capture the actual cost, free the rest.

        A settle after the hold expired captures up to the budget left then (``after_expiry``).

        Args:
            receipt_id: the allow receipt that placed the hold.
            actual_cost: ``{units, currency}`` (minor units), in the hold's currency.
            op_id: names this operation: the same ``op_id`` again returns the same receipt.
            metadata: run context signed into the receipt (the sidecar's ``chio_role`` /
                ``chio_principal``), as in :meth:`evaluate`.

        Returns:
            The signed settle receipt (``metadata["budget"]``: hold, requested, captured, ``capped``
            when the actual cost did not fit the budget left and was captured only up to it).

        Raises:
            HoldConflictError: the hold was closed by a different settle/release, or ``op_id`` names
                another operation.
            UnknownHoldError: no hold for that receipt id.
            KernelInputError: a malformed cost, or another currency.
        """
        return self._holds.settle(receipt_id, actual_cost, op_id, metadata)

    def release(
        self, receipt_id: str, op_id: str, reason: str = "released", *, metadata: Mapping[str, str] | None = None
    ) -> ChioReceipt:
        """Free the whole hold of an allow (compensation).

        Releasing a hold that already expired returns the expiry receipt (it is free already).

        Args:
            receipt_id: the allow receipt that placed the hold.
            op_id: names this operation (same rules as :meth:`settle`).
            reason: why (recorded and signed).
            metadata: run context signed into the receipt, as in :meth:`settle`.

        Returns:
            The signed release receipt.

        Raises:
            HoldConflictError: the hold was closed by a different operation, or ``op_id`` reused.
            UnknownHoldError: no hold for that receipt id.
        """
        return self._holds.release(receipt_id, op_id, reason, metadata)

    def expire_holds(self) -> list[ChioReceipt]:
        """Expire every open hold past the TTL now, a signed receipt each.

        Evaluations that declare a cost do this lazily in their own transaction; call this to sweep
        without one.

        Returns:
            The expiry receipts.
        """
        return self._holds.expire()

    def get_hold(self, receipt_id: str) -> dict[str, Any] | None:
        """The hold of an allow receipt.

        Args:
            receipt_id: the allow receipt.

        Returns:
            ``amount``, ``state``, ``captured_units``, ``created_at``, ``expires_at``, ``closed_by``,
            ``grants``; or None.
        """
        return self._holds.get(receipt_id)

    def holds_page(
        self,
        *,
        state: str | None = None,
        capability_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """One page of budget holds, newest first (``created_at``, then receipt id), as :meth:`get_hold` returns them.

        Args:
            state: only holds in this state (``open``, ``settled``, ``released``, ``expired``; an
                open hold past its TTL stays ``open`` until it is swept), or all (None).
            capability_id: only the holds placed by this capability's allows.
            limit: at most this many (1 to 1,000; default 100).
            cursor: the ``next_cursor`` of the previous page (None: the first page).

        Returns:
            The page: ``items`` and ``next_cursor`` (None on the last page).

        Raises:
            KernelInputError: an unknown state, a bad limit, or a cursor this listing did not hand out.
        """
        return self._holds.page(state, capability_id, limit, cursor)

    def budgets(self, capability_id: str) -> list[dict[str, Any]]:
        """The budgets of a capability and its ancestors, per budgeted grant, exact now.

        Due holds are expired first, so the numbers are exact.

        Args:
            capability_id: the capability.

        Returns:
            One dict per budgeted grant: ``captured``, ``held``, ``remaining`` (of ``max_total_cost``),
            ``currency``, ``invocations``...

        Raises:
            CapabilityError: unknown capability.
        """
        return self._holds.budgets(capability_id)

    # --- receipts ---

    def sign_http_receipt(self, body: Mapping[str, Any]) -> str:
        """Sign an ``HttpReceipt``'s body with this kernel's key (the sidecar's ``/chio/evaluate``).

        Over its canonical JSON, the same rule as tool receipts. Only HttpReceipt bodies are signed (``id``
        ``hrcpt-...``, HttpReceipt fields only), so this is no way to sign a tool receipt or a token.

        Args:
            body: the receipt's fields but ``signature``.

        Returns:
            The hex Ed25519 signature.

        Raises:
            KernelInputError: not an HttpReceipt body.
        """
        check_http_receipt_body(body)
        return self._signer.sign_hex(canonical_json(dict(body)))

    def verify_receipt(self, receipt: ChioReceipt | Mapping[str, Any]) -> bool:
        """Check a receipt's signature (this kernel or a trusted key) and its parameter hash.

        Args:
            receipt: a ``ChioReceipt`` or its dict form.

        Returns:
            True if it verifies.

        Raises:
            KernelInputError: not a receipt.
        """
        return self._receipts.verify(receipt)

    def _verify_receipt_dict(self, data: dict[str, Any]) -> str | None:
        return self._receipts.problem(data)

    def get_receipt(self, receipt_id: str) -> ChioReceipt | None:
        """The stored receipt with this id.

        Args:
            receipt_id: the receipt's id.

        Returns:
            The receipt, or None.
        """
        return self._receipts.get(receipt_id)

    def list_receipts_with_seq(
        self,
        *,
        capability_id: str | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
    ) -> list[tuple[int, ChioReceipt]]:
        """``(seq, receipt)`` pairs in store order (for paging with ``after_seq``).

        Args:
            capability_id: only this capability's receipts.
            limit: at most this many.
            after_seq: only receipts after this store position.

        Returns:
            The pairs.

        Raises:
            KernelInputError: a malformed filter.
        """
        return self._receipts.list_with_seq(capability_id, limit, after_seq)

    def list_receipts(
        self,
        *,
        capability_id: str | None = None,
        limit: int | None = None,
        after_seq: int | None = None,
    ) -> list[ChioReceipt]:
        """Receipts in store (chain) order.

        Args:
            capability_id: only this capability's receipts.
            limit: at most this many.
            after_seq: only receipts after this store position.

        Returns:
            The receipts.

        Raises:
            KernelInputError: a malformed filter.
        """
        return [r for _, r in self.list_receipts_with_seq(capability_id=capability_id, limit=limit, after_seq=after_seq)]

    def receipts_page(
        self,
        *,
        capability_id: str | None = None,
        verdict: str | None = None,
        since: int | None = None,
        metadata: Mapping[str, str] | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[tuple[int, ChioReceipt]]:
        """One page of ``(seq, receipt)``, filtered as :meth:`query_receipts` filters, in chain order
        (or newest first).

        Args:
            capability_id: only this capability's receipts.
            verdict: ``"allow"`` or ``"deny"``.
            since: unix seconds: receipts whose ``timestamp`` is at or after it.
            metadata: exact values of top-level keys of the receipt's ``metadata``.
            newest_first: newest first, else chain order.
            limit: at most this many (1 to 10,000; default 100).
            cursor: the ``next_cursor`` of the previous page, made with the same filters and order.

        Returns:
            The page: ``items`` and ``next_cursor`` (None on the last page).

        Raises:
            KernelInputError: a malformed filter, a bad limit, or a cursor this listing did not hand out.
        """
        return self._receipts.page(capability_id, verdict, since, metadata, (newest_first, limit, cursor))

    def receipt_count(self) -> int:
        """How many receipts the store holds.

        Returns:
            The count.
        """
        return self._receipts.count()

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

        Args:
            capability_id: only this capability's receipts.
            verdict: ``"allow"``, ``"deny"``, ``"pending_approval"`` or ``"approval_resolution"``.
            since: unix seconds: receipts whose ``timestamp`` is at or after it.
            metadata: exact values of top-level keys of the receipt's ``metadata``.
            after_seq: only receipts after this store position (for following the log).
            limit: at most this many.
            newest_first: newest first, else chain order.
            capability_index: False matches ``capability_id`` without the by-capability index (no
                write transaction to catch it up: for polling the few receipts after ``after_seq``).

        Returns:
            The pairs.

        Raises:
            KernelInputError: a malformed filter.
        """
        return self._receipts.query(
            capability_id, verdict, since, metadata, (after_seq, limit, newest_first), capability_index
        )

    def verify_chain(self, *, batch: int = 2000) -> ChainReport:
        """Walk every receipt chain of the store checking each signature and chain link.

        A SQLite store holds one chain (this kernel's); a fleet store one per kernel (each signed by
        that kernel's key). Like any hash chain without an external anchor, removing the newest
        receipts leaves a shorter valid chain; compare ``count`` with a count recorded elsewhere to
        detect that.

        Args:
            batch: receipts read per query.

        Returns:
            The report, naming the first broken index (0-based position in the broken chain), with
            one :class:`ChainStatus` per chain in ``chains``.
        """
        return self._receipts.verify_chain(batch)

    # --- signed Merkle checkpoints (chio_kernel._checkpoints does the work; docs/checkpoints.md) ---

    @property
    def checkpoint_every(self) -> int:
        """Receipts per automatic checkpoint (0: automatic checkpoints off)."""
        return self._checkpoints.every

    @property
    def checkpoint_interval(self) -> float:
        """Seconds after which pending receipts are checkpointed even short of ``checkpoint_every``."""
        return self._checkpoints.interval

    def checkpoint_now(self) -> list[dict[str, Any]]:
        """Checkpoint every committed receipt not covered yet (``checkpoint_every`` per checkpoint, 256 when 0).

        Returns:
            The new signed checkpoints ``{"body", "signature"}``, oldest first (empty when nothing is pending).
        """
        return self._checkpoints.cut()

    def list_checkpoints(self, *, kernel_id: str | None = None, first: int = 1,
                         last: int | None = None) -> list[dict[str, Any]]:
        """Stored signed checkpoints numbered ``first..last``, oldest first.

        Args:
            kernel_id: one kernel's (its hex public key); None: every kernel's in the store.
            first: the first checkpoint number.
            last: the last one (None: up to the newest).

        Returns:
            ``{"body": {chio.checkpoint_statement.v1 fields}, "signature": hex}`` per checkpoint.
        """
        return self._checkpoints.stored(kernel_id, first, last)

    def get_checkpoint(self, checkpoint_seq: int) -> dict[str, Any] | None:
        """This kernel's checkpoint with that number, or None (the first stored, if several: see verify).

        Args:
            checkpoint_seq: the checkpoint's number in this kernel's sequence (1 is the first).

        Returns:
            The stored checkpoint (its signed ``chio.checkpoint_statement.v1`` body and signature), or None.
        """
        found = self._checkpoints.stored(self.public_key_hex, checkpoint_seq, checkpoint_seq)
        return found[0] if found else None

    def inclusion_proof(self, receipt_id: str) -> dict[str, Any]:
        """The proof that a receipt is in this kernel's signed log (a checkpoint is cut first if none covers it).

        Check it with :func:`chio_kernel.proofs.verify_inclusion` and the kernel's public key only.

        Args:
            receipt_id: the receipt to prove (of any kernel's chain in this store).

        Returns:
            ``{"schema": "chio.receipt_inclusion_proof.v1", "receipt", "checkpoint", "proof"}``.

        Raises:
            KernelInputError: no such receipt.
        """
        return self._checkpoints.inclusion_proof(receipt_id)

    def consistency_proof(self, first: int, last: int) -> dict[str, Any]:
        """The proof that checkpoint ``last`` extends checkpoint ``first`` (both this kernel's).

        Check it with :func:`chio_kernel.proofs.verify_consistency` and the kernel's public key only.

        Args:
            first: the earlier checkpoint's number.
            last: the later checkpoint's number (``>= first``).

        Returns:
            ``{"schema": "chio.checkpoint_consistency_chain.v1", "checkpoints", "links", ...}``.

        Raises:
            KernelInputError: bad numbers, or a checkpoint missing or stored twice.
        """
        return self._checkpoints.consistency_proof(first, last)

    def verify_checkpoints(self, *, trusted_keys: Iterable[str] | None = None) -> CheckpointReport:
        """Check every kernel's chain against that kernel's signed checkpoints (what ``verify_chain`` cannot see).

        Names: deleted or truncated receipts a checkpoint covers, receipts changed under a checkpoint,
        equivocation (two checkpoints with one number, or one differing from this kernel's witness
        file), forged checkpoint rows, receipts after the newest checkpoint not signed by the key they
        name and, given ``trusted_keys`` on a fleet store, registered key rows no trusted key vouches for.

        Args:
            trusted_keys: every fleet kernel's key (a fleet store); None: key rows are not checked.

        Returns:
            ``CheckpointReport(ok, checkpoints, covered, problems, uncovered)`` (``uncovered``: the chains
            no checkpoint covers yet, such as the migrated ``fleet-v1``).
        """
        self._trust.learn(None)
        registered = None
        if self._fleet is not None:
            registered = [k["public_key"] for k in self._fleet.registered_keys()]
        anchors = None if trusted_keys is None else _check_trusted_keys(trusted_keys) | self.trusted_keys
        return self._checkpoints.verify(self._trust.issuers, registered, anchors)

    def export_evidence(
        self,
        directory: str | os.PathLike[str],
        *,
        capability_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> dict[str, Any]:
        """Write an evidence package of the matching receipts of this kernel's chain into ``directory`` (new or empty).

        Pending receipts are checkpointed first, so every exported receipt carries its inclusion proof.
        On a fleet store each kernel exports its own chain's receipts (the package is signed and proved
        under its key alone).
        Check the package offline with :func:`chio_kernel.verify_evidence` (or
        ``chio-durable receipts verify-evidence``); the layout is in docs/checkpoints.md.

        Args:
            directory: where to write the package.
            capability_id: only this capability's receipts.
            metadata: only receipts whose metadata has these values (a run: ``{"flow_run_id": ...}``).
            since: only receipts at or after this unix second.
            until: only receipts before this unix second.

        Returns:
            The manifest (``chio.evidence_export_manifest.v1``).

        Raises:
            KernelInputError: a malformed filter, or ``directory`` not empty.
        """
        self.checkpoint_now()
        rows = self.query_receipts(capability_id=capability_id, metadata=metadata, since=since)
        ids = [r.id for _, r in rows if until is None or r.timestamp < until]
        receipts, checkpoints, proofs = self._checkpoints.evidence_parts(ids)
        lineage = _lineage(self._capabilities.capability_info, {str(r["capability_id"]) for _, r in receipts})
        query = {k: v for k, v in (("capabilityId", capability_id), ("metadata", dict(metadata or {}) or None),
                                   ("since", since), ("until", until)) if v is not None}
        db = self.data_dir / "kernel.db"
        retention = {
            "liveDbSizeBytes": db.stat().st_size if self._fleet is None and db.exists() else None,
            "oldestLiveReceiptTimestamp": next((r.timestamp for _, r in self.list_receipts_with_seq(limit=1)), None),
        }
        return write_evidence(Path(directory), kernel_key=self.public_key_hex, sign_hex=self._signer.sign_hex,
                              exported_at=int(self._clock()), query=query, receipts=receipts,
                              checkpoints=checkpoints, proofs=proofs, lineage=lineage, retention=retention)

    def health(self) -> dict[str, Any]:
        """Status summary (what the sidecar's ``/chio/health`` returns).

        Returns:
            ``status``, ``kernel_key``, ``data_dir``, ``receipts``, ``mode``; ``store`` (the URL, password
            masked) on a fleet store.
        """
        with self._read() as st:
            head_seq = st.chain_head()[0]
        return {
            "status": "ok",
            "kernel_key": self.public_key_hex,
            "data_dir": str(self.data_dir),
            "receipts": head_seq,
            "mode": "embedded",
            **({} if self._fleet is None else {"store": self._fleet.description}),
        }
