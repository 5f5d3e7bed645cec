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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from chio_kernel._store import GENESIS_HASH, ApprovalRow, CapabilityRow, HoldRow, ReceiptQuery, StoredCounts

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
CREATE TABLE IF NOT EXISTS approval_wakes (
    approval_id TEXT NOT NULL,
    wake_json   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (approval_id, wake_json)
);

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
        for statement in _statements(_SCHEMA.replace("{genesis}", GENESIS_HASH)):
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
_APPROVAL_COLS = (
    "id, capability_id, tool_server, tool_name, parameter_hash, call_hash, subject, summary, created_at, "
    "expires_at, status, pending_receipt_id, resolved_at, approver, reason, resolution_receipt_id, consumed_receipt_id"
)

_HOLD_COLS = (
    "receipt_id, capability_id, policy_hash, units, currency, created_at, expires_at, state, captured_units, "
    "closed_by, closed_seq"
)
_MAX_UNITS = 9223372036854775807
_CAP_SQL = "SELECT id, token, parent_id, subject, issued_at, expires_at, rate_max, rate_per FROM capabilities WHERE id = ?"


def _in(ids: Sequence[str]) -> str:
    return "= ?" if len(ids) == 1 else "IN (" + ",".join("?" * len(ids)) + ")"


class _Ops:
    """The statements of :class:`~chio_kernel._store.StoreReader` / ``StoreWriter`` on one connection.

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

    # --- reads ---

    def chain_head(self) -> tuple[int, str]:
        if self._head is not None:
            return self._head
        seq, h = self._c.execute(_HEAD_SQL).fetchone()
        head = (int(seq), str(h))
        if self._writing:
            self._head = head
        return head

    def capability(self, capability_id: str) -> CapabilityRow | None:
        row = self._c.execute(_CAP_SQL, (capability_id,)).fetchone()
        return CapabilityRow(*row) if row is not None else None

    def capability_tokens(self) -> list[str]:
        return [r[0] for r in self._c.execute("SELECT token FROM capabilities ORDER BY created_at, rowid")]

    def revocation(self, capability_id: str) -> tuple[float, str] | None:
        row = self._c.execute(
            "SELECT revoked_at, cause FROM revocations WHERE capability_id = ?", (capability_id,)
        ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def first_revoked(self, ids: Sequence[str]) -> str | None:
        row = self._c.execute(
            f"SELECT capability_id FROM revocations WHERE capability_id {_in(ids)} LIMIT 1", tuple(ids)
        ).fetchone()
        return row[0] if row else None

    def usage_of(self, capability_id: str) -> list[tuple[int, int, int]]:
        return [
            (r[0], r[1], r[2])
            for r in self._c.execute(
                "SELECT grant_index, invocations, cost_units FROM usage WHERE capability_id = ? ORDER BY grant_index",
                (capability_id,),
            )
        ]

    def receipt_body(self, receipt_id: str) -> str | None:
        row = self._c.execute("SELECT body FROM receipts WHERE id = ?", (receipt_id,)).fetchone()
        return row[0] if row else None

    def receipts_after(
        self, after_seq: int, limit: int | None, capability_id: str | None = None
    ) -> list[tuple[int, str]]:
        args: list[object] = [after_seq]
        if capability_id is None:
            sql = "SELECT seq, body FROM receipts WHERE seq > ? ORDER BY seq"
        else:
            sql = (
                "SELECT r.seq, r.body FROM receipts_by_capability x JOIN receipts r ON r.seq = x.seq "
                "WHERE x.seq > ? AND x.capability_id = ? ORDER BY x.seq"
            )
            args.append(capability_id)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [(r[0], r[1]) for r in self._c.execute(sql, args)]

    def receipt_count(self) -> int:
        return int(self._c.execute("SELECT COUNT(*) FROM receipts").fetchone()[0])

    def query_receipts(self, query: ReceiptQuery) -> list[tuple[int, str]]:
        args: list[object] = [query.after_seq]
        if query.capability_id is None or not query.capability_index:
            sql, order = "SELECT r.seq, r.body FROM receipts r WHERE r.seq > ?", "r.seq"
            if query.capability_id is not None:
                sql += " AND r.capability_id = ?"
                args.append(query.capability_id)
        else:  # the by-capability index, walked in either direction
            sql, order = (
                "SELECT r.seq, r.body FROM receipts_by_capability x JOIN receipts r ON r.seq = x.seq "
                "WHERE x.seq > ? AND x.capability_id = ?"
            ), "x.seq"
            args.append(query.capability_id)
        if query.verdict is not None:
            sql += " AND r.verdict = ?"
            args.append(query.verdict)
        if query.since is not None:
            sql += " AND json_extract(r.body, '$.timestamp') >= ?"
            args.append(query.since)
        for key, value in query.metadata:
            sql += " AND json_extract(r.body, ?) = ?"
            args += [f'$.metadata."{key}"', value]
        sql += f" ORDER BY {order} DESC" if query.newest_first else f" ORDER BY {order}"
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        return [(r[0], r[1]) for r in self._c.execute(sql, args)]

    def approval(self, approval_id: str) -> ApprovalRow | None:
        row = self._c.execute(f"SELECT {_APPROVAL_COLS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return ApprovalRow(*row) if row is not None else None

    def approvals(self, status: str | None, limit: int | None) -> list[ApprovalRow]:
        sql = f"SELECT {_APPROVAL_COLS} FROM approvals"
        args: list[object] = []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY created_at, rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [ApprovalRow(*r) for r in self._c.execute(sql, args)]

    # --- writes ---

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

    def insert_capability(self, row: CapabilityRow, created_at: float) -> None:
        self._c.execute(
            "INSERT INTO capabilities(id, parent_id, subject, issued_at, expires_at, rate_max, rate_per, created_at, token)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.parent_id, row.subject, row.issued_at, row.expires_at, row.rate_max, row.rate_per,
             created_at, row.token),
        )

    def capability_subtree(self, capability_id: str) -> list[str]:
        rows = self._c.execute(
            "WITH RECURSIVE sub(id, depth) AS (SELECT ?, 0 UNION "
            "SELECT c.id, sub.depth + 1 FROM capabilities c JOIN sub ON c.parent_id = sub.id) "
            "SELECT id FROM sub ORDER BY depth, id",
            (capability_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        self._revoked.clear()
        self._c.executemany(
            "INSERT OR IGNORE INTO revocations(capability_id, revoked_at, cause) VALUES (?, ?, ?)", rows
        )

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        row = self._c.execute(
            "SELECT invocations, cost_units FROM usage WHERE capability_id = ? AND grant_index = ?",
            (capability_id, grant_index),
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def charge(self, capability_id: str, grant_index: int, cost_units: int) -> None:
        self._c.execute(
            "INSERT INTO usage(capability_id, grant_index, invocations, cost_units) VALUES (?, ?, 1, ?) "
            "ON CONFLICT(capability_id, grant_index) DO UPDATE SET invocations = invocations + 1, "
            # saturate at 2^63-1 instead of SQLite turning an overflowing sum into a float
            "cost_units = MIN(cost_units + excluded.cost_units, 9223372036854775807)",
            (capability_id, grant_index, cost_units),
        )

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        self._c.execute("DELETE FROM rate_events WHERE capability_id = ? AND t <= ?", (capability_id, now - per_seconds))
        row = self._c.execute(
            "SELECT COUNT(*), MIN(t) FROM rate_events WHERE capability_id = ?", (capability_id,)
        ).fetchone()
        return int(row[0]), row[1]

    def record_rate_event(self, capability_id: str, t: float) -> None:
        self._c.execute("INSERT INTO rate_events(capability_id, t) VALUES (?, ?)", (capability_id, t))

    def idempotent_receipt(self, key_hash: str) -> str | None:
        row = self._c.execute(
            "SELECT r.body FROM idempotency i JOIN receipts r ON r.seq = i.receipt_seq WHERE i.key_hash = ?",
            (key_hash,),
        ).fetchone()
        return row[0] if row is not None else None

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> None:
        self._c.execute(
            "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, receipt_id, capability_id, verdict, chain_hash, body),
        )
        self._head = (seq, chain_hash)

    def remember_idempotency(self, key_hash: str, seq: int) -> None:
        self._c.execute("INSERT INTO idempotency(key_hash, receipt_seq) VALUES (?, ?)", (key_hash, seq))

    def insert_approval(self, row: ApprovalRow) -> None:
        self._c.execute(
            f"INSERT INTO approvals({_APPROVAL_COLS}) VALUES ({','.join('?' * 17)})",
            (row.id, row.capability_id, row.tool_server, row.tool_name, row.parameter_hash, row.call_hash,
             row.subject, row.summary, row.created_at, row.expires_at, row.status, row.pending_receipt_id,
             row.resolved_at, row.approver, row.reason, row.resolution_receipt_id, row.consumed_receipt_id),
        )

    def resolve_approval(
        self, approval_id: str, status: str, resolved_at: int, approver: str, reason: str, receipt_id: str
    ) -> bool:
        cur = self._c.execute(
            "UPDATE approvals SET status = ?, resolved_at = ?, approver = ?, reason = ?, resolution_receipt_id = ? "
            "WHERE id = ? AND status = 'pending'",
            (status, resolved_at, approver, reason, receipt_id, approval_id),
        )
        return cur.rowcount == 1

    def consume_approval(self, approval_id: str, receipt_id: str) -> bool:
        cur = self._c.execute(
            "UPDATE approvals SET consumed_receipt_id = ? WHERE id = ? AND status = 'approved' "
            "AND consumed_receipt_id IS NULL",
            (receipt_id, approval_id),
        )
        return cur.rowcount == 1

    def approval_wakes(self, approval_id: str) -> list[str]:
        return [
            str(r[0])
            for r in self._c.execute(
                "SELECT wake_json FROM approval_wakes WHERE approval_id = ? ORDER BY created_at, rowid", (approval_id,)
            )
        ]

    def add_approval_wake(self, approval_id: str, wake_json: str, created_at: float) -> bool:
        cur = self._c.execute(
            "INSERT OR IGNORE INTO approval_wakes(approval_id, wake_json, created_at) VALUES (?, ?, ?)",
            (approval_id, wake_json, created_at),
        )
        return cur.rowcount == 1

    # --- idempotency keys and budget holds (chio_kernel._holds) ---

    def idempotency_key(self, key_hash: str) -> tuple[str, str] | None:
        row = self._c.execute(
            "SELECT k.fingerprint, r.body FROM idempotency_keys k JOIN receipts r ON r.seq = k.receipt_seq "
            "WHERE k.key_hash = ?",
            (key_hash,),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def remember_idempotency_key(self, key_hash: str, fingerprint: str, seq: int) -> None:
        self._c.execute(
            "INSERT INTO idempotency_keys(key_hash, fingerprint, receipt_seq) VALUES (?, ?, ?)",
            (key_hash, fingerprint, seq),
        )

    def hold(self, receipt_id: str) -> HoldRow | None:
        row = self._c.execute(f"SELECT {_HOLD_COLS} FROM holds WHERE receipt_id = ?", (receipt_id,)).fetchone()
        return None if row is None else HoldRow(*row)

    def hold_grants(self, receipt_id: str) -> list[tuple[str, int]]:
        return [
            (str(r[0]), int(r[1]))
            for r in self._c.execute(
                "SELECT capability_id, grant_index FROM hold_grants WHERE receipt_id = ?", (receipt_id,)
            )
        ]

    def held_by_grant(self, capability_id: str) -> list[tuple[int, int, int]]:
        return [
            (int(r[0]), int(r[1]), int(r[2]))
            for r in self._c.execute(
                "SELECT g.grant_index, SUM(h.units), COUNT(*) FROM hold_grants g JOIN holds h "
                "ON h.receipt_id = g.receipt_id WHERE g.capability_id = ? AND h.state = 'open' "
                "GROUP BY g.grant_index ORDER BY g.grant_index",
                (capability_id,),
            )
        ]

    def insert_hold(self, row: HoldRow, grants: Sequence[tuple[str, int]]) -> None:
        self._c.execute(
            f"INSERT INTO holds({_HOLD_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.receipt_id, row.capability_id, row.policy_hash, row.units, row.currency, row.created_at,
             row.expires_at, row.state, row.captured_units, row.closed_by, row.closed_seq),
        )
        self._c.executemany(
            "INSERT OR IGNORE INTO hold_grants(receipt_id, capability_id, grant_index) VALUES (?, ?, ?)",
            [(row.receipt_id, cid, index) for cid, index in grants],
        )

    def due_holds(self, now: float, limit: int) -> list[HoldRow]:
        return [
            HoldRow(*r)
            for r in self._c.execute(
                f"SELECT {_HOLD_COLS} FROM holds WHERE state = 'open' AND expires_at <= ? "
                "ORDER BY expires_at, receipt_id LIMIT ?",
                (now, limit),
            )
        ]

    def close_hold(self, receipt_id: str, state: str, captured_units: int, closed_by: str, closed_seq: int) -> None:
        self._c.execute(
            "UPDATE holds SET state = ?, captured_units = ?, closed_by = ?, closed_seq = ? WHERE receipt_id = ?",
            (state, captured_units, closed_by, closed_seq, receipt_id),
        )

    def adjust_cost(self, capability_id: str, grant_index: int, delta: int) -> None:
        # computed here, not in SQL: SQLite turns an overflowing integer sum into a float
        used = self.usage(capability_id, grant_index)[1]
        self._c.execute(
            "UPDATE usage SET cost_units = ? WHERE capability_id = ? AND grant_index = ?",
            (max(0, min(used + delta, _MAX_UNITS)), capability_id, grant_index),
        )

    def hold_op(self, receipt_id: str, op_id: str) -> tuple[str, str] | None:
        row = self._c.execute(
            "SELECT o.fingerprint, r.body FROM hold_ops o JOIN receipts r ON r.seq = o.receipt_seq "
            "WHERE o.receipt_id = ? AND o.op_id = ?",
            (receipt_id, op_id),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def remember_hold_op(self, receipt_id: str, op_id: str, fingerprint: str, seq: int) -> None:
        self._c.execute(
            "INSERT INTO hold_ops(receipt_id, op_id, fingerprint, receipt_seq) VALUES (?, ?, ?, ?)",
            (receipt_id, op_id, fingerprint, seq),
        )


class SQLiteStore:
    """The default :class:`~chio_kernel._store.KernelStore`: ``<data_dir>/kernel.db`` (see the module
    docstring). One shared connection per process under a lock; ``write()`` is ``BEGIN IMMEDIATE``
    (the database write lock, so processes sharing the data dir are serialised too)."""

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

    @contextmanager
    def read(self) -> Iterator[_Ops]:
        with self._check_fork():
            yield _Ops(self._db(), self._head_sql)

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
                conn = ops._c
                row = conn.execute("SELECT v FROM meta WHERE k = 'indexed_by_capability'").fetchone()
                done = int(row[0]) if row else 0
                head = conn.execute(_HEAD_SQL).fetchone()[0]
                if head <= done:
                    return
                upto = min(head, done + batch)
                conn.execute(
                    "INSERT OR IGNORE INTO receipts_by_capability(capability_id, seq) "
                    "SELECT capability_id, seq FROM receipts WHERE seq > ? AND seq <= ?",
                    (done, upto),
                )
                conn.execute(
                    "INSERT INTO meta(k, v) VALUES ('indexed_by_capability', ?) "
                    "ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                    (str(upto),),
                )

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
