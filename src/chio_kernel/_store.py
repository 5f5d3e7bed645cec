"""The kernel's store interface: every byte the kernel keeps goes through a :class:`KernelStore`.

The store owns ALL SQL (schema, statements, locking, durability); the kernel above it decides
(policy), signs (receipts, capabilities) and hands the store rows. Two implementations are meant:
SQLite (``chio_kernel._sqlite_store.SQLiteStore``, the default: ``<data_dir>/kernel.db``) and
PostgreSQL (a fleet sharing one chain).

Data the store keeps (the SQLite schema names them):

* capabilities  - ``id`` -> the token JSON (as issued), ``parent_id``, ``subject``, ``issued_at``,
  ``expires_at``, rate limit (``rate_max`` calls per ``rate_per`` seconds, both None when unlimited),
  ``created_at`` (listing order);
* revocations   - ``capability_id`` -> ``revoked_at``, ``cause``; inserting an existing id is a no-op;
* usage         - ``(capability_id, grant_index)`` -> ``invocations``, ``cost_units`` (saturating at
  2^63-1);
* rate events   - ``(capability_id, t)`` of allowed calls inside a sliding window;
* receipts      - the hash-chained log: ``seq`` (1, 2, 3 ... in chain order, no gaps), ``id``,
  ``capability_id``, ``verdict``, ``chain_hash`` (sha256 of ``body``), ``body`` (the receipt's JSON text
  exactly as the kernel hands it; the store never rewrites it);
* idempotency   - ``key_hash`` -> the ``seq`` of the receipt it returned;
* approvals     - human approvals of pending calls (``chio_kernel._approvals``, docs/approvals.md):
  ``id`` -> the call it is bound to (capability, tool, ``parameter_hash``, ``call_hash``), the
  capability's ``subject``, ``summary``, ``created_at`` / ``expires_at``, ``status`` (``pending``,
  ``approved``, ``denied``), the pending receipt, the resolution (``resolved_at``, ``approver``,
  ``reason``, its receipt) and ``consumed_receipt_id`` (the allow receipt that used it, once).
* approval wakes - ``(approval_id, wake_json)`` unique, ``created_at``: what wakes the run waiting
  for an approval once it is answered (``chio_kernel._wakers``); ``wake_json`` is the wake's
  canonical JSON text, so an identical wake registered again is one row.
* webhook outbox - one row per (approval, webhook URL) (``chio_kernel._webhooks``, docs/inbox.md): the
  ``id`` sent as ``webhook-id``, the JSON ``body``, ``state`` (``pending``, ``delivered``, ``dead``),
  ``attempts``, ``next_at`` (when a deliverer may try next), ``last_error``, ``delivered_at``.
* idempotency keys - the key's hash -> the fingerprint of the call it was first allowed for and the
  ``seq`` of that receipt (a key reused for another call is refused, see ``chio_kernel._holds``);
  the kernel writes these instead of ``idempotency`` rows, and still reads ``idempotency`` rows
  written before;
* holds         - one row per allow that declared a cost (:class:`HoldRow`), the budgeted grants it
  charged (``hold_grants``) and the settle/release ``op_id`` s answered (``hold_ops``). While a hold
  is open its units are part of ``usage.cost_units`` (so ``cost_units`` = captured + open holds);
  settling/releasing/expiring adjusts ``cost_units`` in the same transaction (docs/budgets.md).

Transaction semantics (what every implementation must guarantee):

* :meth:`KernelStore.write` opens ONE write transaction and yields a :class:`StoreWriter`. Writers
  are serialised: from entry to commit/rollback no other writer of the same store (another thread,
  process, or host for a shared server) can write, so the chain head read inside it stays the head
  until commit, and budget/rate/idempotency reads followed by writes are exact. Reads inside the
  transaction see everything committed before it plus its own uncommitted writes. Normal exit of
  the ``with`` block commits (and increments :attr:`KernelStore.commits`); an exception rolls
  everything back (nothing of it is visible afterwards) and propagates. When the ``with`` block
  returns, the commit is durable to the store's promise (SQLite WAL ``synchronous=NORMAL``: survives
  ``kill -9`` of the process; ``fsync=True``: survives power loss). Nesting ``write()`` in one thread
  is not supported.
* Several kernel calls may share one write transaction (group commit): the kernel runs them one
  after the other on the same :class:`StoreWriter` and commits once; a caller's answer is released
  only after that commit. If one of them raises, the kernel rolls the whole transaction back and
  runs the calls again one transaction each, so the store needs no savepoints.
* :meth:`KernelStore.read` yields a :class:`StoreReader` for short reads of committed state on a
  connection of its own: it never waits for a writer (neither the database write lock nor the
  writer's connection lock), so a listing never delays an evaluation.
* :meth:`KernelStore.snapshot` yields a :class:`StoreReader` on ONE consistent read snapshot that holds
  no kernel lock and blocks no writer (chain verification walks the whole log in it).
* Errors of the storage layer itself (locked beyond the timeout, disk full, connection lost) are
  raised as one of :attr:`KernelStore.transient_errors`; the sidecar answers them 503 (retryable,
  nothing was decided).
* Fork safety: a store used in a child process after ``fork`` reopens its connections there (never
  closing inherited handles).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "GENESIS_HASH",
    "ApprovalRow",
    "CapabilityRow",
    "CheckpointRow",
    "HoldRow",
    "KernelStore",
    "ReceiptQuery",
    "StoreReader",
    "StoreWriter",
    "StoredCounts",
    "WebhookRow",
]

#: ``content_hash`` of the first receipt, and the chain head of an empty store.
GENESIS_HASH = "0" * 64
#: The chain id of a fleet store's receipts from before per-kernel chains (one chain for the whole
#: fleet, signed by several kernels): they keep verifying as that one chain.
LEGACY_CHAIN = "fleet-v1"


@dataclass(frozen=True)
class CapabilityRow:
    """One stored capability. ``token`` is the token's JSON (``model_dump_json(exclude_none=True)``)."""

    id: str
    token: str
    parent_id: str | None
    subject: str
    issued_at: int
    expires_at: int
    rate_max: int | None
    rate_per: float | None


