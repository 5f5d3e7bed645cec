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
number of stored receipts; the chain head (the newest receipt's seq and hash) is the one-row
``chain_head`` table, moved by a trigger on every receipt insert and read inside the write transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["GENESIS_HASH", "SCHEMA_VERSION", "open_store"]

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
CREATE INDEX IF NOT EXISTS receipts_capability ON receipts(capability_id, seq);
CREATE TABLE IF NOT EXISTS chain_head (
    k    INTEGER PRIMARY KEY CHECK (k = 0),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS receipts_move_chain_head AFTER INSERT ON receipts
BEGIN
    UPDATE chain_head SET seq = NEW.seq, hash = NEW.chain_hash WHERE k = 0;
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


def open_store(data_dir: Path, *, fsync: bool = False, timeout: float = 60.0) -> sqlite3.Connection:
    """Open (creating if needed) ``<data_dir>/kernel.db``; returns an autocommit connection.

    The connection is shared by the threads of one ``Kernel`` under its lock; transactions are
    opened explicitly with ``BEGIN IMMEDIATE``.
    """
    path = Path(data_dir) / DB_FILE
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
    try:
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + _SCHEMA
            + f"INSERT OR IGNORE INTO meta(k, v) VALUES ('schema_version', '{SCHEMA_VERSION}');"
            + f"INSERT OR IGNORE INTO chain_head(k, seq, hash) VALUES (0, 0, '{GENESIS_HASH}');"
            + "COMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        path.chmod(0o600)
    except OSError:  # pragma: no cover
        pass
    return conn
