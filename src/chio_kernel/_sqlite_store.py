"""The kernel's SQLite store (the default :class:`~chio_kernel._store.KernelStore`): capabilities, revocations, usage counters, rate events, idempotency keys
and the hash-chained receipt log.

One file, ``<data_dir>/kernel.db``, in WAL mode with ``synchronous=NORMAL``: a transaction is in
the WAL file (the operating system's page cache) when ``COMMIT`` returns, so a receipt handed to a
caller survives ``kill -9`` of the kernel process; only an operating-system crash or power loss can
drop the last few commits (never corrupt the database). ``Kernel(fsync=True)`` selects
``synchronous=FULL`` (an fsync per commit) for that case too.

Every write that decides something runs in one ``BEGIN IMMEDIATE`` transaction (the database write
lock), so several processes sharing a data directory see exact budgets. Every lookup on the
evaluation path is by primary key or index, so the cost of an evaluation does not grow with the
number of stored receipts. Receipts are not indexed by capability on insert (that would write a
third page per evaluation): ``receipts_by_capability`` is caught up from the log when a listing by
capability asks for it, so audits stay indexed and evaluations stay lean. The chain head (the newest receipt's seq and chain hash) is the one-row
view ``chain_head``, derived from the last row of ``receipts`` by its primary key (``O(log n)``,
and no extra page written per receipt); it is read inside the write transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any
from contextlib import contextmanager
from pathlib import Path

from chio_kernel._sql_store import CHECKPOINT_DDL, SqlWriter
from chio_kernel._store import GENESIS_HASH, StoredCounts

__all__ = ["DB_FILE", "GENESIS_HASH", "SCHEMA_VERSION", "SQLiteStore", "open_store"]

SCHEMA_VERSION = "1"
DB_FILE = "kernel.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS capabilities (
    id          TEXT PRIMARY KEY,
    parent_id   TEXT,
    subject     TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    rate_max    INTEGER,
    rate_per    REAL,
    created_at  REAL NOT NULL,
    token       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS capabilities_parent ON capabilities(parent_id);
CREATE INDEX IF NOT EXISTS capabilities_page ON capabilities(created_at, id);
CREATE TABLE IF NOT EXISTS revocations (
    capability_id TEXT PRIMARY KEY,
    revoked_at    REAL NOT NULL,
    cause         TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    capability_id TEXT NOT NULL,
    verdict       TEXT NOT NULL,
    chain_hash    TEXT NOT NULL,
    body          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts_by_capability (
    capability_id TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (capability_id, seq)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS chain_head(k, seq, hash) AS
    SELECT 0,
           COALESCE((SELECT MAX(seq) FROM receipts), 0),
           COALESCE((SELECT chain_hash FROM receipts ORDER BY seq DESC LIMIT 1), '{genesis}');
CREATE TRIGGER IF NOT EXISTS chain_head_update INSTEAD OF UPDATE ON chain_head
BEGIN
    SELECT RAISE(IGNORE);
END;
CREATE TABLE IF NOT EXISTS usage (
    capability_id TEXT NOT NULL,
    grant_index   INTEGER NOT NULL,
    invocations   INTEGER NOT NULL DEFAULT 0,
    cost_units    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (capability_id, grant_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_events (
    capability_id TEXT NOT NULL,
    t             REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_events_capability ON rate_events(capability_id, t);
CREATE TABLE IF NOT EXISTS idempotency (
    key_hash    TEXT PRIMARY KEY,
    receipt_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (
    id                    TEXT PRIMARY KEY,
    capability_id         TEXT NOT NULL,
    tool_server           TEXT NOT NULL,
    tool_name             TEXT NOT NULL,
    parameter_hash        TEXT NOT NULL,
    call_hash             TEXT NOT NULL,
    subject               TEXT NOT NULL,
    summary               TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL,
    status                TEXT NOT NULL,
    pending_receipt_id    TEXT NOT NULL,
    resolved_at           INTEGER,
    approver              TEXT,
    reason                TEXT,
    resolution_receipt_id TEXT,
    consumed_receipt_id   TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, created_at);
CREATE INDEX IF NOT EXISTS approvals_page ON approvals(created_at, id);
CREATE INDEX IF NOT EXISTS approvals_status_page ON approvals(status, created_at, id);
CREATE TABLE IF NOT EXISTS approval_wakes (
    approval_id TEXT NOT NULL,
    wake_json   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (approval_id, wake_json)
);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           TEXT PRIMARY KEY,
    approval_id  TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    last_error   TEXT,
    delivered_at REAL,
    UNIQUE (approval_id, url)
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(state, next_at);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_hash    TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    receipt_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    receipt_id     TEXT PRIMARY KEY,
    capability_id  TEXT NOT NULL,
    policy_hash    TEXT NOT NULL,
    units          INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    state          TEXT NOT NULL,
    captured_units INTEGER NOT NULL DEFAULT 0,
    closed_by      TEXT,
    closed_seq     INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_open ON holds(expires_at) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS holds_page ON holds(state, created_at, receipt_id);
CREATE INDEX IF NOT EXISTS holds_capability_page ON holds(capability_id, created_at, receipt_id);
CREATE TABLE IF NOT EXISTS hold_grants (
    receipt_id    TEXT NOT NULL,
    capability_id TEXT NOT NULL,
    grant_index   INTEGER NOT NULL,
    PRIMARY KEY (receipt_id, capability_id, grant_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hold_grants_capability ON hold_grants(capability_id, grant_index);
CREATE TABLE IF NOT EXISTS hold_ops (
    receipt_id  TEXT NOT NULL,
    op_id       TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    receipt_seq INTEGER NOT NULL,
    PRIMARY KEY (receipt_id, op_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approval_answers (
    approval_id TEXT NOT NULL,
    approver    TEXT NOT NULL,
    role        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    receipt_id  TEXT NOT NULL,
    PRIMARY KEY (approval_id, approver)
);
CREATE TABLE IF NOT EXISTS credentials (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


def _statements(script: str) -> list[str]:
    """Split a schema script into complete statements (trigger bodies contain ``;``)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():  # pragma: no cover - the schema is well formed
        raise ValueError(f"incomplete schema statement: {buf!r}")
    return out


