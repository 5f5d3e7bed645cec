"""``PostgresStore``: the :class:`chio_kernel._store.KernelStore` of a fleet, on PostgreSQL (psycopg 3).

Every kernel of a fleet points at one database: one set of budgets, one key registry, and one
receipt chain per kernel (``kernel_id`` = its hex signing key). The interface's guarantees
(``chio_kernel._store``) hold across processes AND hosts, without a fleet-wide lock:

* **A chain per kernel.** :meth:`PostgresStore.write` sends ``BEGIN`` and ``chio_chain_lock(key)``
  in one round trip: this kernel's ``chain_heads`` row locked ``FOR UPDATE`` (only writers of the
  same key wait), its own ``kernel_keys`` row ``FOR SHARE`` (a retirement waits for them, and they
  see a committed one) and the key epoch. The writer follows its appends in memory; each append
  updates the head row in the same statement. ``(kernel_id, chain_seq)`` is unique, so a chain
  cannot fork even without the lock. ``seq`` is the fleet-wide insertion order (a sequence).
* **Row locks on what is shared** (``ROW_LOCKS``): the capabilities whose counters a decision reads
  (:meth:`_PgWriter.lock_capabilities`, id order, one statement; the counters are read by the next,
  pipelined statement so they include the previous holder's commit), a hold and an approval
  (``FOR UPDATE`` when read in a write transaction), and idempotency keys (claimed with
  ``INSERT ... ON CONFLICT DO NOTHING``). A deadlock PostgreSQL breaks is
  :class:`StoreConflictError` (retryable, nothing decided).
* **A killed writer leaves nothing.** Its connection drops; PostgreSQL rolls its transaction back
  and releases its row locks.
* **Few round trips.** Statements whose answer nobody reads (a charge, a rate event) are sent in
  one pipeline with the next statement that answers something, or with ``COMMIT``.
* **Durability.** ``COMMIT`` returns once the commit record is flushed by the server
  (``synchronous_commit=on``, PostgreSQL's default): a receipt handed to a caller survives a crash
  of the kernel process and of the database server.
* **Keys** (beyond the interface): ``kernel_keys`` holds each kernel's public key
  (:meth:`register_key`), retired or not (:meth:`retire_key`); ``chio_chain_lock`` refuses a
  writer whose key is retired.
* **Transient errors**: connection refused / lost is :class:`StoreUnavailableError` (retryable,
  nothing decided); the next transaction reconnects.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from chio_kernel._errors import KernelKeyRetiredError, StoreConflictError, StoreUnavailableError
from chio_kernel._secrets import mask_secrets
from chio_kernel._sql_store import (
    APPROVAL_COLS,
    CHECKPOINT_DDL,
    HOLD_COLS,
    MAX_UNITS,
    SqlReader,
    SqlWriter,
    hold_row,
)
from chio_kernel._store import GENESIS_HASH, LEGACY_CHAIN, ApprovalRow, HoldRow, StoredCounts

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CHAIN_LOCK_KEY",
    "KernelKeyRetiredError",
    "LEGACY_CHAIN",
    "PostgresStore",
    "StoreConflictError",
    "StoreUnavailableError",
    "is_postgres_dsn",
    "mask_dsn",
]

#: The schema lock (``pg_advisory_xact_lock`` key, "chio" in ASCII): taken only while a kernel
#: creates or migrates the schema, never by a write transaction.
CHAIN_LOCK_KEY = 0x6368696F
SCHEMA_VERSION = "2"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS capabilities (
    id TEXT PRIMARY KEY, parent_id TEXT, subject TEXT NOT NULL, issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL, rate_max BIGINT, rate_per DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL, token TEXT NOT NULL, ord BIGSERIAL
);
CREATE INDEX IF NOT EXISTS capabilities_parent ON capabilities(parent_id);
CREATE INDEX IF NOT EXISTS capabilities_page ON capabilities(created_at, id);
CREATE TABLE IF NOT EXISTS revocations (
    capability_id TEXT PRIMARY KEY, revoked_at DOUBLE PRECISION NOT NULL, cause TEXT NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS receipts_seq;
CREATE TABLE IF NOT EXISTS receipts (
    seq BIGINT PRIMARY KEY DEFAULT nextval('receipts_seq'), id TEXT NOT NULL UNIQUE, capability_id TEXT NOT NULL,
    verdict TEXT NOT NULL, chain_hash TEXT NOT NULL, body TEXT NOT NULL,
    kernel_id TEXT NOT NULL, chain_seq BIGINT NOT NULL, UNIQUE (kernel_id, chain_seq)
);
CREATE TABLE IF NOT EXISTS receipts_by_capability (
    capability_id TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (capability_id, seq)
);
-- one row per kernel chain: its newest receipt (locked FOR UPDATE by that kernel's writers only)
CREATE TABLE IF NOT EXISTS chain_heads (
    kernel_id TEXT PRIMARY KEY, chain_seq BIGINT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    capability_id TEXT NOT NULL, grant_index BIGINT NOT NULL, invocations BIGINT NOT NULL DEFAULT 0,
    cost_units BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (capability_id, grant_index)
);
CREATE TABLE IF NOT EXISTS rate_events (capability_id TEXT NOT NULL, t DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_capability ON rate_events(capability_id, t);
CREATE TABLE IF NOT EXISTS idempotency (key_hash TEXT PRIMARY KEY, receipt_seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, capability_id TEXT NOT NULL, tool_server TEXT NOT NULL, tool_name TEXT NOT NULL,
    parameter_hash TEXT NOT NULL, call_hash TEXT NOT NULL, subject TEXT NOT NULL, summary TEXT NOT NULL,
    created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, status TEXT NOT NULL, pending_receipt_id TEXT NOT NULL,
    resolved_at BIGINT, approver TEXT, reason TEXT, resolution_receipt_id TEXT, consumed_receipt_id TEXT,
    ord BIGSERIAL
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, created_at);
CREATE INDEX IF NOT EXISTS approvals_page ON approvals(created_at, id);
CREATE INDEX IF NOT EXISTS approvals_status_page ON approvals(status, created_at, id);
CREATE TABLE IF NOT EXISTS approval_wakes (
    approval_id TEXT NOT NULL, wake_json TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, ord BIGSERIAL
);
-- unique (approval_id, wake_json) through md5: a 4 KiB wake is beyond a btree entry's size limit
CREATE UNIQUE INDEX IF NOT EXISTS approval_wakes_unique ON approval_wakes(approval_id, md5(wake_json));
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id TEXT PRIMARY KEY, approval_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL, last_error TEXT, delivered_at DOUBLE PRECISION, UNIQUE (approval_id, url)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(state, next_at);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_hash TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, receipt_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    receipt_id TEXT PRIMARY KEY, capability_id TEXT NOT NULL, policy_hash TEXT NOT NULL, units BIGINT NOT NULL,
    currency TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL, captured_units BIGINT NOT NULL DEFAULT 0, closed_by TEXT, closed_seq BIGINT
);
CREATE INDEX IF NOT EXISTS holds_open ON holds(expires_at) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS holds_page ON holds(state, created_at, receipt_id);
CREATE INDEX IF NOT EXISTS holds_capability_page ON holds(capability_id, created_at, receipt_id);
CREATE TABLE IF NOT EXISTS hold_grants (
    receipt_id TEXT NOT NULL, capability_id TEXT NOT NULL, grant_index BIGINT NOT NULL,
    PRIMARY KEY (receipt_id, capability_id, grant_index)
);
CREATE INDEX IF NOT EXISTS hold_grants_capability ON hold_grants(capability_id, grant_index);
CREATE TABLE IF NOT EXISTS hold_ops (
    receipt_id TEXT NOT NULL, op_id TEXT NOT NULL, fingerprint TEXT NOT NULL, receipt_seq BIGINT NOT NULL,
    PRIMARY KEY (receipt_id, op_id)
);
CREATE TABLE IF NOT EXISTS approval_answers (
    approval_id TEXT NOT NULL, approver TEXT NOT NULL, role TEXT NOT NULL, at BIGINT NOT NULL,
    receipt_id TEXT NOT NULL, ord BIGSERIAL, PRIMARY KEY (approval_id, approver)
);
CREATE TABLE IF NOT EXISTS credentials (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS kernel_keys (
    public_key TEXT PRIMARY KEY, label TEXT NOT NULL, registered_at DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION, retired_reason TEXT
);
-- Every write transaction starts here: this kernel's own key row (FOR SHARE: a retirement waits for
-- the writers of that key, and a writer sees a committed retirement), this kernel's chain head
-- (FOR UPDATE: only the writers of the same key wait on it), and the key-retirement epoch (kernels
-- reload retired keys when it moves). No fleet-wide lock.
CREATE OR REPLACE FUNCTION chio_chain_lock(signer TEXT, OUT epoch BIGINT, OUT head_seq BIGINT, OUT head_hash TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    retired DOUBLE PRECISION;
BEGIN
    epoch := COALESCE((SELECT v::bigint FROM meta WHERE k = 'keys_epoch'), 0);
    head_seq := 0;
    head_hash := '{GENESIS_HASH}';
    IF signer IS NULL THEN
        RETURN;
    END IF;
    SELECT retired_at INTO retired FROM kernel_keys WHERE public_key = signer FOR SHARE;
    IF retired IS NOT NULL THEN
        RAISE EXCEPTION 'kernel key % is retired', signer USING ERRCODE = 'CH001';
    END IF;
    SELECT h.chain_seq, h.hash INTO head_seq, head_hash FROM chain_heads h WHERE h.kernel_id = signer FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO chain_heads(kernel_id, chain_seq, hash) VALUES (signer, 0, '{GENESIS_HASH}') ON CONFLICT DO NOTHING;
        SELECT h.chain_seq, h.hash INTO head_seq, head_hash FROM chain_heads h WHERE h.kernel_id = signer FOR UPDATE;
    END IF;
END $$;
DROP FUNCTION IF EXISTS chio_writer_lock(TEXT);
INSERT INTO meta(k, v) VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING;
"""


