"""``PostgresStore``: the :class:`chio_kernel._store.KernelStore` of a fleet, on PostgreSQL (psycopg 3).

Every kernel of a fleet points at one database: one receipt chain, one set of budgets, one key
registry. The interface's guarantees (``chio_kernel._store``) hold across processes AND hosts:

* **Serialised writers = the chain tip.** :meth:`PostgresStore.write` runs ``BEGIN`` and then
  ``chio_writer_lock(key)``, which takes ONE transaction-scoped advisory lock
  (``pg_advisory_xact_lock``) held until COMMIT/ROLLBACK. So the chain head read, the budget /
  rate / idempotency reads, the charges and the receipt insert of a transaction see no other writer
  in between, on any host; READ COMMITTED statements taken after the lock see every earlier
  writer's commit (a transaction's commit is visible before its locks are released).
* **A killed writer leaves nothing.** Its connection drops, PostgreSQL rolls its transaction back
  and releases the lock. ``receipts.seq`` is the primary key and the kernel appends at head + 1,
  so even a writer that skipped the lock could not fork the chain: its insert would collide.
* **Durability.** ``COMMIT`` returns once the commit record is flushed by the server
  (``synchronous_commit=on``, PostgreSQL's default): a receipt handed to a caller survives a crash
  of the kernel process and of the database server.
* **Keys** (beyond the interface): ``kernel_keys`` holds each kernel's public key
  (:meth:`register_key`), retired or not (:meth:`retire_key`); ``chio_writer_lock`` refuses a
  writer whose key is retired, inside the lock.
* **Transient errors**: connection refused / lost is :class:`StoreUnavailableError` (retryable,
  nothing decided); the next transaction reconnects.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from chio_kernel._errors import ChioKernelError
from chio_kernel._store import GENESIS_HASH, ApprovalRow, CapabilityRow, HoldRow, ReceiptQuery, StoredCounts

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CHAIN_LOCK_KEY",
    "KernelKeyRetiredError",
    "PostgresStore",
    "StoreUnavailableError",
    "is_postgres_dsn",
    "mask_dsn",
]

_APPROVAL_COLS = (
    "id, capability_id, tool_server, tool_name, parameter_hash, call_hash, subject, summary, created_at, "
    "expires_at, status, pending_receipt_id, resolved_at, approver, reason, resolution_receipt_id, consumed_receipt_id"
)

#: The fleet's writer lock (``pg_advisory_xact_lock`` key): "chio" in ASCII.
CHAIN_LOCK_KEY = 0x6368696F
_INDEX_BATCH = 5_000
_HOLD_COLS = (
    "receipt_id, capability_id, policy_hash, units, currency, created_at, expires_at, state, captured_units, "
    "closed_by, closed_seq"
)


def _hold_row(r: Any) -> HoldRow:
    return HoldRow(
        str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), float(r[5]), float(r[6]), str(r[7]), int(r[8]),
        None if r[9] is None else str(r[9]), None if r[10] is None else int(r[10]),
    )

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS capabilities (
    id TEXT PRIMARY KEY, parent_id TEXT, subject TEXT NOT NULL, issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL, rate_max BIGINT, rate_per DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL, token TEXT NOT NULL, ord BIGSERIAL
);
CREATE INDEX IF NOT EXISTS capabilities_parent ON capabilities(parent_id);
CREATE TABLE IF NOT EXISTS revocations (
    capability_id TEXT PRIMARY KEY, revoked_at DOUBLE PRECISION NOT NULL, cause TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    seq BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, capability_id TEXT NOT NULL, verdict TEXT NOT NULL,
    chain_hash TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts_by_capability (
    capability_id TEXT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (capability_id, seq)
);
CREATE OR REPLACE VIEW chain_head(k, seq, hash) AS
    SELECT 0, COALESCE((SELECT MAX(seq) FROM receipts), 0),
           COALESCE((SELECT chain_hash FROM receipts ORDER BY seq DESC LIMIT 1), '{GENESIS_HASH}');
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
CREATE TABLE IF NOT EXISTS approval_wakes (
    approval_id TEXT NOT NULL, wake_json TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, ord BIGSERIAL
);
-- unique (approval_id, wake_json) through md5: a 4 KiB wake is beyond a btree entry's size limit
CREATE UNIQUE INDEX IF NOT EXISTS approval_wakes_unique ON approval_wakes(approval_id, md5(wake_json));

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_hash TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, receipt_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    receipt_id TEXT PRIMARY KEY, capability_id TEXT NOT NULL, policy_hash TEXT NOT NULL, units BIGINT NOT NULL,
    currency TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL, captured_units BIGINT NOT NULL DEFAULT 0, closed_by TEXT, closed_seq BIGINT
);
CREATE INDEX IF NOT EXISTS holds_open ON holds(expires_at) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS hold_grants (
    receipt_id TEXT NOT NULL, capability_id TEXT NOT NULL, grant_index BIGINT NOT NULL,
    PRIMARY KEY (receipt_id, capability_id, grant_index)
);
CREATE INDEX IF NOT EXISTS hold_grants_capability ON hold_grants(capability_id, grant_index);
CREATE TABLE IF NOT EXISTS hold_ops (
    receipt_id TEXT NOT NULL, op_id TEXT NOT NULL, fingerprint TEXT NOT NULL, receipt_seq BIGINT NOT NULL,
    PRIMARY KEY (receipt_id, op_id)
);
CREATE TABLE IF NOT EXISTS kernel_keys (
    public_key TEXT PRIMARY KEY, label TEXT NOT NULL, registered_at DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION, retired_reason TEXT
);
-- Every write transaction starts here: the fleet's writer lock, the writer's own key checked
-- inside it, and the key-retirement epoch returned (kernels reload retired keys when it moves).
CREATE OR REPLACE FUNCTION chio_writer_lock(signer TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
    IF EXISTS (SELECT 1 FROM kernel_keys WHERE public_key = signer AND retired_at IS NOT NULL) THEN
        RAISE EXCEPTION 'kernel key % is retired', signer USING ERRCODE = 'CH001';
    END IF;
    RETURN COALESCE((SELECT v::bigint FROM meta WHERE k = 'keys_epoch'), 0);
END $$;
INSERT INTO meta(k, v) VALUES ('schema_version', '1') ON CONFLICT DO NOTHING;
"""