@dataclass(frozen=True)
class ApprovalRow:
    """One stored approval (see ``chio_kernel._approvals``). Times are unix seconds (int)."""

    id: str
    capability_id: str
    tool_server: str
    tool_name: str
    parameter_hash: str
    call_hash: str  # sha256 of the whole call (capability, tool, operation, parameters, cost)
    subject: str
    summary: str
    created_at: int
    expires_at: int
    status: str  # pending | approved | denied
    pending_receipt_id: str
    resolved_at: int | None = None
    approver: str | None = None
    reason: str | None = None
    resolution_receipt_id: str | None = None
    consumed_receipt_id: str | None = None


@dataclass(frozen=True)
class WebhookRow:
    """One webhook delivery of the outbox (see ``chio_kernel._webhooks``). Times are unix seconds."""

    id: str
    approval_id: str
    url: str
    body: str
    created_at: float
    state: str  # pending | delivered | dead
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    delivered_at: float | None = None


@dataclass(frozen=True)
class StoredCounts:
    """What a store holds, for the missing-key check: a new signing key would orphan these."""

    capabilities: int
    receipts: int
    newest_key: str | None  # kernel_key of the newest receipt, else issuer of a stored capability


@dataclass(frozen=True)
class ReceiptQuery:
    """A filtered receipt listing (``receipts list`` / ``receipts tail``), answered by the store in SQL.

    Every filter is optional and they combine with AND. ``metadata`` pairs match top-level keys of
    the receipt's ``metadata`` object exactly (``(("workflow_id", "order-1"),)``); keys are plain
    identifiers (letters, digits, ``_``, ``.``, ``-``). ``since`` is Unix seconds, compared with the
    receipt's ``timestamp``. ``newest_first`` orders by ``seq`` descending, else chain order.
    ``capability_index``: match ``capability_id`` through the by-capability index (caught up
    first); False matches the receipts' own column, for short ranges after ``after_seq`` (following
    new receipts) where catching the index up on every poll would take the write lock.
    """

    after_seq: int = 0
    limit: int | None = None
    newest_first: bool = False
    capability_id: str | None = None
    verdict: str | None = None
    since: int | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    capability_index: bool = True
    before_seq: int | None = None  # only receipts before this store position (paging newest first)

    def __post_init__(self) -> None:
        for key, _ in self.metadata:  # keys go into a JSON path: plain identifiers only
            if not key or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in key):
                raise ValueError(f"receipt metadata key {key!r} must be letters, digits, '_', '.' or '-'")