#: Schema 1 -> 2: receipts get their chain (``kernel_id``, ``chain_seq``); the one chain of the
#: fleet becomes the chain :data:`LEGACY_CHAIN`, its positions unchanged; ``seq`` (the fleet-wide
#: order) goes on from a sequence; the by-capability index is completed once (it is written with
#: each receipt from now on).
MIGRATE_1_TO_2 = f"""
DROP VIEW IF EXISTS chain_head;
CREATE SEQUENCE IF NOT EXISTS receipts_seq;
SELECT setval('receipts_seq', GREATEST((SELECT MAX(seq) FROM receipts), 1), (SELECT MAX(seq) FROM receipts) IS NOT NULL);
ALTER TABLE receipts ALTER COLUMN seq SET DEFAULT nextval('receipts_seq');
ALTER TABLE receipts ADD COLUMN IF NOT EXISTS kernel_id TEXT, ADD COLUMN IF NOT EXISTS chain_seq BIGINT;
UPDATE receipts SET kernel_id = '{LEGACY_CHAIN}', chain_seq = seq WHERE kernel_id IS NULL;
ALTER TABLE receipts ALTER COLUMN kernel_id SET NOT NULL, ALTER COLUMN chain_seq SET NOT NULL;
ALTER TABLE receipts ADD CONSTRAINT receipts_kernel_id_chain_seq_key UNIQUE (kernel_id, chain_seq);
CREATE TABLE IF NOT EXISTS chain_heads (kernel_id TEXT PRIMARY KEY, chain_seq BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO chain_heads(kernel_id, chain_seq, hash)
    SELECT '{LEGACY_CHAIN}', seq, chain_hash FROM receipts ORDER BY seq DESC LIMIT 1 ON CONFLICT DO NOTHING;
INSERT INTO receipts_by_capability(capability_id, seq) SELECT capability_id, seq FROM receipts ON CONFLICT DO NOTHING;
UPDATE meta SET v = '2' WHERE k = 'schema_version';
"""