class StoreUnavailableError(sqlite3.OperationalError):
    """The PostgreSQL server could not be used (connection refused or lost); nothing was decided.

    A subclass of ``sqlite3.OperationalError`` on purpose: every caller that already treats a busy
    or broken SQLite store as "retry later" (the sidecar answers 503) treats this the same way.
    """


class KernelKeyRetiredError(ChioKernelError, RuntimeError):
    """This kernel's signing key was retired from the fleet store: it may not sign anything more."""


def is_postgres_dsn(store: str) -> bool:
    """Is ``store`` a PostgreSQL connection URL (``postgresql://`` or ``postgres://``)?"""
    return store.startswith(("postgresql://", "postgres://"))


def mask_dsn(dsn: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (for messages)."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        return "postgresql://***"
    if password is None:
        return dsn
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + password + "@", ":***@", 1)))


def _wrap(err: Exception, signer: str | None) -> Exception:
    """A psycopg error as the kernel's errors: retired key, transient (retryable), or as is."""
    import psycopg

    if isinstance(err, psycopg.Error) and err.sqlstate == "CH001":  # raised by chio_writer_lock
        return KernelKeyRetiredError(
            f"this kernel's signing key {str(signer)[:16]}… was retired from the fleet store; it signs nothing "
            "more. Give this host a new data directory (a new key) to rejoin the fleet"
        )
    if isinstance(err, psycopg.OperationalError):
        return StoreUnavailableError(f"the PostgreSQL store could not be used: {err}")
    return err


