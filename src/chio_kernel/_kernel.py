"""The embedded Chio kernel: capabilities, guards, evaluation and the signed receipt chain.

See ``docs/kernel.md`` for the rules this module implements (signed bodies, guard order, budgets,
idempotency, rate limits, storage durability).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chio_sdk.models import CapabilityToken, ChioReceipt, ChioScope, MonetaryAmount, Operation
from pydantic import ValidationError

from chio_kernel._approvals import Approvals
from chio_kernel._capabilities import Capabilities, _Cap, capability_signing_bytes
from chio_kernel._coerce import MAX_COST_UNITS, _require_str, check_scope_fields
from chio_kernel._denials import Denials
from chio_kernel._errors import CapabilityError, ChioKernelError, KernelInputError, KernelKeyMissingError
from chio_kernel._evaluation import Evaluator
from chio_kernel._holds import Holds, resolve_hold_ttl
from chio_kernel._ids import uuid7
from chio_kernel._receipts import (
    ChainReport,
    ReceiptChain,
    check_http_receipt_body,
    receipt_chain_hash,
    receipt_signing_bytes,
    receipt_wire_dict,
    verify_chain,
    verify_receipt_dict,
)
from chio_kernel._request import EvalRequest
from chio_kernel._store import KernelStore, ReceiptQuery, StoreReader, StoreWriter
from chio_kernel._store_factory import STORE_ENV, open_kernel_store, refuse_missing_key, resolve_store, store_trust
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import Signer, default_data_dir, ensure_data_dir, load_or_create_key

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
    ) -> None:
        """Open the kernel: its key, its store, and the services (see the class doc for the arguments).

        Raises:
            KernelInputError: a malformed argument or ``$CHIO_*`` setting.
            KernelKeyMissingError: ``kernel.key`` is gone next to a store that holds what it signed.
            StoreUnavailableError: the PostgreSQL store cannot be reached.
        """
        ttl = resolve_hold_ttl(hold_ttl)
        self.data_dir: Path = ensure_data_dir(Path(data_dir) if data_dir is not None else default_data_dir())
        dsn = resolve_store(store)  # None: SQLite in data_dir
        if dsn is None:
            refuse_missing_key(self.data_dir, fsync)
        self._signer = Signer(load_or_create_key(self.data_dir))
        self.public_key_hex: str = self._signer.public_key_hex
        self.trusted_keys: frozenset[str] = _check_trusted_keys(trusted_keys)
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        now: Callable[[], float] = lambda: self._clock()  # noqa: E731 - tests may move the clock
        chain = ReceiptChain(self._signer.sign_hex, self.public_key_hex)
        approvals = Approvals(self.data_dir, approver_keys, approval_ttl, now, self._read, self._write,
                              self._load_cap, chain)
        # opened after the key: load_or_create_key tightens a fresh data dir, which a store file would hide
        self._store: KernelStore = open_kernel_store(dsn, self.data_dir, fsync=fsync, signer_key=self.public_key_hex)
        self._closed = False
        self._trust, self._fleet = store_trust(self._store, self.public_key_hex, self.trusted_keys, self._read,
                                               self.data_dir)
        self._capabilities = Capabilities(self._signer, self._trust, now, self._read, self._write)
        self._caps: dict[str, _Cap] = self._capabilities._caps  # the verified-capability cache
        self._approvals = approvals
        self._holds = Holds(ttl, now, self._read, self._write, self._load_cap, chain)
        self._denials = Denials(self._write, self._load_cap, now, chain)
        self._evaluation = Evaluator(self._caps, self._load_cap, self._read, self._write, now, chain,
                                     (approvals, self._holds, self._trust), self.base_url)

    # --- plumbing ---

    @property
    def base_url(self) -> str:
        """Where this kernel lives, for messages: ``embedded:<data_dir>``."""
        return f"embedded:{self.data_dir}"

    def __repr__(self) -> str:
        if self._fleet is not None:
            return (f"Kernel(data_dir={str(self.data_dir)!r}, store={self._fleet.description!r}, "
                    f"key={self.public_key_hex[:16]}…)")
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")

    def _read(self) -> AbstractContextManager[StoreReader]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        return self._store.read()

    def _write(self) -> AbstractContextManager[StoreWriter]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        return self._store.write()

    # --- a fleet's store (chio_kernel._fleet does the work; PostgreSQL only) ---

    def _fleet_keys(self, name: str) -> FleetKeys:
        if self._fleet is None:  # an AttributeError: hasattr(kernel, "registered_keys") tells a fleet kernel
            raise AttributeError(f"{name}: a kernel on a PostgreSQL store (a fleet) only, not on SQLite")
        return self._fleet

    @property
    def store(self) -> str:
        """The fleet store's URL, password masked (a kernel on PostgreSQL only: AttributeError on SQLite)."""
        return self._fleet_keys("store").description

    @property
    def registered_keys(self) -> Callable[[], list[dict[str, Any]]]:
        """``registered_keys()``: every kernel key registered in the fleet's store, oldest first.

        Each is ``{"public_key", "label" (host:data_dir), "registered_at", "retired_at" (None while
        active), "retired_reason", "this_kernel"}``. A kernel on PostgreSQL only (AttributeError on
        SQLite, so ``hasattr`` tells a fleet kernel).
        """
        return self._fleet_keys("registered_keys").registered_keys

    @property
    def retire_key(self) -> Callable[[str, str], None]:
        """``retire_key(public_key, reason="retired")``: retire a registered kernel key.

        It signs nothing more and capabilities it signed deny on every kernel of the fleet; receipts
        it signed before still verify. Not reversible (give the host a new data directory, hence a
        new key). Raises :class:`KernelInputError` for an unknown or malformed key. A kernel on
        PostgreSQL only (AttributeError on SQLite).
        """
        keys = self._fleet_keys("retire_key")

        def retire_key(public_key: str, reason: str = "retired") -> None:
            keys.retire_key(public_key, reason)

        return retire_key

    @property
    def check_key_active(self) -> Callable[[], None]:
        """``check_key_active()``: raise :class:`~chio_kernel._errors.KernelKeyRetiredError` if this
        kernel's own key was retired from the fleet store (a sidecar on it refuses to start). A kernel
        on PostgreSQL only (AttributeError on SQLite)."""
        return self._fleet_keys("check_key_active").check_key_active

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
        self._check_open()
        req = self._evaluation.prepare(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id, canonical_parameters, parameter_hash, metadata,
        )
        return self._evaluation.committer.submit(req)

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
    ) -> ChioReceipt:
        """:meth:`evaluate` for asyncio callers: the calls made in one turn of the event loop share
        one write transaction (LocalChioClient uses this)."""
        self._check_open()
        req = self._evaluation.prepare(
            capability_id, tool_server, tool_name, parameters, idempotency_key, cost, operation,
            approval_id, canonical_parameters, parameter_hash, metadata,
        )
        return await self._evaluation.committer.submit_async(req)

    # --- approvals (chio_kernel._approvals does the work; docs/approvals.md) ---

    @property
    def approval_ttl(self) -> int:
        """Seconds a pending approval waits before it times out (a re-evaluation then denies with
        guard ``approval-timeout``)."""
        return self._approvals.approval_ttl

    @property
    def approver_keys(self) -> frozenset[str]:
        """Hex Ed25519 keys whose signed approval tokens this kernel accepts: ``approver_keys=`` plus
        the ``approvers`` file of the data directory (read anew each time, so ``chio-durable approvals
        trust`` takes effect on a running sidecar)."""
        return self._approvals.approver_keys

    def trust_approver(self, public_key: str) -> None:
        """Add an approver key to the data directory's ``approvers`` file (kept across restarts)."""
        self._approvals.trust_approver(public_key)

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        """One approval as a dict, or None. ``status`` is what it is NOW: ``pending``, ``approved``,
        ``denied`` (also when its capability was revoked during the wait) or ``expired``; plus the
        call (``capability_id``, ``tool_server``, ``tool_name``, ``parameters``, ``parameter_hash``),
        ``subject``, ``summary``, ``created_at`` / ``expires_at`` (unix seconds), the receipts
        (``pending_receipt_id``, ``resolution_receipt_id``, ``consumed_receipt_id``) and the answer
        (``resolved_at``, ``approver``, ``reason``)."""
        return self._approvals.get_approval(approval_id)

    def list_approvals(self, status: str | None = "pending", *, limit: int | None = None) -> list[dict[str, Any]]:
        """Approvals oldest first, as :meth:`get_approval` returns them: those whose current status is
        ``status`` (``pending`` — still answerable —, ``approved``, ``denied``, ``expired``) or all (None)."""
        return self._approvals.list_approvals(status, limit=limit)

    def respond_approval(
        self, approval_id: str, outcome: str, reason: str | None = None, *, approver: str = "operator"
    ) -> ChioReceipt:
        """The kernel's operator answers an approval (``outcome``: ``"approved"`` or ``"denied"``).

        Returns the signed resolution receipt (in the chain; its ``kernel_key`` is the approver key
        recorded). Raises :class:`ApprovalNotFoundError`, :class:`ApprovalConflictError` (answered
        already, expired, or capability revoked) or :class:`KernelInputError`.

        After the commit it calls the waker of every wake registered on the approval (each bounded
        by ``$CHIO_WAKE_TIMEOUT``; a failing waker changes nothing and raises nothing here);
        :meth:`last_wake_report` tells what was woken.
        """
        return self._approvals.respond_approval(approval_id, outcome, reason, approver=approver)

    def respond_approval_token(self, token: Mapping[str, Any], approval_id: str | None = None) -> ChioReceipt:
        """Answer an approval with a signed approval token (see :func:`sign_approval_token`).

        The token must be signed by a key in :attr:`approver_keys`, name this approval
        (``request_id``, and ``approval_id`` when given), its ``parameter_hash`` and ``subject``, and be
        inside ``issued_at``..``expires_at``. Raises :class:`ApprovalTokenError` if it is refused, the
        errors of :meth:`respond_approval` otherwise. Wakes the waiting run as :meth:`respond_approval`
        does (:meth:`last_wake_report`).
        """
        return self._approvals.respond_approval_token(token, approval_id)

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
        trust = self._trust
        if trust.learns and data.get("kernel_key") not in trust.issuers:
            with self._read() as st:  # a fleet kernel that joined after this one started
                trust.learn(st)
        return verify_receipt_dict(data, trust.issuers)

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
        self._check_open()
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
        self._check_open()
        # One consistent read snapshot: the walk (long on a big store) neither holds the kernel's
        # locks nor blocks writers, so evaluations go on meanwhile.
        return verify_chain(self._store.snapshot(), self._verify_receipt_dict, batch)

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
            **({} if self._fleet is None else {"store": self._fleet.description}),
        }