def is_postgres_dsn(store: str) -> bool:
    """Is ``store`` a PostgreSQL connection URL (``postgresql://`` or ``postgres://``)?"""
    return store.startswith(("postgresql://", "postgres://"))


def mask_dsn(dsn: str) -> str:
    """``postgresql://user:secret@host/db?password=x`` -> ``postgresql://user:***@host/db?password=***``
    (for messages; :func:`chio_kernel._secrets.mask_secrets`, the one masking rule)."""
    return mask_secrets(dsn)


def _wrap(err: Exception, signer: str | None) -> Exception:
    """A psycopg error as the kernel's errors: retired key, transient (retryable), or as is."""
    import psycopg

    if isinstance(err, psycopg.Error) and err.sqlstate in ("40P01", "40001"):  # deadlock: one side rolled back
        return StoreConflictError(f"a write transaction of the fleet store was rolled back: {err}")
    if isinstance(err, psycopg.Error) and err.sqlstate == "CH001":  # raised by chio_chain_lock
        return KernelKeyRetiredError(
            f"this kernel's signing key {str(signer)} was retired from the fleet store; it signs nothing "
            "more. Give this host a new data directory (a new key) to rejoin the fleet"
        )
    if isinstance(err, psycopg.OperationalError):
        return StoreUnavailableError(f"the PostgreSQL store could not be used: {err}")
    return err