def open_store(data_dir: Path, *, fsync: bool = False, timeout: float = 60.0) -> sqlite3.Connection:
    """Open (creating if needed) ``<data_dir>/kernel.db``; returns an autocommit connection.

    The connection is shared by the threads of one ``Kernel`` under its lock; transactions are
    opened explicitly with ``BEGIN IMMEDIATE``.
    """
    path = Path(data_dir) / DB_FILE
    if not path.exists():
        # Create the file 0600 ourselves: SQLite gives the -wal and -shm files the database file's
        # permissions, so they are owner-only too (they hold receipts, i.e. tool arguments).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network filesystem
        raise RuntimeError(f"kernel store {path} could not switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = OFF")
    # One transaction: several processes may open a fresh data dir at once.
    conn.execute("BEGIN IMMEDIATE")
    try:
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'chain_head'").fetchone()
        if kind is not None and kind[0] == "table":
            # schema of the first development builds: a one-row table moved by a trigger. The view
            # derives the same row from the newest receipt and saves a page write per receipt.
            conn.execute("DROP TRIGGER IF EXISTS receipts_move_chain_head")
            conn.execute("DROP TABLE chain_head")
        # first development builds indexed receipts(capability_id, seq) on every insert; the
        # lazily caught-up receipts_by_capability table replaces it (see Kernel.list_receipts)
        conn.execute("DROP INDEX IF EXISTS receipts_capability")
        for statement in (*_statements(_SCHEMA.replace("{genesis}", GENESIS_HASH)), *CHECKPOINT_DDL):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta(k, v) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _owner_only(path)
    return conn


