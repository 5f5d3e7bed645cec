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
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from chio_kernel._errors import KernelKeyRetiredError, StoreUnavailableError
from chio_kernel._secrets import mask_secrets
from chio_kernel._sql_store import SqlReader, SqlWriter
from chio_kernel._store import GENESIS_HASH, StoredCounts

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

#: The fleet's writer lock (``pg_advisory_xact_lock`` key): "chio" in ASCII.
CHAIN_LOCK_KEY = 0x6368696F
_INDEX_BATCH = 5_000

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

    if isinstance(err, psycopg.Error) and err.sqlstate == "CH001":  # raised by chio_writer_lock
        return KernelKeyRetiredError(
            f"this kernel's signing key {str(signer)[:16]}… was retired from the fleet store; it signs nothing "
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

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._conn.execute(cast("Any", _pg(sql)), tuple(params)).fetchone()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._conn.execute(cast("Any", _pg(sql)), tuple(params)).fetchall()
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _in(self, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return "= ANY(?)", [list(ids)]

    def _json_timestamp_at_least(self) -> str:
        return "(r.body::jsonb ->> 'timestamp')::bigint >= ?"

    def _json_metadata_is(self, key: str, value: str) -> tuple[str, list[Any]]:
        return "(r.body::jsonb -> 'metadata' ->> ?) = ?", [key, value]

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
    """:class:`chio_kernel._store.StoreWriter`: the statements of one write transaction."""

    # numeric keeps the sum from overflowing BIGINT before LEAST saturates it at 2^63-1
    CHARGE_SUM = "LEAST(usage.cost_units::numeric + excluded.cost_units, 9223372036854775807)::bigint"

    def __init__(self, conn: psycopg.Connection[Any], signer: str | None, lock: psycopg.Cursor[Any]) -> None:
        super().__init__(conn, signer)
        self._lock_cursor = lock
        self._epoch: int | None = None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self._conn.execute(cast("Any", _pg(sql)), tuple(params))
        except Exception as err:
            raise _wrap(err, self._signer) from err

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            self._run(sql, row)

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        return self._one(sql + " RETURNING 1", params) is not None

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
                if w.index_capability_batch(_INDEX_BATCH):
                    return

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