_PG_SQL: dict[str, str] = {}


def _pg(sql: str) -> str:
    """A statement of ``chio_kernel._sql_store`` with PostgreSQL placeholders (``?`` -> ``%s``)."""
    out = _PG_SQL.get(sql)
    if out is None:
        out = _PG_SQL[sql] = sql.replace("?", "%s")
    return out


class _PgReader(SqlReader):
    """:class:`chio_kernel._store.StoreReader` over one psycopg connection (the statements are
    ``chio_kernel._sql_store``'s; the fleet's key reads are PostgreSQL's own)."""

    ORD = "ord"

    def __init__(self, conn: psycopg.Connection[Any], signer: str | None) -> None:
        self._conn = conn
        self._signer = signer

    # --- the dialect ---

    def _execute(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        return self._conn.execute(cast("Any", _pg(sql)), tuple(params))

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._execute(sql, params).fetchone()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._execute(sql, params).fetchall()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _in(self, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return "= ANY(?)", [list(ids)]

    def _json_timestamp_at_least(self) -> str:
        return "(r.body::jsonb ->> 'timestamp')::bigint >= ?"

    def _json_metadata_is(self, key: str, value: str) -> tuple[str, list[Any]]:
        return "(r.body::jsonb -> 'metadata' ->> ?) = ?", [key, value]

    # --- the chains: one per kernel (its signing key), plus the fleet's chain before schema 2 ---

    def chain_head(self) -> tuple[int, str]:
        """This kernel's chain head ``(chain_seq, hash)`` (``(0, GENESIS_HASH)`` before its first receipt)."""
        if self._signer is None:
            return 0, GENESIS_HASH
        row = self._one("SELECT chain_seq, hash FROM chain_heads WHERE kernel_id = ?", (self._signer,))
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def chains(self) -> list[tuple[str, int, str]]:
        """``(kernel_id, head chain_seq, head hash)`` of every chain holding receipts (or a head)."""
        rows = self._all(
            "SELECT k.kernel_id, COALESCE(h.chain_seq, 0), COALESCE(h.hash, ?) FROM "
            "(SELECT kernel_id FROM chain_heads WHERE chain_seq > 0 UNION SELECT DISTINCT kernel_id FROM receipts) k "
            "LEFT JOIN chain_heads h ON h.kernel_id = k.kernel_id ORDER BY k.kernel_id",
            (GENESIS_HASH,),
        )
        return [(str(k), int(n), str(h)) for k, n, h in rows]

    def _chain(self, kernel_id: str) -> tuple[str, str, str, list[Any]]:
        """One kernel's chain: its receipts' ``chain_seq``s, selected by ``kernel_id``."""
        return "chain_seq", "kernel_id", " AND kernel_id = ?", [kernel_id]

    # --- the fleet's keys (PostgreSQL only) ---

    def registered_keys(self) -> list[tuple[str, str, float, float | None, str | None]]:
        """``(public_key, label, registered_at, retired_at, retired_reason)``, oldest first."""
        return [
            (str(r[0]), str(r[1]), float(r[2]), r[3], r[4])
            for r in self._all(
                "SELECT public_key, label, registered_at, retired_at, retired_reason FROM kernel_keys "
                "ORDER BY registered_at, public_key"
            )
        ]

    def first_retired(self, keys: Sequence[str]) -> str | None:
        """One of ``keys`` that is retired, or None."""
        row = self._one(
            "SELECT public_key FROM kernel_keys WHERE retired_at IS NOT NULL AND public_key = ANY(?) LIMIT 1",
            (list(keys),),
        )
        return None if row is None else str(row[0])


class _PgWriter(_PgReader, SqlWriter):
    """:class:`chio_kernel._store.StoreWriter`: the statements of one write transaction.

    It holds this kernel's chain head (locked by ``chio_chain_lock`` at ``BEGIN``) and follows its
    own appends in memory; what kernels share (a capability's counters, a hold, an idempotency key)
    is locked row by row when it is touched (:meth:`lock_capabilities`, :meth:`hold`,
    :meth:`claim_idempotency_key`).
    """

    ROW_LOCKS = True
    # numeric keeps the sum from overflowing BIGINT before LEAST saturates it at 2^63-1
    CHARGE_SUM = "LEAST(usage.cost_units::numeric + excluded.cost_units, 9223372036854775807)::bigint"

    def __init__(self, conn: psycopg.Connection[Any], signer: str | None, begun: Any) -> None:
        super().__init__(conn, signer)
        self._epoch = int(begun[0])
        self._head = (int(begun[1]), str(begun[2]))
        self._locked: set[str] = set()
        self._revoked: dict[tuple[str, ...], str | None] = {}
        self._revoked_ids: set[str] = set()  # of the locked capabilities (read with their lock)
        self._usage: dict[tuple[str, int], tuple[int, int]] = {}  # of the locked capabilities
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []
        self.claims: set[str] = set()

    # Statements whose answer nobody reads (a charge, a rate event, a hold) wait and go in one
    # pipeline with the next statement that answers something (or the COMMIT): one round trip.

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._deferred.append((sql, tuple(params)))

    def _execute(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        if not self._deferred:
            return super()._execute(sql, params)
        deferred, self._deferred = self._deferred, []
        with self._conn.pipeline():
            for q, p in deferred:
                self._conn.execute(cast("Any", _pg(q)), p)
            return super()._execute(sql, params)

    def commit(self) -> None:
        """``COMMIT``, in one pipeline with the deferred statements."""
        self.drop_unused_claims()
        self._execute("COMMIT", ())

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._run(sql, row)

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        return self._one(sql + " RETURNING 1", params) is not None

    @property
    def keys_epoch(self) -> int:
        """Moves whenever a key is retired (read when this transaction began)."""
        return self._epoch

    # --- this kernel's chain, locked for the transaction ---

    def chain_head(self) -> tuple[int, str]:
        return self._head

    def head_and_revoked(self, lineage: Sequence[str]) -> tuple[int, str, str | None]:
        key = tuple(lineage)
        if key not in self._revoked:
            if self._locked.issuperset(key):  # read with their locks
                self._revoked[key] = next((i for i in key if i in self._revoked_ids), None)
            else:
                row = self._one(
                    "SELECT capability_id FROM revocations WHERE capability_id = ANY(?) LIMIT 1", (list(key),)
                )
                self._revoked[key] = None if row is None else str(row[0])
        return self._head[0], self._head[1], self._revoked[key]

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        self._revoked.clear()
        self._revoked_ids.update(r[0] for r in rows)
        super().insert_revocations(rows)

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> int:
        """Append at ``seq`` of this kernel's chain; returns the receipt's fleet-wide ``seq``.

        One statement: the receipt, its by-capability index entry and the chain head row.
        """
        if self._signer is None:
            raise RuntimeError("a PostgresStore opened without signer_key cannot append receipts")
        row = self._one(
            "WITH r AS (INSERT INTO receipts(id, capability_id, verdict, chain_hash, body, kernel_id, chain_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq, capability_id), "
            "x AS (INSERT INTO receipts_by_capability(capability_id, seq) SELECT capability_id, seq FROM r), "
            "h AS (UPDATE chain_heads SET chain_seq = ?, hash = ? WHERE kernel_id = ?) SELECT seq FROM r",
            (receipt_id, capability_id, verdict, chain_hash, body, self._signer, seq, seq, chain_hash, self._signer),
        )
        self._head = (seq, chain_hash)
        return int(row[0])

    # --- row locks on what kernels share ---

    def lock_capabilities(self, ids: Sequence[str]) -> None:
        """Lock these capabilities' rows (their budgets, rate windows) until commit, in id order."""
        todo = sorted(set(ids) - self._locked)
        if not todo:
            return
        # One round trip, two statements (pipelined): the locks, then what they guard (usage
        # counters, revocations) read by a statement that starts once the locks are held, so it sees
        # the commit of whoever held them before (one statement would read them from its start).
        self._run("SELECT id FROM capabilities WHERE id = ANY(?) ORDER BY id FOR NO KEY UPDATE", (todo,))
        rows = self._all(
            "SELECT c.id, u.grant_index, u.invocations, u.cost_units, r.capability_id IS NOT NULL "
            "FROM unnest(?::text[]) c(id) LEFT JOIN usage u ON u.capability_id = c.id "
            "LEFT JOIN revocations r ON r.capability_id = c.id",
            (todo,),
        )
        self._locked.update(todo)
        for cid, index, invocations, cost, revoked in rows:
            if index is not None:
                self._usage[(cid, int(index))] = (int(invocations), int(cost))
            if revoked:
                self._revoked_ids.add(cid)

    # --- the usage counters of locked capabilities, followed in memory ---

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        if capability_id in self._locked:
            return self._usage.get((capability_id, grant_index), (0, 0))
        return super().usage(capability_id, grant_index)

    def charge(self, capability_id: str, grant_index: int, cost_units: int) -> None:
        super().charge(capability_id, grant_index, cost_units)
        if capability_id in self._locked:
            invocations, cost = self._usage.get((capability_id, grant_index), (0, 0))
            self._usage[(capability_id, grant_index)] = (invocations + 1, min(cost + cost_units, MAX_UNITS))

    def adjust_cost(self, capability_id: str, grant_index: int, delta: int) -> None:
        super().adjust_cost(capability_id, grant_index, delta)
        if capability_id in self._locked and (capability_id, grant_index) in self._usage:
            invocations, cost = self._usage[(capability_id, grant_index)]
            self._usage[(capability_id, grant_index)] = (invocations, max(0, min(cost + delta, MAX_UNITS)))

    def hold(self, receipt_id: str) -> HoldRow | None:
        """The hold, its row locked until commit (a settle, release or expiry on another kernel waits)."""
        row = self._one(f"SELECT {HOLD_COLS} FROM holds WHERE receipt_id = ? FOR UPDATE", (receipt_id,))
        return None if row is None else hold_row(row)

    def approval(self, approval_id: str) -> ApprovalRow | None:
        """The approval, its row locked until commit (answering or using it on another kernel waits)."""
        row = self._one(f"SELECT {APPROVAL_COLS} FROM approvals WHERE id = ? FOR UPDATE", (approval_id,))
        return None if row is None else ApprovalRow(*row)

    def claim_idempotency_key(self, key_hash: str) -> None:
        """Take the key's row (a placeholder at seq 0) so a concurrent call under the same key on
        another kernel waits for this transaction, then sees its answer; an unused claim is
        dropped at commit."""
        if self._changed(
            "INSERT INTO idempotency_keys(key_hash, fingerprint, receipt_seq) VALUES (?, '', 0) ON CONFLICT DO NOTHING",
            (key_hash,),
        ):
            self.claims.add(key_hash)

    def remember_idempotency_key(self, key_hash: str, fingerprint: str, seq: int) -> None:
        self._run(
            "INSERT INTO idempotency_keys(key_hash, fingerprint, receipt_seq) VALUES (?, ?, ?) "
            "ON CONFLICT (key_hash) DO UPDATE SET fingerprint = excluded.fingerprint, receipt_seq = excluded.receipt_seq",
            (key_hash, fingerprint, seq),
        )
        self.claims.discard(key_hash)

    def drop_unused_claims(self) -> None:
        """Before commit: forget the claims no answer was remembered under (a deny)."""
        if self.claims:
            self._run("DELETE FROM idempotency_keys WHERE key_hash = ANY(?) AND receipt_seq = 0", (sorted(self.claims),))
            self.claims.clear()

    # --- the fleet's keys (PostgreSQL only) ---

    def retire_key(self, public_key: str, reason: str, at: float) -> bool:
        """Mark a registered key retired (kept if already retired); False if it is not registered."""
        row = self._one("SELECT retired_at FROM kernel_keys WHERE public_key = ?", (public_key,))
        if row is None:
            return False
        if row[0] is None:
            self._run(
                "UPDATE kernel_keys SET retired_at = ?, retired_reason = ? WHERE public_key = ?",
                (at, reason, public_key),
            )
            self._run(
                "INSERT INTO meta(k, v) VALUES ('keys_epoch', '1') "
                "ON CONFLICT (k) DO UPDATE SET v = (meta.v::bigint + 1)::text"
            )
        return True

    def retired_keys(self) -> list[str]:
        """Every retired key."""
        return [str(r[0]) for r in self._all("SELECT public_key FROM kernel_keys WHERE retired_at IS NOT NULL")]


class PostgresStore:
    """A :class:`chio_kernel._store.KernelStore` on a PostgreSQL database shared by a fleet.

    Args:
        dsn: ``postgresql://user[:password]@host[:port]/dbname[?sslmode=...]`` (libpq URL).
        signer_key: the hex public key of the kernel using this store: registered in
            ``kernel_keys`` on open, and every write transaction is refused once it is retired.
            None for a reader (an auditor) that signs nothing.
        label: what ``kernel_keys.label`` records for the key (default ``host:pid``).
        connect_timeout: seconds to wait for the server.
    """

    def __init__(
        self, dsn: str, *, signer_key: str | None = None, label: str | None = None, connect_timeout: int = 30
    ) -> None:
        if not is_postgres_dsn(dsn):
            raise ValueError(f"not a PostgreSQL URL: {mask_dsn(dsn)!r} (postgresql://user@host:5432/dbname)")
        self._dsn = dsn
        self._signer = signer_key
        self._timeout = connect_timeout
        self.description = mask_dsn(dsn)
        self.commits = 0
        self.transient_errors: tuple[type[Exception], ...] = (StoreUnavailableError,)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._inherited: list[Any] = []
        self._closed = False
        self._read_lock = threading.Lock()
        self._read_conn: psycopg.Connection[Any] | None = None
        self._read_pid = os.getpid()
        self._conn = self._connect()
        try:
            with self._conn.transaction():  # several kernels may create (or migrate) the schema at once
                self._conn.execute(cast("Any", f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
                if self._schema_version() == "1":
                    self._conn.execute(cast("Any", MIGRATE_1_TO_2))
                self._conn.execute(cast("Any", SCHEMA))
                for statement in CHECKPOINT_DDL:
                    self._conn.execute(cast("Any", statement))
                if signer_key is not None:
                    self._conn.execute(
                        "INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (signer_key, label or f"{os.uname().nodename}:{os.getpid()}", time.time()),
                    )
        except Exception as err:
            self._conn.close()
            raise _wrap(err, signer_key) from err
        from psycopg import sql

        self._begin = cast("Any", sql.SQL("BEGIN; SELECT * FROM chio_chain_lock({})").format(sql.Literal(signer_key)))
        try:
            self._read_conn = self._connect()  # reads never share the writer's connection
        except BaseException:
            self._conn.close()
            raise

    def _schema_version(self) -> str | None:
        """The stored schema version (None: a new database)."""
        if self._conn.execute("SELECT to_regclass('meta')").fetchone() in (None, (None,)):
            return None
        row = self._conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        return None if row is None else str(row[0])

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._timeout, application_name="chio-kernel"
            )
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(
                mask_secrets(f"cannot connect to the PostgreSQL store {self.description}: {err}")
            ) from err

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection (with ``self._lock`` held): reopened after ``fork`` or a lost connection."""
        if self._closed:
            raise RuntimeError(f"the PostgreSQL store {self.description} is closed")
        if os.getpid() != self._pid:
            # never close the parent's connection from the child (it would end the parent's session)
            self._pid = os.getpid()
            self._inherited.append(self._conn)
            self._conn = self._connect()
        elif self._conn.broken or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _lock_for_pid(self) -> threading.RLock:
        if os.getpid() != self._pid:  # a lock held by a parent thread at fork time would never be released
            self._lock = threading.RLock()
        return self._lock

    @contextmanager
    def write(self) -> Iterator[_PgWriter]:
        """One write transaction on this kernel's chain: commit on exit, rollback on error.

        ``BEGIN`` and ``chio_chain_lock`` go in one round trip; no fleet-wide lock is taken.
        """
        with self._lock_for_pid():
            conn = self._connection()
            for attempt in (1, 2):
                try:
                    cur = conn.execute(self._begin)  # BEGIN; SELECT ...: the second result is the lock's
                    cur.nextset()
                    begun = cur.fetchone()
                    break
                except Exception as err:
                    self._rollback(conn)
                    if attempt == 1 and conn.broken:  # lost since last used (nothing was sent): reopen once
                        conn = self._connection()
                        continue
                    raise _wrap(err, self._signer) from err
            writer = _PgWriter(conn, self._signer, begun)
            try:
                yield writer
            except BaseException:
                self._rollback(conn)
                raise
            try:
                writer.commit()
            except Exception as err:
                self._rollback(conn)
                raise _wrap(err, self._signer) from err
            self.commits += 1

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            return  # the server rolls back a lost session itself
        try:
            conn.execute("ROLLBACK")
        except Exception:  # pragma: no cover - the connection went away meanwhile
            pass

    def _reader(self) -> psycopg.Connection[Any]:
        """The reader connection (with ``self._read_lock`` held): never the writer's, so a read
        waits neither for a writer's locks (``chio_chain_lock``, row locks) nor for this process's writer."""
        if self._closed:
            raise RuntimeError(f"the PostgreSQL store {self.description} is closed")
        if self._read_pid != os.getpid() or self._read_conn is None:
            if self._read_conn is not None:  # after fork: the parent's session, never closed here
                self._inherited.append(self._read_conn)
            self._read_pid, self._read_conn = os.getpid(), self._connect()
        elif self._read_conn.broken or self._read_conn.closed:
            self._read_conn = self._connect()
        return self._read_conn

    @contextmanager
    def read(self) -> Iterator[_PgReader]:
        """Short reads of committed state (each statement sees the latest commits), on the reader
        connection: no writer lock, and no wait for this process's write transaction."""
        if self._read_pid != os.getpid():  # a lock held by a parent thread at fork time would never be released
            self._read_lock = threading.Lock()
        with self._read_lock:
            yield _PgReader(self._reader(), self._signer)

    @contextmanager
    def snapshot(self) -> Iterator[_PgReader]:
        """One REPEATABLE READ, READ ONLY snapshot on a private connection: blocks no writer."""
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _PgReader(conn, self._signer)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def catch_up_capability_index(self) -> None:
        """Nothing to do: every receipt is indexed by capability in the statement that appends it
        (the receipts of a schema-1 store were indexed by the migration)."""

    def stored_counts(self) -> StoredCounts:
        """What the store holds. (A fleet store holds other kernels' work too: the kernel does not
        refuse a new key over it: each kernel registers its own key.)"""
        with self.read() as r:
            caps = int(r._one("SELECT COUNT(*) FROM capabilities")[0])
            receipts = r.receipt_count()
            row = r._one("SELECT body FROM receipts ORDER BY seq DESC LIMIT 1")
        newest = json.loads(row[0]).get("kernel_key") if row is not None else None
        return StoredCounts(caps, receipts, newest)

    def retire_key(self, public_key: str, reason: str) -> bool:
        """Retire a registered key (see :class:`_PgWriter.retire_key`); False if not registered."""
        with self.write() as w:
            return w.retire_key(public_key, reason, time.time())

    def close(self) -> None:
        """Close the connection (the store cannot be used afterwards)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if os.getpid() == self._pid:
                    self._conn.close()
                if self._read_conn is not None and os.getpid() == self._read_pid:
                    self._read_conn.close()