class _PgReader:
    """:class:`chio_kernel._store.StoreReader` over one psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any], signer: str | None) -> None:
        self._conn = conn
        self._signer = signer

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._conn.execute(cast("Any", sql), tuple(params)).fetchone()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(cast("Any", sql), tuple(params)).fetchall()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self._conn.execute(cast("Any", sql), tuple(params))
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def chain_head(self) -> tuple[int, str]:
        row = self._one("SELECT seq, hash FROM chain_head WHERE k = 0")
        return int(row[0]), str(row[1])

    def capability(self, capability_id: str) -> CapabilityRow | None:
        row = self._one(
            "SELECT id, token, parent_id, subject, issued_at, expires_at, rate_max, rate_per "
            "FROM capabilities WHERE id = %s",
            (capability_id,),
        )
        return None if row is None else CapabilityRow(*row)

    def capability_tokens(self) -> list[str]:
        return [r[0] for r in self._all("SELECT token FROM capabilities ORDER BY created_at, ord")]

    def revocation(self, capability_id: str) -> tuple[float, str] | None:
        row = self._one("SELECT revoked_at, cause FROM revocations WHERE capability_id = %s", (capability_id,))
        return None if row is None else (float(row[0]), str(row[1]))

    def first_revoked(self, ids: Sequence[str]) -> str | None:
        row = self._one("SELECT capability_id FROM revocations WHERE capability_id = ANY(%s) LIMIT 1", (list(ids),))
        return None if row is None else str(row[0])

    def usage_of(self, capability_id: str) -> list[tuple[int, int, int]]:
        rows = self._all(
            "SELECT grant_index, invocations, cost_units FROM usage WHERE capability_id = %s ORDER BY grant_index",
            (capability_id,),
        )
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def receipt_body(self, receipt_id: str) -> str | None:
        row = self._one("SELECT body FROM receipts WHERE id = %s", (receipt_id,))
        return None if row is None else str(row[0])

    def receipts_after(
        self, after_seq: int, limit: int | None, capability_id: str | None = None
    ) -> list[tuple[int, str]]:
        params: list[Any] = [after_seq]
        if capability_id is None:
            sql = "SELECT seq, body FROM receipts WHERE seq > %s ORDER BY seq"
        else:
            sql = (
                "SELECT r.seq, r.body FROM receipts_by_capability x JOIN receipts r ON r.seq = x.seq "
                "WHERE x.seq > %s AND x.capability_id = %s ORDER BY x.seq"
            )
            params.append(capability_id)
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return [(int(s), str(b)) for s, b in self._all(sql, params)]

    def receipt_count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM receipts")[0])

    def query_receipts(self, query: ReceiptQuery) -> list[tuple[int, str]]:
        params: list[Any] = [query.after_seq]
        if query.capability_id is None or not query.capability_index:
            sql, order = "SELECT r.seq, r.body FROM receipts r WHERE r.seq > %s", "r.seq"
            if query.capability_id is not None:
                sql += " AND r.capability_id = %s"
                params.append(query.capability_id)
        else:  # the by-capability index, walked in either direction
            sql, order = (
                "SELECT r.seq, r.body FROM receipts_by_capability x JOIN receipts r ON r.seq = x.seq "
                "WHERE x.seq > %s AND x.capability_id = %s"
            ), "x.seq"
            params.append(query.capability_id)
        if query.verdict is not None:
            sql += " AND r.verdict = %s"
            params.append(query.verdict)
        if query.since is not None:
            sql += " AND (r.body::jsonb ->> 'timestamp')::bigint >= %s"
            params.append(query.since)
        for key, value in query.metadata:
            sql += " AND (r.body::jsonb -> 'metadata' ->> %s) = %s"
            params += [key, value]
        sql += f" ORDER BY {order} DESC" if query.newest_first else f" ORDER BY {order}"
        if query.limit is not None:
            sql += " LIMIT %s"
            params.append(query.limit)
        return [(int(s), str(b)) for s, b in self._all(sql, params)]

    def approval(self, approval_id: str) -> ApprovalRow | None:
        row = self._one(f"SELECT {_APPROVAL_COLS} FROM approvals WHERE id = %s", (approval_id,))
        return None if row is None else ApprovalRow(*row)

    def approvals(self, status: str | None, limit: int | None) -> list[ApprovalRow]:
        sql = f"SELECT {_APPROVAL_COLS} FROM approvals"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = %s"
            params.append(status)
        sql += " ORDER BY created_at, ord"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return [ApprovalRow(*r) for r in self._all(sql, params)]

    def approval_wakes(self, approval_id: str) -> list[str]:
        rows = self._all(
            "SELECT wake_json FROM approval_wakes WHERE approval_id = %s ORDER BY created_at, ord", (approval_id,)
        )
        return [str(r[0]) for r in rows]

    def hold(self, receipt_id: str) -> HoldRow | None:
        row = self._one(f"SELECT {_HOLD_COLS} FROM holds WHERE receipt_id = %s", (receipt_id,))
        return None if row is None else _hold_row(row)

    def hold_grants(self, receipt_id: str) -> list[tuple[str, int]]:
        rows = self._all("SELECT capability_id, grant_index FROM hold_grants WHERE receipt_id = %s", (receipt_id,))
        return [(str(r[0]), int(r[1])) for r in rows]

    def held_by_grant(self, capability_id: str) -> list[tuple[int, int, int]]:
        rows = self._all(
            "SELECT g.grant_index, SUM(h.units), COUNT(*) FROM hold_grants g JOIN holds h "
            "ON h.receipt_id = g.receipt_id WHERE g.capability_id = %s AND h.state = 'open' "
            "GROUP BY g.grant_index ORDER BY g.grant_index",
            (capability_id,),
        )
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

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
            "SELECT public_key FROM kernel_keys WHERE retired_at IS NOT NULL AND public_key = ANY(%s) LIMIT 1",
            (list(keys),),
        )
        return None if row is None else str(row[0])


class _PgWriter(_PgReader):
    """:class:`chio_kernel._store.StoreWriter`: the statements of one write transaction."""

    def __init__(self, conn: psycopg.Connection[Any], signer: str | None, lock: psycopg.Cursor[Any]) -> None:
        super().__init__(conn, signer)
        self._lock_cursor = lock
        self._epoch: int | None = None

    @property
    def keys_epoch(self) -> int:
        """Moves whenever a key is retired (read under the writer lock, so exact for this
        transaction)."""
        if self._epoch is None:
            row = self._one_of(self._lock_cursor)
            self._epoch = int(row[0]) if row else 0
        return self._epoch

    def _one_of(self, cur: psycopg.Cursor[Any]) -> Any:
        try:
            return cur.fetchone()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def head_and_revoked(self, lineage: Sequence[str]) -> tuple[int, str, str | None]:
        row = self._one(
            "SELECT seq, hash, (SELECT capability_id FROM revocations WHERE capability_id = ANY(%s) LIMIT 1) "
            "FROM chain_head WHERE k = 0",
            (list(lineage),),
        )
        return int(row[0]), str(row[1]), row[2]

    def insert_capability(self, row: CapabilityRow, created_at: float) -> None:
        self._run(
            "INSERT INTO capabilities(id, parent_id, subject, issued_at, expires_at, rate_max, rate_per, "
            "created_at, token) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (row.id, row.parent_id, row.subject, row.issued_at, row.expires_at, row.rate_max, row.rate_per,
             created_at, row.token),
        )

    def capability_subtree(self, capability_id: str) -> list[str]:
        rows = self._all(
            "WITH RECURSIVE sub(id, depth) AS (SELECT CAST(%s AS TEXT), 0 UNION "
            "SELECT c.id, sub.depth + 1 FROM capabilities c JOIN sub ON c.parent_id = sub.id) "
            "SELECT id FROM sub ORDER BY depth, id",
            (capability_id,),
        )
        return [str(r[0]) for r in rows]

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        for row in rows:
            self._run(
                "INSERT INTO revocations(capability_id, revoked_at, cause) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                row,
            )

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        row = self._one(
            "SELECT invocations, cost_units FROM usage WHERE capability_id = %s AND grant_index = %s",
            (capability_id, grant_index),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def charge(self, capability_id: str, grant_index: int, cost_units: int) -> None:
        # numeric keeps the sum from overflowing BIGINT before LEAST saturates it at 2^63-1
        self._run(
            "INSERT INTO usage(capability_id, grant_index, invocations, cost_units) VALUES (%s, %s, 1, %s) "
            "ON CONFLICT (capability_id, grant_index) DO UPDATE SET invocations = usage.invocations + 1, "
            "cost_units = LEAST(usage.cost_units::numeric + excluded.cost_units, 9223372036854775807)::bigint",
            (capability_id, grant_index, cost_units),
        )

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        self._run("DELETE FROM rate_events WHERE capability_id = %s AND t <= %s", (capability_id, now - per_seconds))
        row = self._one("SELECT COUNT(*), MIN(t) FROM rate_events WHERE capability_id = %s", (capability_id,))
        return int(row[0]), (None if row[1] is None else float(row[1]))

    def record_rate_event(self, capability_id: str, t: float) -> None:
        self._run("INSERT INTO rate_events(capability_id, t) VALUES (%s, %s)", (capability_id, t))

    def idempotent_receipt(self, key_hash: str) -> str | None:
        row = self._one(
            "SELECT r.body FROM idempotency i JOIN receipts r ON r.seq = i.receipt_seq WHERE i.key_hash = %s",
            (key_hash,),
        )
        return None if row is None else str(row[0])

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> None:
        self._run(
            "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (%s, %s, %s, %s, %s, %s)",
            (seq, receipt_id, capability_id, verdict, chain_hash, body),
        )

    def remember_idempotency(self, key_hash: str, seq: int) -> None:
        self._run("INSERT INTO idempotency(key_hash, receipt_seq) VALUES (%s, %s)", (key_hash, seq))

    def insert_approval(self, row: ApprovalRow) -> None:
        self._run(
            f"INSERT INTO approvals({_APPROVAL_COLS}) VALUES ({', '.join(['%s'] * 17)})",
            (row.id, row.capability_id, row.tool_server, row.tool_name, row.parameter_hash, row.call_hash,
             row.subject, row.summary, row.created_at, row.expires_at, row.status, row.pending_receipt_id,
             row.resolved_at, row.approver, row.reason, row.resolution_receipt_id, row.consumed_receipt_id),
        )

    def resolve_approval(
        self, approval_id: str, status: str, resolved_at: int, approver: str, reason: str, receipt_id: str
    ) -> bool:
        row = self._one(
            "UPDATE approvals SET status = %s, resolved_at = %s, approver = %s, reason = %s, "
            "resolution_receipt_id = %s WHERE id = %s AND status = 'pending' RETURNING id",
            (status, resolved_at, approver, reason, receipt_id, approval_id),
        )
        return row is not None

    def consume_approval(self, approval_id: str, receipt_id: str) -> bool:
        row = self._one(
            "UPDATE approvals SET consumed_receipt_id = %s WHERE id = %s AND status = 'approved' "
            "AND consumed_receipt_id IS NULL RETURNING id",
            (receipt_id, approval_id),
        )
        return row is not None

    def add_approval_wake(self, approval_id: str, wake_json: str, created_at: float) -> bool:
        row = self._one(
            "INSERT INTO approval_wakes(approval_id, wake_json, created_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING approval_id",
            (approval_id, wake_json, created_at),
        )
        return row is not None

    # --- idempotency keys and budget holds (chio_kernel._holds) ---

    def idempotency_key(self, key_hash: str) -> tuple[str, str] | None:
        row = self._one(
            "SELECT k.fingerprint, r.body FROM idempotency_keys k JOIN receipts r ON r.seq = k.receipt_seq "
            "WHERE k.key_hash = %s",
            (key_hash,),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def remember_idempotency_key(self, key_hash: str, fingerprint: str, seq: int) -> None:
        self._run(
            "INSERT INTO idempotency_keys(key_hash, fingerprint, receipt_seq) VALUES (%s, %s, %s)",
            (key_hash, fingerprint, seq),
        )

    def insert_hold(self, row: HoldRow, grants: Sequence[tuple[str, int]]) -> None:
        self._run(
            f"INSERT INTO holds({_HOLD_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (row.receipt_id, row.capability_id, row.policy_hash, row.units, row.currency, row.created_at,
             row.expires_at, row.state, row.captured_units, row.closed_by, row.closed_seq),
        )
        for cid, index in grants:
            self._run(
                "INSERT INTO hold_grants(receipt_id, capability_id, grant_index) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (row.receipt_id, cid, index),
            )

    def due_holds(self, now: float, limit: int) -> list[HoldRow]:
        rows = self._all(
            f"SELECT {_HOLD_COLS} FROM holds WHERE state = 'open' AND expires_at <= %s "
            "ORDER BY expires_at, receipt_id LIMIT %s",
            (now, limit),
        )
        return [_hold_row(r) for r in rows]

    def close_hold(self, receipt_id: str, state: str, captured_units: int, closed_by: str, closed_seq: int) -> None:
        self._run(
            "UPDATE holds SET state = %s, captured_units = %s, closed_by = %s, closed_seq = %s WHERE receipt_id = %s",
            (state, captured_units, closed_by, closed_seq, receipt_id),
        )

    def adjust_cost(self, capability_id: str, grant_index: int, delta: int) -> None:
        # numeric: no BIGINT overflow before the clamp to [0, 2^63-1]
        self._run(
            "UPDATE usage SET cost_units = GREATEST(0, LEAST(cost_units::numeric + %s, 9223372036854775807))::bigint "
            "WHERE capability_id = %s AND grant_index = %s",
            (delta, capability_id, grant_index),
        )

    def hold_op(self, receipt_id: str, op_id: str) -> tuple[str, str] | None:
        row = self._one(
            "SELECT o.fingerprint, r.body FROM hold_ops o JOIN receipts r ON r.seq = o.receipt_seq "
            "WHERE o.receipt_id = %s AND o.op_id = %s",
            (receipt_id, op_id),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def remember_hold_op(self, receipt_id: str, op_id: str, fingerprint: str, seq: int) -> None:
        self._run(
            "INSERT INTO hold_ops(receipt_id, op_id, fingerprint, receipt_seq) VALUES (%s, %s, %s, %s)",
            (receipt_id, op_id, fingerprint, seq),
        )

    # --- the fleet's keys (PostgreSQL only) ---

    def retire_key(self, public_key: str, reason: str, at: float) -> bool:
        """Mark a registered key retired (kept if already retired); False if it is not registered."""
        row = self._one("SELECT retired_at FROM kernel_keys WHERE public_key = %s", (public_key,))
        if row is None:
            return False
        if row[0] is None:
            self._run(
                "UPDATE kernel_keys SET retired_at = %s, retired_reason = %s WHERE public_key = %s",
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
        self._conn = self._connect()
        try:
            with self._conn.transaction():  # several kernels may create the schema at once
                self._conn.execute(cast("Any", f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
                self._conn.execute(cast("Any", SCHEMA))
                if signer_key is not None:
                    self._conn.execute(
                        "INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (signer_key, label or f"{os.uname().nodename}:{os.getpid()}", time.time()),
                    )
        except Exception as err:
            self._conn.close()
            raise _wrap(err, signer_key) from err

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._timeout, application_name="chio-kernel"
            )
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(f"cannot connect to the PostgreSQL store {self.description}: {err}") from err

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
        """One write transaction holding the fleet's writer lock: commit on exit, rollback on error."""
        with self._lock_for_pid():
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                lock = conn.execute("SELECT chio_writer_lock(%s)", (self._signer,))
            except Exception as err:
                self._rollback(conn)
                raise _wrap(err, self._signer) from err
            try:
                yield _PgWriter(conn, self._signer, lock)
            except BaseException:
                self._rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
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

    @contextmanager
    def read(self) -> Iterator[_PgReader]:
        """Short reads of committed state (each statement sees the latest commits)."""
        with self._lock_for_pid():
            yield _PgReader(self._connection(), self._signer)

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
        """Index receipts by capability up to the chain head, ``_INDEX_BATCH`` per transaction."""
        while True:
            with self.write() as w:
                row = w._one("SELECT v FROM meta WHERE k = 'indexed_by_capability'")
                done = int(row[0]) if row else 0
                head = w.chain_head()[0]
                if head <= done:
                    return
                upto = min(head, done + _INDEX_BATCH)
                w._run(
                    "INSERT INTO receipts_by_capability(capability_id, seq) SELECT capability_id, seq FROM receipts "
                    "WHERE seq > %s AND seq <= %s ON CONFLICT DO NOTHING",
                    (done, upto),
                )
                w._run(
                    "INSERT INTO meta(k, v) VALUES ('indexed_by_capability', %s) "
                    "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    (str(upto),),
                )

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