def _owner_only(db_path: Path) -> None:
    """Tighten the database and its -wal/-shm files to 0600 (stores created by older builds or
    under another umask)."""
    for file in (db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")):
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
        except OSError:  # absent (no -wal yet) or not ours: nothing to tighten
            pass


_HEAD_SQL = "SELECT seq, hash FROM chain_head WHERE k = 0"
_INDEX_BATCH = 5_000  # receipts indexed by capability per write transaction (see catch_up_capability_index)


def _in(ids: Sequence[str]) -> str:
    return "= ?" if len(ids) == 1 else "IN (" + ",".join("?" * len(ids)) + ")"


class _Ops(SqlWriter):
    """The store's statements (``chio_kernel._sql_store``) on one SQLite connection.

    Inside a write transaction (``writing``) nobody else can write, so the chain head and the
    revocation state read once stay true until this transaction changes them: a batch of
    evaluations (group commit) reads them once and then follows its own appends in memory.
    """

    __slots__ = ("_c", "_head_sql", "_writing", "_head", "_revoked")

    def __init__(self, conn: sqlite3.Connection, head_sql: dict[int, str], writing: bool = False) -> None:
        self._c = conn
        self._head_sql = head_sql
        self._writing = writing
        self._head: tuple[int, str] | None = None
        self._revoked: dict[tuple[str, ...], str | None] = {}

    # --- the dialect ---

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._c.execute(sql, params).fetchall()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._c.execute(sql, params)

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._c.executemany(sql, rows)

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        return self._c.execute(sql, params).rowcount == 1

    def _in(self, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return _in(ids), list(ids)

    def _json_timestamp_at_least(self) -> str:
        return "json_extract(r.body, '$.timestamp') >= ?"

    def _json_metadata_is(self, key: str, value: str) -> tuple[str, list[Any]]:
        return "json_extract(r.body, ?) = ?", [f'$.metadata."{key}"', value]

    # --- the chain head and revocations, followed in memory inside a write transaction ---

    def chain_head(self) -> tuple[int, str]:
        if self._head is not None:
            return self._head
        seq, h = self._c.execute(_HEAD_SQL).fetchone()
        head = (int(seq), str(h))
        if self._writing:
            self._head = head
        return head

    def head_and_revoked(self, lineage: Sequence[str]) -> tuple[int, str, str | None]:
        key = tuple(lineage)
        if self._head is not None and key in self._revoked:
            return self._head[0], self._head[1], self._revoked[key]
        sql = self._head_sql.get(len(lineage))
        if sql is None:
            sql = (
                "SELECT seq, hash, (SELECT capability_id FROM revocations WHERE capability_id "
                + _in(lineage) + " LIMIT 1) FROM chain_head WHERE k = 0"
            )
            self._head_sql[len(lineage)] = sql
        seq, h, revoked = self._c.execute(sql, key).fetchone()
        self._head = (int(seq), str(h))
        self._revoked[key] = revoked
        return int(seq), str(h), revoked

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        self._revoked.clear()
        super().insert_revocations(rows)

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> int:
        self._c.execute(
            "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, receipt_id, capability_id, verdict, chain_hash, body),
        )
        self._head = (seq, chain_hash)
        return seq


class _Reader:
    """One thread's read-only connection: closed when its thread ends (the thread-local holding it
    goes) or when the store closes; never closed in a forked child (``pid``)."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def close(self) -> None:
        if self.pid == os.getpid():
            self.conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class SQLiteStore:
    """The default :class:`~chio_kernel._store.KernelStore`: ``<data_dir>/kernel.db`` (see the module
    docstring). One writer connection per process under a lock; ``write()`` is ``BEGIN IMMEDIATE``
    (the database write lock, so processes sharing the data dir are serialised too). ``read()``
    uses a read-only connection of the calling thread instead (WAL: readers never wait for the
    writer nor block it), so a listing never holds the writer's lock."""

    transient_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, data_dir: str | os.PathLike[str], *, fsync: bool = False, timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILE
        self.description = f"sqlite:{self.path}"
        self.commits = 0
        self._fsync = fsync
        self._timeout = timeout
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn = open_store(self.data_dir, fsync=fsync, timeout=timeout)
        self._inherited: list[sqlite3.Connection] = []
        self._head_sql: dict[int, str] = {}
        self._closed = False
        self._local = threading.local()  # each thread's reader connection (closed when the thread ends)
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()  # the live ones (closed on close)
        self._readers_lock = threading.Lock()
        self._readers_pid = self._pid

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _check_fork(self) -> threading.RLock:
        """The lock to take; after ``fork`` a child gets a fresh lock and connection (SQLite handles
        and held locks must not cross a fork)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock = threading.RLock()
            # Keep the parent's handle referenced, never closed here: closing an inherited SQLite
            # handle in a child can disturb the parent's locks and WAL index.
            self._inherited.append(self._conn)
            self._conn = open_store(self.data_dir, fsync=self._fsync, timeout=self._timeout)
        return self._lock

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        return self._conn

    @contextmanager
    def write(self) -> Iterator[_Ops]:
        lock = self._check_fork()
        with lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Ops(conn, self._head_sql, writing=True)
            except BaseException:
                if conn.in_transaction:  # never leave the shared connection inside a transaction
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.commits += 1

    def _reader(self) -> sqlite3.Connection:
        """The calling thread's read-only connection (opened on first use, again after ``fork``)."""
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None and reader.pid == os.getpid():
            return reader.conn
        conn = sqlite3.connect(
            str(self.path), timeout=self._timeout, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        conn.execute("PRAGMA query_only = ON")
        reader = self._local.reader = _Reader(conn)
        with self._readers_lock:
            if self._readers_pid != reader.pid:  # after fork: the parent's readers are not ours to close
                self._readers, self._readers_pid = weakref.WeakSet(), reader.pid
            self._readers.add(reader)
        return conn

    @contextmanager
    def read(self) -> Iterator[_Ops]:
        self._db()  # refuse once closed
        yield _Ops(self._reader(), self._head_sql)

    @contextmanager
    def snapshot(self) -> Iterator[_Ops]:
        # A private connection and a WAL read snapshot: a long walk neither holds the store lock nor
        # blocks writers.
        self._db()
        conn = sqlite3.connect(str(self.path), timeout=self._timeout, isolation_level=None)
        try:
            conn.execute("BEGIN")  # one consistent snapshot
            try:
                yield _Ops(conn, {})
            finally:
                conn.execute("COMMIT")
        finally:
            conn.close()

    def catch_up_capability_index(self, batch: int | None = None) -> None:
        """Bring ``receipts_by_capability`` up to the newest receipt (work proportional to what is new).

        Evaluations do not maintain it (that would cost a page write per receipt); listings by
        capability catch it up first, so they stay index lookups at any store size. The catch-up
        runs in transactions of at most ``batch`` receipts and releases the store lock and the
        database write lock between them, so a first listing on a big store never stalls
        evaluations for long.
        """
        batch = batch if batch is not None else _INDEX_BATCH
        while True:
            with self.write() as ops:
                if ops.index_capability_batch(batch):
                    return

    def stored_counts(self) -> StoredCounts:
        with self.read() as ops:
            conn = ops._c
            caps = int(conn.execute("SELECT COUNT(*) FROM capabilities").fetchone()[0])
            receipts = int(conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])
            key: str | None = None
            if caps or receipts:
                row = conn.execute(
                    "SELECT json_extract(body, '$.kernel_key') FROM receipts ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                if row is None:
                    row = conn.execute("SELECT json_extract(token, '$.issuer') FROM capabilities LIMIT 1").fetchone()
                key = str(row[0]) if row and row[0] else None
        return StoredCounts(caps, receipts, key)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                with self._readers_lock:
                    readers, self._readers = list(self._readers), weakref.WeakSet()
                if os.getpid() == self._readers_pid:
                    for reader in readers:
                        reader.close()
