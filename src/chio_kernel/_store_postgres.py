"""The PostgreSQL store: one receipt chain, one set of budgets, for a fleet of kernels.

Selected with ``Kernel(store="postgresql://...")``, ``LocalChioClient(store=...)``, ``--store`` on
every ``chio-durable`` command, or ``$CHIO_STORE``; SQLite stays the default (docs/fleet.md).

* **One writer at a time, fleet-wide.** Every write transaction (an evaluation's decide + charge +
  receipt insert, a capability create / attenuate / revoke) first takes one transaction-scoped
  advisory lock (``pg_advisory_xact_lock``): the chain tip. It is held until COMMIT/ROLLBACK, so
  the budget reads, the charge, the chain-head read and the receipt insert of one evaluation see no
  other writer in between — ``max_invocations``, cost budgets and rate limits are exact across
  processes and hosts, exactly as SQLite's ``BEGIN IMMEDIATE`` makes them within one host. A writer
  killed mid-transaction loses its connection; PostgreSQL rolls its transaction back and releases
  the lock, so no half-written receipt and no fork is left behind. ``receipts.seq`` is the primary
  key and each receipt chains to row ``seq - 1``, so even a writer that skipped the lock could not
  fork the chain: its insert would collide with the other writer's ``seq``.
* **Keys.** Each kernel keeps its own signing key in its data directory and registers the public key
  in ``kernel_keys``. Every kernel of the fleet accepts tokens and receipts signed by any registered
  key. A retired key (``retire_key``) signs nothing more (its kernel's writes are refused inside the
  lock), and capabilities it issued or delegated deny (guard ``signature``); receipts it signed
  before retirement still verify, so the fleet's chain stays checkable.

The kernel's SQL is written once, in SQLite's dialect; :class:`PgConnection` runs it on PostgreSQL
through psycopg 3, translating the handful of dialect differences (parameter marks, ``INSERT OR
IGNORE``, two-argument ``MIN``, ``rowid``, ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from chio_sdk.models import CapabilityToken

from chio_kernel.kernel import (
    ChainReport,
    Kernel,
    KernelInputError,
    _Cap,
    _Deny,
    receipt_chain_hash,
)
from chio_kernel._postgres_store import (
    CHAIN_LOCK_KEY,
    SCHEMA,
    KernelKeyRetiredError,
    StoreUnavailableError,
    is_postgres_dsn,
    mask_dsn,
)
from chio_kernel.store import GENESIS_HASH

if TYPE_CHECKING:
    import psycopg

__all__ = ["KernelKeyRetiredError", "PgConnection", "PostgresKernel", "StoreUnavailableError", "is_postgres_dsn"]

_RETIRED = "\x01retired:"  # marker in the head statement's third column (a retired signer, not a revocation)


def _translate(sql: str) -> str:
    """The kernel's SQLite-dialect statement in PostgreSQL's dialect (see the module docstring)."""
    out = sql.replace("%", "%%").replace("?", "%s")
    if "INSERT OR IGNORE INTO" in out:
        out = out.replace("INSERT OR IGNORE INTO", "INSERT INTO") + " ON CONFLICT DO NOTHING"
    # SQLite's two-argument MIN saturates the spent total; numeric keeps the sum from overflowing BIGINT
    out = out.replace(
        "MIN(cost_units + excluded.cost_units, 9223372036854775807)",
        "LEAST(usage.cost_units::numeric + excluded.cost_units, 9223372036854775807)::bigint",
    )
    out = out.replace("invocations = invocations + 1", "invocations = usage.invocations + 1")
    out = out.replace("ORDER BY created_at, rowid", "ORDER BY created_at, id")
    out = out.replace("SELECT %s, 0 UNION", "SELECT CAST(%s AS TEXT), 0 UNION")
    return out


class PgConnection:
    """A psycopg 3 connection that runs the kernel's SQLite-dialect statements (duck-types the part of
    ``sqlite3.Connection`` the kernel uses: ``execute``, ``executemany``, ``in_transaction``,
    ``close``). ``BEGIN IMMEDIATE`` becomes BEGIN + the fleet's writer lock."""

    def __init__(self, dsn: str, signer_key: str) -> None:
        self._dsn = dsn
        self._signer_key = signer_key
        self._sql: dict[str, str] = {}
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=30, application_name="chio-kernel")
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(f"cannot connect to the PostgreSQL store: {err}") from err

    @property
    def in_transaction(self) -> bool:
        """Inside BEGIN ... COMMIT/ROLLBACK (also after a failed statement, until ROLLBACK)."""
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status not in (TransactionStatus.IDLE, TransactionStatus.UNKNOWN)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one kernel statement; returns a cursor (``fetchone`` / ``fetchall``)."""
        import psycopg

        try:
            if sql == "BEGIN IMMEDIATE":
                if self._conn.broken or self._conn.closed:  # reconnect between transactions only
                    self._conn = self._connect()
                cur = self._conn.execute("BEGIN")
                try:
                    self._conn.execute("SELECT chio_writer_lock(%s)", (self._signer_key,))
                except BaseException:  # like a failed BEGIN IMMEDIATE: no transaction is left open
                    if not self._conn.broken:
                        self._conn.execute("ROLLBACK")
                    raise
                return cur
            if sql in ("COMMIT", "ROLLBACK"):
                return self._conn.execute(sql)
            pg = self._sql.get(sql)
            if pg is None:
                pg = self._sql[sql] = _translate(sql)
            return self._conn.execute(cast("Any", pg), tuple(params))
        except psycopg.Error as err:
            if err.sqlstate == "CH001":  # raised by chio_writer_lock
                raise KernelKeyRetiredError(
                    f"this kernel's signing key {self._signer_key[:16]}… was retired from the fleet store; "
                    "it signs nothing more. Give this host a new data directory (a new key) to rejoin"
                ) from None
            if isinstance(err, psycopg.OperationalError):
                raise StoreUnavailableError(f"the PostgreSQL store could not be used: {err}") from err
            raise

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """``execute`` for each row (one round trip per row batch, via psycopg's pipeline)."""
        pg = self._sql.get(sql)
        if pg is None:
            pg = self._sql[sql] = _translate(sql)
        with self._conn.cursor() as cur:
            cur.executemany(cast("Any", pg), [tuple(r) for r in rows])

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def open_pg_store(dsn: str, signer_key: str, label: str) -> PgConnection:
    """Connect, create the schema if needed (under the writer lock: several kernels may start at
    once) and register ``signer_key`` in ``kernel_keys``."""
    conn = PgConnection(dsn, signer_key)
    raw = conn._conn
    with raw.transaction():
        raw.execute(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})")
        raw.execute(cast("Any", SCHEMA))
        raw.execute(
            "INSERT INTO kernel_keys(public_key, label, registered_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (signer_key, label, time.time()),
        )
    return conn