@dataclass(frozen=True)
class HoldRow:
    """One budget hold: the allow receipt that placed it, its amount and where it stands.

    ``state`` is ``open``, ``settled``, ``released`` or ``expired``; ``closed_by`` / ``closed_seq``
    name the receipt that moved it out of ``open`` last (None while open).
    """

    receipt_id: str
    capability_id: str
    policy_hash: str
    units: int
    currency: str
    created_at: float
    expires_at: float
    state: str = "open"
    captured_units: int = 0
    closed_by: str | None = None
    closed_seq: int | None = None


class CheckpointRow(NamedTuple):
    """One stored signed checkpoint (see ``chio_kernel._checkpoints``): ``body`` is its canonical JSON,
    ``leaves`` the covered receipts' leaf hashes (hex, concatenated) so proofs need no re-hashing."""

    kernel_id: str
    checkpoint_seq: int
    batch_start_seq: int
    batch_end_seq: int
    sha256: str
    body: str
    signature: str
    leaves: str


class StoreReader(Protocol):
    """Reads of the store (committed state, or a transaction's own view inside :class:`StoreWriter`)."""

    def chain_head(self) -> tuple[int, str]:
        """``(seq, chain_hash)`` of the newest receipt; ``(0, GENESIS_HASH)`` on an empty log."""
        ...

    def chains(self) -> list[tuple[str, int, str]]:
        """``(kernel_id, head seq, head hash)`` of every receipt chain in the store, by kernel id.

        A chain is one kernel's (``kernel_id`` = its hex signing key): SQLite holds one; a fleet
        store one per kernel, plus the fleet's single chain from before per-kernel chains.
        """
        ...

    def chain_receipts(self, kernel_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """``(position, body)`` of one chain's receipts after position ``after``, in chain order."""
        ...

    def capability(self, capability_id: str) -> CapabilityRow | None:
        """The stored capability with this id, or None."""
        ...

    def capability_tokens(self) -> list[str]:
        """Every stored token's JSON, oldest first (``created_at``, then insertion order)."""
        ...

    def revocation(self, capability_id: str) -> tuple[float, str] | None:
        """``(revoked_at, cause)`` if this very id is revoked, else None."""
        ...

    def first_revoked(self, ids: Sequence[str]) -> str | None:
        """One of ``ids`` that is revoked (any), or None."""
        ...

    def revoked_among(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are revoked themselves."""
        ...

    def receipt_bodies(self, receipt_ids: Sequence[str]) -> dict[str, str]:
        """``{id: stored JSON text}`` of the receipts with these ids that exist."""
        ...

    def usage_of(self, capability_id: str) -> list[tuple[int, int, int]]:
        """``(grant_index, invocations, cost_units)`` per budgeted grant, by grant index."""
        ...

    def receipt_body(self, receipt_id: str) -> str | None:
        """The stored JSON text of the receipt with this id, or None."""
        ...

    def receipts_after(
        self, after_seq: int, limit: int | None, capability_id: str | None = None
    ) -> list[tuple[int, str]]:
        """``(seq, body)`` with ``seq > after_seq`` in chain order, at most ``limit`` (None: all).

        With ``capability_id``: only that capability's receipts, through the by-capability index
        (call :meth:`KernelStore.catch_up_capability_index` first; receipts it has not indexed yet
        are missing from the answer).
        """
        ...

    def receipt_rows_after(self, after_seq: int, limit: int) -> list[tuple[int, str, str, str, str, str]]:
        """``(seq, id, capability_id, verdict, chain_hash, body)`` with ``seq > after_seq`` in chain
        order, at most ``limit``: every column the store indexes beside the body (the chain walk
        checks each against the signed body)."""
        ...

    def capability_index_mismatch(self) -> tuple[str, int] | None:
        """``(capability_id, seq)`` of a by-capability index entry that names another capability than
        the receipt at ``seq`` (or no receipt), or None when the index agrees with the receipts."""
        ...

    def receipt_count(self) -> int:
        """Number of receipts in the log."""
        ...

    def query_receipts(self, query: ReceiptQuery) -> list[tuple[int, str]]:
        """``(seq, body)`` of the receipts matching ``query`` (see :class:`ReceiptQuery`), at most
        ``query.limit``. With ``capability_id`` it reads the by-capability index, as
        :meth:`receipts_after` does (catch it up first)."""
        ...

    def approval(self, approval_id: str) -> ApprovalRow | None:
        """The stored approval with this id, or None."""
        ...

    def approvals(self, status: str | None, limit: int | None) -> list[ApprovalRow]:
        """Approvals (only those with ``status`` unless None), oldest first, at most ``limit``."""
        ...

    def approvals_page(
        self, status: str | None, before: tuple[int, str] | None, limit: int, expiry: tuple[bool, int] | None = None
    ) -> list[ApprovalRow]:
        """At most ``limit`` approvals newest first (``created_at``, id descending), strictly before
        the position ``before`` (keyset paging); ``status``: only this stored status; ``expiry``
        ``(True, now)``: only those expired at ``now``, ``(False, now)``: only those not expired."""
        ...

    def capabilities_page(self, after: tuple[float, str] | None, limit: int) -> list[tuple[float, str, str]]:
        """At most ``limit`` ``(created_at, id, token JSON)`` oldest first (``created_at``, id),
        strictly after the position ``after``."""
        ...

    def holds_page(
        self, state: str | None, capability_id: str | None, before: tuple[float, str] | None, limit: int
    ) -> list[HoldRow]:
        """At most ``limit`` holds newest first (``created_at``, receipt id descending), strictly
        before ``before``; ``state`` / ``capability_id`` filter when given."""
        ...

    def approval_wakes(self, approval_id: str) -> list[str]:
        """The wakes registered on this approval (canonical JSON texts), oldest first."""
        ...

    def unsent_approvals(self, url: str, now: float) -> list[str]:
        """Ids of pending, unexpired approvals with no webhook delivery to ``url`` yet, oldest first."""
        ...

    def webhook_deliveries(self, state: str | None, limit: int) -> list[WebhookRow]:
        """Webhook deliveries (only those in ``state`` unless None), newest first, at most ``limit``."""
        ...

    def hold(self, receipt_id: str) -> HoldRow | None:
        """The hold placed by the allow receipt with this id, or None."""
        ...

    def hold_grants(self, receipt_id: str) -> list[tuple[str, int]]:
        """``(capability_id, grant_index)`` of every budgeted grant the hold charged."""
        ...

    def held_by_grant(self, capability_id: str) -> list[tuple[int, int, int]]:
        """``(grant_index, held units, open holds)`` of this capability's grants with open holds."""
        ...

    def chain_between(self, kernel_id: str, first: int, last: int) -> list[tuple[int, str]]:
        """``(position, body)`` of one kernel's chain from position ``first`` to ``last``, in chain order
        (SQLite: the store's one chain, positions = ``seq``; PostgreSQL: ``kernel_id``'s, by ``chain_seq``)."""
        ...

    def chain_end(self, kernel_id: str) -> int:
        """The newest position of one kernel's chain that the receipt table holds (0: none)."""
        ...

    def receipt_position(self, receipt_id: str) -> tuple[str | None, int] | None:
        """``(chain id, position)`` of a receipt (chain id None: the store's one chain), or None."""
        ...

    def checkpoints(self, kernel_id: str | None, first: int = 1, last: int | None = None) -> list[CheckpointRow]:
        """Stored checkpoints numbered ``first..last`` (of one kernel, or all), by kernel then number."""
        ...

    def checkpoint_kernels(self) -> list[str]:
        """The kernels (hex public keys) with checkpoints in the store."""
        ...

    def checkpoints_after(self, kernel_id: str, after_seq: int, limit: int) -> list[CheckpointRow]:
        """A page of a kernel's checkpoints numbered above ``after_seq``, by number (then digest)."""
        ...

    def last_checkpoint(self, kernel_id: str) -> CheckpointRow | None:
        """A kernel's newest checkpoint, or None."""
        ...

    def checkpoint_covering(self, kernel_id: str, receipt_seq: int) -> CheckpointRow | None:
        """A kernel's checkpoint whose range holds ``receipt_seq``, or None."""
        ...


    def approval_answers(self, approval_id: str) -> list[tuple[str, str, int, str]]:
        """``(name, role, at, receipt_id)`` of each approver's answer so far, oldest first."""
        ...

    def approval_answers_among(self, approval_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int, str]]]:
        """``{approval_id: approval_answers(approval_id)}`` of the approvals with answers, in one statement."""
        ...

    def credential(self, name: str) -> tuple[str, str, str, float | None] | None:
        """``(name, role, token_hash, revoked_at)`` of a credential, or None."""
        ...

    def credential_by_hash(self, token_hash: str) -> tuple[str, str, str, float | None] | None:
        """``(name, role, token_hash, revoked_at)`` of the credential whose token hashes to this."""
        ...

    def credentials(self) -> list[tuple[str, str, float, float | None]]:
        """``(name, role, created_at, revoked_at)`` of every credential, oldest first."""
        ...


