"""The kernel's SQLite store: capabilities, revocations, usage counters, rate events, idempotency keys
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
from pathlib import Path

__all__ = ["DB_FILE", "GENESIS_HASH", "SCHEMA_VERSION", "open_store"]

GENESIS_HASH = "0" * 64
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