class PostgresKernel(Kernel):
    """A :class:`Kernel` whose store is a PostgreSQL database shared by a fleet of kernels.

    Built by ``Kernel(store="postgresql://...")`` (or ``$CHIO_STORE``); see the module docstring and
    docs/fleet.md. Its own signing key stays in ``data_dir``.
    """

    @property
    def _dsn(self) -> str:
        assert self._store_dsn is not None  # Kernel.__new__ builds this class only for a DSN
        return self._store_dsn

    def _open_store(self) -> sqlite3.Connection:
        label = f"{os.uname().nodename}:{self.data_dir}"
        conn = open_pg_store(self._dsn, self.public_key_hex, label)
        self._known_keys_lock = threading.Lock()
        self._refresh_keys(conn)
        # PgConnection runs the kernel's statements exactly where a sqlite3.Connection would.
        return cast(sqlite3.Connection, conn)

    @property
    def store(self) -> str:
        """The store's DSN, password masked (for messages)."""
        return mask_dsn(self._dsn)

    def _refresh_keys(self, conn: Any) -> None:
        """Accept every key registered in the store (retired ones too: see ``_retired_in``)."""
        rows = conn.execute("SELECT public_key FROM kernel_keys").fetchall()
        self._issuers = frozenset({self.public_key_hex}) | self.trusted_keys | {r[0] for r in rows}

    def _signers(self, token: CapabilityToken) -> list[str]:
        return [token.issuer, *(link.delegator for link in token.delegation_chain)]

    def _static_check(self, conn: sqlite3.Connection | None, token: CapabilityToken) -> str | None:
        if conn is not None and any(k not in self._issuers for k in self._signers(token)):
            self._refresh_keys(conn)  # a kernel that joined the fleet after this one started
        return super()._static_check(conn, token)

    def _make_cap(
        self,
        conn: sqlite3.Connection,
        token: CapabilityToken,
        parent_id: str | None,
        rate_max: int | None,
        rate_per: float | None,
    ) -> _Cap:
        cap = super()._make_cap(conn, token, parent_id, rate_max, rate_per)
        # The head statement's third column also reports a retired signer of the token or of any
        # link of its chain (read inside the transaction, like a revocation).
        signers = sorted(set(self._signers(token)))
        lineage = cap.lineage
        revoked = (
            "(SELECT capability_id FROM revocations WHERE capability_id IN ("
            + ",".join("?" * len(lineage)) + ") LIMIT 1)"
        )
        retired = (
            f"(SELECT '{_RETIRED}' || public_key FROM kernel_keys WHERE retired_at IS NOT NULL AND public_key IN ("
            + ",".join(f"'{k}'" for k in signers if _is_hex_key(k)) + ") LIMIT 1)"
        )
        if not any(_is_hex_key(k) for k in signers):
            retired = "NULL"
        cap.head_sql = f"SELECT seq, hash, COALESCE({revoked}, {retired}) FROM chain_head WHERE k = 0"
        return cap

    def _check_valid(self, cap: _Cap | None, capability_id: str, now: float, revoked: str | None) -> None:
        if revoked is not None and revoked.startswith(_RETIRED):
            if cap is not None and cap.sig_error is not None:
                raise _Deny("signature", cap.sig_error)
            key = revoked[len(_RETIRED):]
            raise _Deny(
                "signature",
                f"capability {capability_id} was signed by kernel key {key[:16]}…, which was retired from the "
                "fleet store; issue a new capability from an active kernel",
            )
        super()._check_valid(cap, capability_id, now, revoked)

    def validate_capability(self, token: Any) -> tuple[bool, str | None]:
        valid, reason = super().validate_capability(token)
        if not valid:
            return valid, reason
        tok = token if isinstance(token, CapabilityToken) else CapabilityToken.model_validate(dict(token))
        retired = self._retired_in(self._signers(tok))
        if retired is not None:
            return False, f"capability {tok.id} was signed by kernel key {retired[:16]}…, which was retired"
        return True, None

    def _retired_in(self, keys: Sequence[str]) -> str | None:
        with self._lk:
            row = self._db().execute(
                "SELECT public_key FROM kernel_keys WHERE retired_at IS NOT NULL AND public_key IN ("
                + ",".join("?" * len(keys)) + ") LIMIT 1",
                tuple(keys),
            ).fetchone()
        return None if row is None else str(row[0])

    def _verify_receipt_dict(self, data: dict[str, Any]) -> str | None:
        if data.get("kernel_key") not in self._issuers:
            with self._lk:
                self._refresh_keys(self._db())
        return super()._verify_receipt_dict(data)

    # --- the fleet's keys ---

    def registered_keys(self) -> list[dict[str, Any]]:
        """Every kernel key registered in the store: ``public_key``, ``label`` (host:data_dir),
        ``registered_at``, ``retired_at`` (None while active), ``retired_reason``."""
        with self._lk:
            rows = self._db().execute(
                "SELECT public_key, label, registered_at, retired_at, retired_reason FROM kernel_keys "
                "ORDER BY registered_at, public_key"
            ).fetchall()
        return [
            {"public_key": r[0], "label": r[1], "registered_at": r[2], "retired_at": r[3], "retired_reason": r[4],
             "this_kernel": r[0] == self.public_key_hex}
            for r in rows
        ]

    def retire_key(self, public_key: str, reason: str = "retired") -> None:
        """Retire a registered kernel key: its kernel signs nothing more, capabilities it issued or
        delegated deny on every kernel; receipts it signed before still verify. Not reversible (give
        the host a new data directory, hence a new key). Unknown keys raise :class:`KernelInputError`."""
        if not _is_hex_key(public_key):
            raise KernelInputError(f"{public_key!r} is not a 64-hex-char Ed25519 public key")
        with self._write() as conn:
            row = conn.execute("SELECT retired_at FROM kernel_keys WHERE public_key = ?", (public_key,)).fetchone()
            if row is None:
                raise KernelInputError(
                    f"kernel key {public_key[:16]}… is not registered in this store (see `chio-durable keys list`)"
                )
            if row[0] is None:
                conn.execute(
                    "UPDATE kernel_keys SET retired_at = ?, retired_reason = ? WHERE public_key = ?",
                    (self._clock(), reason, public_key),
                )

    # --- reads ---

    def verify_chain(self, *, batch: int = 2000) -> ChainReport:
        """The whole fleet's chain, in seq order, on a private connection in one REPEATABLE READ
        snapshot (evaluations on every kernel go on meanwhile): each receipt's signature by a
        registered key, its parameter hash and its link to the previous receipt."""
        import psycopg
        from chio_sdk.models import ChioReceipt
        from pydantic import ValidationError

        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Kernel")
        prev = GENESIS_HASH
        index = 0
        last_seq = 0
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=30)
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(f"cannot connect to the PostgreSQL store: {err}") from err
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                keys = {r[0] for r in conn.execute("SELECT public_key FROM kernel_keys").fetchall()}
                self._issuers = self._issuers | keys
                head = conn.execute("SELECT seq, hash FROM chain_head WHERE k = 0").fetchone()
                assert head is not None
                head_seq, head_hash = head
                while True:
                    rows = conn.execute(
                        "SELECT seq, body FROM receipts WHERE seq > %s ORDER BY seq LIMIT %s", (last_seq, batch)
                    ).fetchall()
                    if not rows:
                        break
                    for seq, text in rows:
                        if seq != last_seq + 1:
                            return ChainReport(
                                False, index, index, f"receipt seq {last_seq + 1} is missing (next is {seq})"
                            )
                        try:
                            data = ChioReceipt.model_validate_json(text).model_dump(exclude_none=True)
                        except ValidationError as err:
                            return ChainReport(False, index, index, f"receipt at index {index} is not a valid receipt: {err}")
                        if data["content_hash"] != prev:
                            return ChainReport(
                                False, index, index,
                                f"receipt {data['id']} at index {index} does not chain to the previous receipt "
                                "(content_hash mismatch: a receipt before it was altered, removed or inserted)",
                            )
                        problem = super()._verify_receipt_dict(data)
                        if problem is not None:
                            return ChainReport(False, index, index, f"index {index}: {problem}")
                        prev = receipt_chain_hash(data)
                        index += 1
                        last_seq = seq
        finally:
            conn.close()
        if head_seq != last_seq or head_hash != prev:
            return ChainReport(
                False, index, max(index - 1, 0),
                f"the newest receipt (seq {head_seq}) carries a chain hash that does not match its content",
            )
        return ChainReport(True, index, None, None)

    def health(self) -> dict[str, Any]:
        """Status summary; ``store`` names the PostgreSQL store (password masked)."""
        out = super().health()
        out["store"] = self.store
        return out

    def __repr__(self) -> str:
        return f"Kernel(data_dir={str(self.data_dir)!r}, store={self.store!r}, key={self.public_key_hex[:16]}…)"


def _is_hex_key(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True