class StoreWriter(StoreReader, Protocol):
    """The operations of one write transaction (see the module docstring for its guarantees)."""

    def insert_checkpoint(self, row: CheckpointRow) -> None:
        """Store a signed checkpoint."""
        ...

    def head_and_revoked(self, lineage: Sequence[str]) -> tuple[int, str, str | None]:
        """``chain_head()`` plus ``first_revoked(lineage)`` (one round trip on the evaluation path)."""
        ...

    def insert_capability(self, row: CapabilityRow, created_at: float) -> None:
        """Store a new capability (the id must not exist)."""
        ...

    def capability_subtree(self, capability_id: str) -> list[str]:
        """This id and every descendant (by ``parent_id``), by depth then id: root first."""
        ...

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        """Revoke ``(capability_id, revoked_at, cause)`` each; an id already revoked keeps its row."""
        ...

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        """``(invocations, cost_units)`` spent on one grant; ``(0, 0)`` if never charged."""
        ...

    def charge(self, capability_id: str, grant_index: int, cost_units: int) -> None:
        """One more invocation and ``cost_units`` more spent (saturating at 2^63-1)."""
        ...

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        """Forget events at or before ``now - per_seconds``; return ``(count, oldest t)`` of the rest."""
        ...

    def record_rate_event(self, capability_id: str, t: float) -> None:
        """Count one allowed call at time ``t`` in the capability's rate window."""
        ...

    def idempotent_receipt(self, key_hash: str) -> str | None:
        """The body of the receipt remembered for this idempotency key hash, or None."""
        ...

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> int:
        """Append the receipt at chain position ``seq`` (= head seq + 1); it becomes the chain head.

        Returns the receipt's store ``seq`` (what idempotency keys and hold ops point at): the chain
        position itself on SQLite, the fleet-wide insertion order on PostgreSQL.
        """
        ...

    #: True when writers run concurrently (PostgreSQL): shared rows must be locked with the
    #: methods below; False under one write lock (SQLite), where they do nothing.
    ROW_LOCKS: bool

    def lock_capabilities(self, ids: Sequence[str]) -> None:
        """Lock these capabilities (their budgets and rate windows) until commit, in id order."""
        ...

    def claim_idempotency_key(self, key_hash: str) -> None:
        """Take this idempotency key until commit: the same key on another writer waits, then
        sees this transaction's answer."""
        ...

    def remember_idempotency(self, key_hash: str, seq: int) -> None:
        """Remember that this idempotency key hash answered with the receipt at ``seq``."""
        ...

    def insert_approval(self, row: ApprovalRow) -> None:
        """Store a new (pending) approval (the id must not exist)."""
        ...

    def resolve_approval(
        self, approval_id: str, status: str, resolved_at: int, approver: str, reason: str, receipt_id: str
    ) -> bool:
        """Resolve a PENDING approval; False (and nothing written) if it is not pending any more."""
        ...

    def consume_approval(self, approval_id: str, receipt_id: str) -> bool:
        """Mark an approved approval used by ``receipt_id``; False if it was used already."""
        ...

    def add_approval_wake(self, approval_id: str, wake_json: str, created_at: float) -> bool:
        """Register a wake on an approval; False (nothing written) if this very wake is there already."""
        ...

    def insert_webhook(self, row: WebhookRow) -> bool:
        """Queue a webhook delivery; False (nothing written) if ``(approval_id, url)`` is queued already."""
        ...

    def due_webhooks(self, now: float, limit: int) -> list[WebhookRow]:
        """Pending deliveries with ``next_at <= now``, earliest first, at most ``limit``."""
        ...

    def update_webhook(self, row: WebhookRow) -> None:
        """Write a delivery's ``state``, ``attempts``, ``next_at``, ``last_error`` and ``delivered_at``."""
        ...

    def idempotency_key(self, key_hash: str) -> tuple[str, str] | None:
        """``(call fingerprint, receipt body)`` of the allow this idempotency key (its hash alone)
        answered, or None."""
        ...

    def remember_idempotency_key(self, key_hash: str, fingerprint: str, seq: int) -> None:
        """Remember that this idempotency key answered the call ``fingerprint`` with the receipt at ``seq``."""
        ...

    def insert_hold(self, row: HoldRow, grants: Sequence[tuple[str, int]]) -> None:
        """Store a new open hold and the ``(capability_id, grant_index)`` budgets it charged."""
        ...

    def due_holds(self, now: float, limit: int, touching: Sequence[str] | None = None) -> list[HoldRow]:
        """Open holds with ``expires_at <= now``, oldest expiry first, at most ``limit`` (only those
        that charged one of the capabilities ``touching``, when given)."""
        ...

    def close_hold(self, receipt_id: str, state: str, captured_units: int, closed_by: str, closed_seq: int) -> None:
        """Move a hold to ``state`` (settled / released / expired), recording what it captured and why."""
        ...

    def adjust_cost(self, capability_id: str, grant_index: int, delta: int) -> None:
        """Add ``delta`` (may be negative) to a grant's ``cost_units``, kept within [0, 2^63-1]."""
        ...

    def hold_op(self, receipt_id: str, op_id: str) -> tuple[str, str] | None:
        """``(fingerprint, receipt body)`` of the settle/release answered under this op_id, or None."""
        ...

    def remember_hold_op(self, receipt_id: str, op_id: str, fingerprint: str, seq: int) -> None:
        """Remember that this op_id on this hold answered with the receipt at ``seq``."""
        ...

    def insert_approval_answer(self, approval_id: str, name: str, role: str, at: int, receipt_id: str) -> None:
        """Record one approver's answer."""
        ...

    def insert_credential(self, name: str, role: str, token_hash: str, created_at: float) -> None:
        """Store a credential (its token's hash only)."""
        ...

    def revoke_credential(self, name: str, revoked_at: float) -> None:
        """Mark a credential revoked."""
        ...


@runtime_checkable
class KernelStore(Protocol):
    """A kernel's store: transactions, reads, snapshots (see the module docstring)."""

    #: Where the store lives, for messages and ``health()`` (e.g. ``sqlite:/path/kernel.db``).
    description: str
    #: Number of write transactions committed by this object (benchmarks count commits with it).
    commits: int
    #: Exceptions meaning "the store could not be used" (retryable; nothing was decided).
    transient_errors: tuple[type[Exception], ...]

    def write(self) -> AbstractContextManager[StoreWriter]:
        """One serialised write transaction: commit on normal exit, rollback on exception."""
        ...

    def read(self) -> AbstractContextManager[StoreReader]:
        """Short reads of committed state."""
        ...

    def snapshot(self) -> AbstractContextManager[StoreReader]:
        """One consistent read snapshot holding no lock that blocks writers."""
        ...

    def catch_up_capability_index(self) -> None:
        """Bring the by-capability receipt index up to the chain head (in short transactions)."""
        ...

    def stored_counts(self) -> StoredCounts:
        """Capabilities and receipts held (the kernel refuses to mint a key over a non-empty store)."""
        ...

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...
