"""The store's statements, written once for both SQL dialects (SQLite and PostgreSQL).

:class:`SqlReader` / :class:`SqlWriter` implement :class:`~chio_kernel._store.StoreReader` /
``StoreWriter`` over five execution hooks (``_one``, ``_all``, ``_run``, ``_run_many``,
``_changed``) and a few dialect hooks; every statement is written with ``?`` placeholders (the
PostgreSQL store turns them into ``%s``). What truly differs stays in the subclasses
(``_sqlite_store._Ops``, ``_postgres_store._PgReader`` / ``_PgWriter``): connections, locking, the
DDL, JSON access, list parameters and saturating arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from chio_kernel._store import ApprovalRow, CapabilityRow, CheckpointRow, HoldRow, ReceiptQuery, WebhookRow

__all__ = [
    "APPROVAL_COLS", "CHECKPOINT_DDL", "HOLD_COLS", "MAX_UNITS", "WEBHOOK_COLS", "SqlReader", "SqlWriter", "hold_row",
]

APPROVAL_COLS = (
    "id, capability_id, tool_server, tool_name, parameter_hash, call_hash, subject, summary, created_at, "
    "expires_at, status, pending_receipt_id, resolved_at, approver, reason, resolution_receipt_id, consumed_receipt_id"
)
HOLD_COLS = (
    "receipt_id, capability_id, policy_hash, units, currency, created_at, expires_at, state, captured_units, "
    "closed_by, closed_seq"
)
#: The signed Merkle checkpoints (chio_kernel._checkpoints), the same DDL on both dialects. The key
#: holds the body digest, so two different checkpoints with one number (equivocation) can both be
#: stored and shown; the cutter numbers checkpoints inside a write transaction, so it never makes two.
CHECKPOINT_DDL = (
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    " kernel_id TEXT NOT NULL, checkpoint_seq BIGINT NOT NULL, batch_start_seq BIGINT NOT NULL,"
    " batch_end_seq BIGINT NOT NULL, sha256 TEXT NOT NULL, body TEXT NOT NULL, signature TEXT NOT NULL,"
    " leaves TEXT NOT NULL, PRIMARY KEY (kernel_id, checkpoint_seq, sha256))",
    "CREATE INDEX IF NOT EXISTS checkpoints_end ON checkpoints(kernel_id, batch_end_seq)",
)
_CHECKPOINT_COLS = "kernel_id, checkpoint_seq, batch_start_seq, batch_end_seq, sha256, body, signature, leaves"
#: Ids per ``IN (...)`` list (SQLite allows 32,766 parameters per statement).
_IN_CHUNK = 500
WEBHOOK_COLS = "id, approval_id, url, body, created_at, state, attempts, next_at, last_error, delivered_at"
#: Budgets saturate at 2^63-1 (both stores keep units as a 64-bit integer).
MAX_UNITS = 9223372036854775807
_CAP_SQL = "SELECT id, token, parent_id, subject, issued_at, expires_at, rate_max, rate_per FROM capabilities WHERE id = ?"
_RECEIPTS_BY_CAPABILITY = (
    "SELECT r.seq, r.body FROM receipts_by_capability x JOIN receipts r ON r.seq = x.seq "
    "WHERE x.seq > ? AND x.capability_id = ?"
)


def hold_row(r: Sequence[Any]) -> HoldRow:
    return HoldRow(
        str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), float(r[5]), float(r[6]), str(r[7]), int(r[8]),
        None if r[9] is None else str(r[9]), None if r[10] is None else int(r[10]),
    )


def _checkpoint_row(r: Sequence[Any]) -> CheckpointRow:
    return CheckpointRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]))


def _webhook_row(r: Sequence[Any]) -> WebhookRow:
    return WebhookRow(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), str(r[5]), int(r[6]), float(r[7]),
        None if r[8] is None else str(r[8]), None if r[9] is None else float(r[9]),
    )


class SqlReader:
    """The read statements of the store interface, over the dialect's execution hooks."""

    __slots__ = ()

    #: The column that breaks ties in insertion order (SQLite ``rowid``, PostgreSQL ``ord``).
    ORD = "rowid"

    # --- execution and dialect hooks (the subclasses) ---

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _in(self, ids: Sequence[str]) -> tuple[str, list[Any]]:
        """``(SQL after the column, parameters)`` matching the column against ``ids``."""
        raise NotImplementedError

    def _json_timestamp_at_least(self) -> str:
        """The condition "the receipt body's ``timestamp`` >= ?" (one parameter)."""
        raise NotImplementedError

    def _json_metadata_is(self, key: str, value: str) -> tuple[str, list[Any]]:
        """The condition "the receipt body's ``metadata[key]`` = value" and its parameters."""
        raise NotImplementedError

    # --- reads ---

    def chain_head(self) -> tuple[int, str]:
        """The newest receipt's ``(seq, chain hash)`` (``(0, GENESIS_HASH)`` when empty)."""
        row = self._one("SELECT seq, hash FROM chain_head WHERE k = 0")
        return int(row[0]), str(row[1])

    def chains(self) -> list[tuple[str, int, str]]:
        """``(kernel_id, head seq, head hash)`` per chain: one kernel, one chain (none when empty);
        the chain's id is the key that signed its first receipt."""
        seq, head = self.chain_head()
        if seq == 0:
            return []
        first = self.receipts_after(0, 1)[0][1]
        return [(str(json.loads(first).get("kernel_key", "")), seq, head)]

    def _chain(self, kernel_id: str) -> tuple[str, str, str, list[Any]]:
        """``(position column, chain id column, filter, its parameters)`` selecting one kernel's chain.

        SQLite holds one chain (its kernel's): the positions are the ``seq``s, the filter is empty and
        the id column ``NULL``; PostgreSQL overrides this with ``chain_seq`` and ``kernel_id``.
        """
        return "seq", "NULL", "", []

    def chain_receipts(self, kernel_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """``(position, body)`` of one kernel's chain after position ``after``, in chain order."""
        pos, _, where, params = self._chain(kernel_id)
        rows = self._all(f"SELECT {pos}, body FROM receipts WHERE {pos} > ?{where} ORDER BY {pos} LIMIT ?",
                         [after, *params, limit])
        return [(int(n), str(b)) for n, b in rows]

    def chain_between(self, kernel_id: str, first: int, last: int) -> list[tuple[int, str]]:
        """``(position, body)`` of one kernel's chain from position ``first`` to ``last``, in chain order."""
        pos, _, where, params = self._chain(kernel_id)
        rows = self._all(f"SELECT {pos}, body FROM receipts WHERE {pos} BETWEEN ? AND ?{where} ORDER BY {pos}",
                         [first, last, *params])
        return [(int(n), str(b)) for n, b in rows]

    def chain_end(self, kernel_id: str) -> int:
        """The newest position of one kernel's chain that the receipt table holds (0: none)."""
        pos, _, where, params = self._chain(kernel_id)
        row = self._one(f"SELECT MAX({pos}) FROM receipts WHERE {pos} > 0{where}", params)
        return 0 if row is None or row[0] is None else int(row[0])

    def receipt_position(self, receipt_id: str) -> tuple[str | None, int] | None:
        """``(chain id, position)`` of a receipt (chain id None: the store's one chain), or None."""
        pos, chain, _, _ = self._chain("")
        row = self._one(f"SELECT {chain}, {pos} FROM receipts WHERE id = ?", (receipt_id,))
        return None if row is None else (None if row[0] is None else str(row[0]), int(row[1]))

    def capability(self, capability_id: str) -> CapabilityRow | None:
        """The stored capability row, or None."""
        row = self._one(_CAP_SQL, (capability_id,))
        return None if row is None else CapabilityRow(*row)

    def capability_tokens(self) -> list[str]:
        """Every stored token (JSON), oldest first."""
        return [str(r[0]) for r in self._all(f"SELECT token FROM capabilities ORDER BY created_at, {self.ORD}")]

    def revocation(self, capability_id: str) -> tuple[float, str] | None:
        """``(revoked_at, cause)`` of a revoked capability, or None."""
        row = self._one("SELECT revoked_at, cause FROM revocations WHERE capability_id = ?", (capability_id,))
        return None if row is None else (float(row[0]), str(row[1]))

    def first_revoked(self, ids: Sequence[str]) -> str | None:
        """One of ``ids`` that is revoked, or None."""
        cond, params = self._in(ids)
        row = self._one(f"SELECT capability_id FROM revocations WHERE capability_id {cond} LIMIT 1", params)
        return None if row is None else str(row[0])

    def revoked_among(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are revoked (one statement for a page of listings)."""
        out: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            cond, params = self._in(ids[i:i + _IN_CHUNK])
            out.update(str(r[0]) for r in self._all(f"SELECT capability_id FROM revocations WHERE capability_id {cond}",
                                                    params))
        return out

    def receipt_bodies(self, receipt_ids: Sequence[str]) -> dict[str, str]:
        """The stored texts of the receipts with these ids (those found), in one statement."""
        out: dict[str, str] = {}
        for i in range(0, len(receipt_ids), _IN_CHUNK):
            cond, params = self._in(receipt_ids[i:i + _IN_CHUNK])
            out.update((str(r[0]), str(r[1])) for r in self._all(f"SELECT id, body FROM receipts WHERE id {cond}", params))
        return out

    def usage_of(self, capability_id: str) -> list[tuple[int, int, int]]:
        """``(grant_index, invocations, cost_units)`` per used grant of a capability."""
        rows = self._all(
            "SELECT grant_index, invocations, cost_units FROM usage WHERE capability_id = ? ORDER BY grant_index",
            (capability_id,),
        )
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def receipt_body(self, receipt_id: str) -> str | None:
        """The stored receipt text, or None."""
        row = self._one("SELECT body FROM receipts WHERE id = ?", (receipt_id,))
        return None if row is None else str(row[0])

    def receipts_after(
        self, after_seq: int, limit: int | None, capability_id: str | None = None
    ) -> list[tuple[int, str]]:
        """``(seq, body)`` after ``after_seq`` in seq order (by the capability index when given)."""
        params: list[Any] = [after_seq]
        if capability_id is None:
            sql = "SELECT seq, body FROM receipts WHERE seq > ? ORDER BY seq"
        else:
            sql = _RECEIPTS_BY_CAPABILITY + " ORDER BY x.seq"
            params.append(capability_id)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(int(s), str(b)) for s, b in self._all(sql, params)]

    def receipt_rows_after(self, after_seq: int, limit: int) -> list[tuple[int, str, str, str, str, str]]:
        """See ``StoreReader.receipt_rows_after``."""
        rows = self._all(
            "SELECT seq, id, capability_id, verdict, chain_hash, body FROM receipts WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [(int(q), str(i), str(c), str(v), str(h), str(b)) for q, i, c, v, h, b in rows]

    def capability_index_mismatch(self) -> tuple[str, int] | None:
        """See ``StoreReader.capability_index_mismatch``."""
        row = self._one(
            "SELECT x.capability_id, x.seq FROM receipts_by_capability x LEFT JOIN receipts r ON r.seq = x.seq "
            "WHERE r.seq IS NULL OR r.capability_id <> x.capability_id ORDER BY x.seq LIMIT 1",
            (),
        )
        return None if row is None else (str(row[0]), int(row[1]))

    def receipt_count(self) -> int:
        """How many receipts the store holds."""
        return int(self._one("SELECT COUNT(*) FROM receipts")[0])

    def query_receipts(self, query: ReceiptQuery) -> list[tuple[int, str]]:
        """``(seq, body)`` of the receipts matching every filter of ``query``."""
        params: list[Any] = [query.after_seq]
        if query.capability_id is None or not query.capability_index:
            sql, order = "SELECT r.seq, r.body FROM receipts r WHERE r.seq > ?", "r.seq"
            if query.capability_id is not None:
                sql += " AND r.capability_id = ?"
                params.append(query.capability_id)
        else:  # the by-capability index, walked in either direction
            sql, order = _RECEIPTS_BY_CAPABILITY, "x.seq"
            params.append(query.capability_id)
        if query.before_seq is not None:
            sql += f" AND {order} < ?"
            params.append(query.before_seq)
        if query.verdict is not None:
            sql += " AND r.verdict = ?"
            params.append(query.verdict)
        if query.since is not None:
            sql += " AND " + self._json_timestamp_at_least()
            params.append(query.since)
        for key, value in query.metadata:
            cond, more = self._json_metadata_is(key, value)
            sql += " AND " + cond
            params += more
        sql += f" ORDER BY {order} DESC" if query.newest_first else f" ORDER BY {order}"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        return [(int(s), str(b)) for s, b in self._all(sql, params)]

    def checkpoints(self, kernel_id: str | None, first: int = 1, last: int | None = None) -> list[CheckpointRow]:
        """Stored checkpoints numbered ``first..last`` (of one kernel, or all), by kernel then number."""
        sql = f"SELECT {_CHECKPOINT_COLS} FROM checkpoints WHERE checkpoint_seq >= ?"
        params: list[Any] = [first]
        if last is not None:
            sql += " AND checkpoint_seq <= ?"
            params.append(last)
        if kernel_id is not None:
            sql += " AND kernel_id = ?"
            params.append(kernel_id)
        rows = self._all(sql + " ORDER BY kernel_id, checkpoint_seq, sha256", params)
        return [_checkpoint_row(r) for r in rows]

    def checkpoint_kernels(self) -> list[str]:
        """The kernels (hex public keys) with checkpoints in the store."""
        return [str(r[0]) for r in self._all("SELECT DISTINCT kernel_id FROM checkpoints ORDER BY kernel_id")]

    def checkpoints_after(self, kernel_id: str, after_seq: int, limit: int) -> list[CheckpointRow]:
        """A page of a kernel's checkpoints numbered above ``after_seq``, by number (then digest)."""
        rows = self._all(
            f"SELECT {_CHECKPOINT_COLS} FROM checkpoints WHERE kernel_id = ? AND checkpoint_seq > ? "
            "ORDER BY checkpoint_seq, sha256 LIMIT ?",
            (kernel_id, after_seq, limit),
        )
        return [_checkpoint_row(r) for r in rows]

    def last_checkpoint(self, kernel_id: str) -> CheckpointRow | None:
        """A kernel's newest checkpoint, or None."""
        row = self._one(
            f"SELECT {_CHECKPOINT_COLS} FROM checkpoints WHERE kernel_id = ? ORDER BY checkpoint_seq DESC LIMIT 1",
            (kernel_id,),
        )
        return None if row is None else _checkpoint_row(row)

    def checkpoint_covering(self, kernel_id: str, receipt_seq: int) -> CheckpointRow | None:
        """A kernel's checkpoint whose range holds ``receipt_seq``, or None."""
        row = self._one(
            f"SELECT {_CHECKPOINT_COLS} FROM checkpoints WHERE kernel_id = ? AND batch_end_seq >= ? "
            "ORDER BY batch_end_seq LIMIT 1",
            (kernel_id, receipt_seq),
        )
        return None if row is None or int(row[2]) > receipt_seq else _checkpoint_row(row)

    def approval(self, approval_id: str) -> ApprovalRow | None:
        """One approval row, or None."""
        row = self._one(f"SELECT {APPROVAL_COLS} FROM approvals WHERE id = ?", (approval_id,))
        return None if row is None else ApprovalRow(*row)

    def approvals(self, status: str | None, limit: int | None) -> list[ApprovalRow]:
        """Approvals (of one stored status, or all), oldest first."""
        sql = f"SELECT {APPROVAL_COLS} FROM approvals"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += f" ORDER BY created_at, {self.ORD}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [ApprovalRow(*r) for r in self._all(sql, params)]

    def approvals_page(
        self, status: str | None, before: tuple[int, str] | None, limit: int, expiry: tuple[bool, int] | None = None
    ) -> list[ApprovalRow]:
        """Approvals newest first (``created_at``, then id, descending) strictly before ``before``.

        ``status`` filters the stored status; ``expiry`` ``(True, now)`` keeps those past their
        expiry at ``now``, ``(False, now)`` those not yet past it.
        """
        conds: list[str] = []
        params: list[Any] = []
        if status is not None:
            conds.append("status = ?")
            params.append(status)
        if expiry is not None:
            conds.append("expires_at <= ?" if expiry[0] else "expires_at > ?")
            params.append(expiry[1])
        if before is not None:
            conds.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [before[0], before[0], before[1]]
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        sql = f"SELECT {APPROVAL_COLS} FROM approvals{where} ORDER BY created_at DESC, id DESC LIMIT ?"
        return [ApprovalRow(*r) for r in self._all(sql, [*params, limit])]

    def capabilities_page(self, after: tuple[float, str] | None, limit: int) -> list[tuple[float, str, str]]:
        """``(created_at, id, token)`` oldest first (``created_at``, then id) strictly after ``after``."""
        sql, params = "SELECT created_at, id, token FROM capabilities", []
        if after is not None:
            sql += " WHERE (created_at > ? OR (created_at = ? AND id > ?))"
            params = [after[0], after[0], after[1]]
        rows = self._all(sql + " ORDER BY created_at, id LIMIT ?", [*params, limit])
        return [(float(r[0]), str(r[1]), str(r[2])) for r in rows]

    def holds_page(
        self, state: str | None, capability_id: str | None, before: tuple[float, str] | None, limit: int
    ) -> list[HoldRow]:
        """Holds newest first (``created_at``, then receipt id, descending) strictly before ``before``."""
        conds: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state), ("capability_id", capability_id)):
            if value is not None:
                conds.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            conds.append("(created_at < ? OR (created_at = ? AND receipt_id < ?))")
            params += [before[0], before[0], before[1]]
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        sql = f"SELECT {HOLD_COLS} FROM holds{where} ORDER BY created_at DESC, receipt_id DESC LIMIT ?"
        return [hold_row(r) for r in self._all(sql, [*params, limit])]

    def approval_wakes(self, approval_id: str) -> list[str]:
        """The wakes registered on an approval (canonical JSON), oldest first."""
        rows = self._all(
            f"SELECT wake_json FROM approval_wakes WHERE approval_id = ? ORDER BY created_at, {self.ORD}",
            (approval_id,),
        )
        return [str(r[0]) for r in rows]

    def unsent_approvals(self, url: str, now: float) -> list[str]:
        """Pending, unexpired approvals not yet queued for ``url``, oldest first."""
        rows = self._all(
            f"SELECT a.id FROM approvals a WHERE a.status = 'pending' AND a.expires_at > ? AND NOT EXISTS "
            f"(SELECT 1 FROM webhook_outbox o WHERE o.approval_id = a.id AND o.url = ?) ORDER BY a.created_at, a.{self.ORD}",
            (now, url),
        )
        return [str(r[0]) for r in rows]

    def webhook_deliveries(self, state: str | None, limit: int) -> list[WebhookRow]:
        """Webhook deliveries (of one state, or all), newest first."""
        sql, params = f"SELECT {WEBHOOK_COLS} FROM webhook_outbox", []
        if state is not None:
            sql += " WHERE state = ?"
            params.append(state)
        return [_webhook_row(r) for r in self._all(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, limit])]

    def hold(self, receipt_id: str) -> HoldRow | None:
        """The hold of an allow receipt, or None."""
        row = self._one(f"SELECT {HOLD_COLS} FROM holds WHERE receipt_id = ?", (receipt_id,))
        return None if row is None else hold_row(row)

    def hold_grants(self, receipt_id: str) -> list[tuple[str, int]]:
        """``(capability_id, grant_index)`` charged by a hold."""
        rows = self._all("SELECT capability_id, grant_index FROM hold_grants WHERE receipt_id = ?", (receipt_id,))
        return [(str(r[0]), int(r[1])) for r in rows]

    def held_by_grant(self, capability_id: str) -> list[tuple[int, int, int]]:
        """``(grant_index, held units, open holds)`` per grant of a capability."""
        rows = self._all(
            "SELECT g.grant_index, SUM(h.units), COUNT(*) FROM hold_grants g JOIN holds h "
            "ON h.receipt_id = g.receipt_id WHERE g.capability_id = ? AND h.state = 'open' "
            "GROUP BY g.grant_index ORDER BY g.grant_index",
            (capability_id,),
        )
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    def approval_answers(self, approval_id: str) -> list[tuple[str, str, int, str]]:
        """``(name, role, at, receipt_id)`` of each approver's answer so far, oldest first."""
        rows = self._all(
            f"SELECT approver, role, at, receipt_id FROM approval_answers WHERE approval_id = ? ORDER BY at, {self.ORD}",
            (approval_id,),
        )
        return [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    def approval_answers_among(self, approval_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int, str]]]:
        """:meth:`approval_answers` of each of these approvals (those answered so far), in one statement."""
        out: dict[str, list[tuple[str, str, int, str]]] = {}
        for i in range(0, len(approval_ids), _IN_CHUNK):
            cond, params = self._in(approval_ids[i:i + _IN_CHUNK])
            rows = self._all(
                f"SELECT approval_id, approver, role, at, receipt_id FROM approval_answers "
                f"WHERE approval_id {cond} ORDER BY at, {self.ORD}",
                params,
            )
            for r in rows:
                out.setdefault(str(r[0]), []).append((str(r[1]), str(r[2]), int(r[3]), str(r[4])))
        return out

    # --- credentials (chio_kernel._roles) ---

    def credential(self, name: str) -> tuple[str, str, str, float | None] | None:
        """``(name, role, token_hash, revoked_at)`` of a credential, or None."""
        row = self._one("SELECT name, role, token_hash, revoked_at FROM credentials WHERE name = ?", (name,))
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), row[3])

    def credential_by_hash(self, token_hash: str) -> tuple[str, str, str, float | None] | None:
        """``(name, role, token_hash, revoked_at)`` of the credential whose token hashes to ``token_hash``."""
        row = self._one(
            "SELECT name, role, token_hash, revoked_at FROM credentials WHERE token_hash = ?", (token_hash,)
        )
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), row[3])

    def credentials(self) -> list[tuple[str, str, float, float | None]]:
        """``(name, role, created_at, revoked_at)`` of every credential, oldest first."""
        rows = self._all("SELECT name, role, created_at, revoked_at FROM credentials ORDER BY created_at, name")
        return [(str(r[0]), str(r[1]), float(r[2]), None if r[3] is None else float(r[3])) for r in rows]


class SqlWriter(SqlReader):
    """The write statements of the store interface (one write transaction)."""

    __slots__ = ()

    #: ``usage.cost_units`` plus ``excluded.cost_units``, saturated at 2^63-1 (dialect arithmetic).
    CHARGE_SUM = "MIN(cost_units + excluded.cost_units, 9223372036854775807)"
    #: False: the transaction holds the store's one write lock, so row locks are not needed.
    ROW_LOCKS = False

    def lock_capabilities(self, ids: Sequence[str]) -> None:
        """Lock what these capabilities share across writers (nothing to do under one write lock)."""

    def claim_idempotency_key(self, key_hash: str) -> None:
        """Take an idempotency key for this transaction (nothing to do under one write lock)."""

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        """Run an UPDATE / INSERT: did it change exactly one row?"""
        raise NotImplementedError

    def insert_checkpoint(self, row: CheckpointRow) -> None:
        """Store a signed checkpoint."""
        self._run(f"INSERT INTO checkpoints({_CHECKPOINT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(row))

    def head_and_revoked(self, lineage: Sequence[str]) -> tuple[int, str, str | None]:
        """The chain head and one revoked id of ``lineage`` (or None), in one statement."""
        cond, params = self._in(lineage)
        row = self._one(
            f"SELECT seq, hash, (SELECT capability_id FROM revocations WHERE capability_id {cond} LIMIT 1) "
            "FROM chain_head WHERE k = 0",
            params,
        )
        return int(row[0]), str(row[1]), row[2]

    def insert_capability(self, row: CapabilityRow, created_at: float) -> None:
        """Store a capability."""
        self._run(
            "INSERT INTO capabilities(id, parent_id, subject, issued_at, expires_at, rate_max, rate_per, created_at, token)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.parent_id, row.subject, row.issued_at, row.expires_at, row.rate_max, row.rate_per,
             created_at, row.token),
        )

    def capability_subtree(self, capability_id: str) -> list[str]:
        """A capability and every descendant, root first."""
        rows = self._all(
            "WITH RECURSIVE sub(id, depth) AS (SELECT CAST(? AS TEXT), 0 UNION "
            "SELECT c.id, sub.depth + 1 FROM capabilities c JOIN sub ON c.parent_id = sub.id) "
            "SELECT id FROM sub ORDER BY depth, id",
            (capability_id,),
        )
        return [str(r[0]) for r in rows]

    def insert_revocations(self, rows: Sequence[tuple[str, float, str]]) -> None:
        """Record revocations (already revoked ones are kept as they were)."""
        self._run_many(
            "INSERT INTO revocations(capability_id, revoked_at, cause) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows
        )

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        """``(invocations, cost_units)`` of one grant."""
        row = self._one(
            "SELECT invocations, cost_units FROM usage WHERE capability_id = ? AND grant_index = ?",
            (capability_id, grant_index),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def charge(self, capability_id: str, grant_index: int, cost_units: int) -> None:
        """Count one invocation of a grant and add its cost (saturating)."""
        self._run(
            "INSERT INTO usage(capability_id, grant_index, invocations, cost_units) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (capability_id, grant_index) DO UPDATE SET invocations = usage.invocations + 1, "
            f"cost_units = {self.CHARGE_SUM}",
            (capability_id, grant_index, cost_units),
        )

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        """Drop rate events older than the window; ``(events in it, the oldest one's time)``."""
        self._run("DELETE FROM rate_events WHERE capability_id = ? AND t <= ?", (capability_id, now - per_seconds))
        row = self._one("SELECT COUNT(*), MIN(t) FROM rate_events WHERE capability_id = ?", (capability_id,))
        return int(row[0]), (None if row[1] is None else float(row[1]))

    def record_rate_event(self, capability_id: str, t: float) -> None:
        """One allowed call at ``t`` in the capability's rate window."""
        self._run("INSERT INTO rate_events(capability_id, t) VALUES (?, ?)", (capability_id, t))

    def idempotent_receipt(self, key_hash: str) -> str | None:
        """The receipt remembered under a call fingerprint (keys stored before the key rule)."""
        row = self._one(
            "SELECT r.body FROM idempotency i JOIN receipts r ON r.seq = i.receipt_seq WHERE i.key_hash = ?",
            (key_hash,),
        )
        return None if row is None else str(row[0])

    def append_receipt(
        self, seq: int, receipt_id: str, capability_id: str, verdict: str, chain_hash: str, body: str
    ) -> int:
        """Append a receipt at ``seq`` (the primary key: two writers never share a place); returns ``seq``."""
        self._run(
            "INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, receipt_id, capability_id, verdict, chain_hash, body),
        )
        return seq

    def remember_idempotency(self, key_hash: str, seq: int) -> None:
        """Remember a receipt under a call fingerprint (the layout before the key rule)."""
        self._run("INSERT INTO idempotency(key_hash, receipt_seq) VALUES (?, ?)", (key_hash, seq))

    def insert_approval(self, row: ApprovalRow) -> None:
        """Store a pending approval."""
        self._run(
            f"INSERT INTO approvals({APPROVAL_COLS}) VALUES ({', '.join('?' * 17)})",
            (row.id, row.capability_id, row.tool_server, row.tool_name, row.parameter_hash, row.call_hash,
             row.subject, row.summary, row.created_at, row.expires_at, row.status, row.pending_receipt_id,
             row.resolved_at, row.approver, row.reason, row.resolution_receipt_id, row.consumed_receipt_id),
        )

    def resolve_approval(
        self, approval_id: str, status: str, resolved_at: int, approver: str, reason: str, receipt_id: str
    ) -> bool:
        """Answer a pending approval; False if it was not pending any more."""
        return self._changed(
            "UPDATE approvals SET status = ?, resolved_at = ?, approver = ?, reason = ?, resolution_receipt_id = ? "
            "WHERE id = ? AND status = 'pending'",
            (status, resolved_at, approver, reason, receipt_id, approval_id),
        )

    def consume_approval(self, approval_id: str, receipt_id: str) -> bool:
        """Use an approved approval up; False if it was used already (or not approved)."""
        return self._changed(
            "UPDATE approvals SET consumed_receipt_id = ? WHERE id = ? AND status = 'approved' "
            "AND consumed_receipt_id IS NULL",
            (receipt_id, approval_id),
        )

    def add_approval_wake(self, approval_id: str, wake_json: str, created_at: float) -> bool:
        """Register a wake (deduplicated); False if it was registered already."""
        return self._changed(
            "INSERT INTO approval_wakes(approval_id, wake_json, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (approval_id, wake_json, created_at),
        )

    def insert_webhook(self, row: WebhookRow) -> bool:
        """Queue a webhook delivery (one per approval and URL); False if it is queued already."""
        return self._changed(
            f"INSERT INTO webhook_outbox({WEBHOOK_COLS}) VALUES ({', '.join('?' * 10)}) ON CONFLICT DO NOTHING",
            (row.id, row.approval_id, row.url, row.body, row.created_at, row.state, row.attempts, row.next_at,
             row.last_error, row.delivered_at),
        )

    def due_webhooks(self, now: float, limit: int) -> list[WebhookRow]:
        """Pending deliveries whose next attempt is due, earliest first."""
        rows = self._all(
            f"SELECT {WEBHOOK_COLS} FROM webhook_outbox WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY next_at, id LIMIT ?",
            (now, limit),
        )
        return [_webhook_row(r) for r in rows]

    def update_webhook(self, row: WebhookRow) -> None:
        """Record a delivery attempt's outcome (or a claim: ``next_at`` moved ahead)."""
        self._run(
            "UPDATE webhook_outbox SET state = ?, attempts = ?, next_at = ?, last_error = ?, delivered_at = ? "
            "WHERE id = ?",
            (row.state, row.attempts, row.next_at, row.last_error, row.delivered_at, row.id),
        )

    def index_capability_batch(self, batch: int) -> bool:
        """Index the next ``batch`` receipts in ``receipts_by_capability``; True if it was caught up already."""
        row = self._one("SELECT v FROM meta WHERE k = 'indexed_by_capability'")
        done = int(row[0]) if row else 0
        head = self.chain_head()[0]
        if head <= done:
            return True
        upto = min(head, done + batch)
        self._run(
            "INSERT INTO receipts_by_capability(capability_id, seq) SELECT capability_id, seq FROM receipts "
            "WHERE seq > ? AND seq <= ? ON CONFLICT DO NOTHING",
            (done, upto),
        )
        self._run(
            "INSERT INTO meta(k, v) VALUES ('indexed_by_capability', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (str(upto),),
        )
        return False

    # --- idempotency keys and budget holds ---

    def idempotency_key(self, key_hash: str) -> tuple[str, str] | None:
        """``(fingerprint, receipt body)`` remembered under an idempotency key, or None."""
        row = self._one(
            "SELECT k.fingerprint, r.body FROM idempotency_keys k JOIN receipts r ON r.seq = k.receipt_seq "
            "WHERE k.key_hash = ?",
            (key_hash,),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def remember_idempotency_key(self, key_hash: str, fingerprint: str, seq: int) -> None:
        """Remember the receipt at ``seq`` as the key's answer for the call ``fingerprint``."""
        self._run(
            "INSERT INTO idempotency_keys(key_hash, fingerprint, receipt_seq) VALUES (?, ?, ?)",
            (key_hash, fingerprint, seq),
        )

    def insert_hold(self, row: HoldRow, grants: Sequence[tuple[str, int]]) -> None:
        """Open a hold on the grants it charged."""
        self._run(
            f"INSERT INTO holds({HOLD_COLS}) VALUES ({', '.join('?' * 11)})",
            (row.receipt_id, row.capability_id, row.policy_hash, row.units, row.currency, row.created_at,
             row.expires_at, row.state, row.captured_units, row.closed_by, row.closed_seq),
        )
        self._run_many(
            "INSERT INTO hold_grants(receipt_id, capability_id, grant_index) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(row.receipt_id, cid, index) for cid, index in grants],
        )

    def due_holds(self, now: float, limit: int, touching: Sequence[str] | None = None) -> list[HoldRow]:
        """Open holds whose TTL has passed, oldest first (only those charging ``touching`` when given)."""
        sql = f"SELECT {HOLD_COLS} FROM holds WHERE state = 'open' AND expires_at <= ?"
        params: list[Any] = [now]
        if touching is not None:
            cond, more = self._in(touching)
            sql += f" AND receipt_id IN (SELECT receipt_id FROM hold_grants WHERE capability_id {cond})"
            params += more
        rows = self._all(sql + " ORDER BY expires_at, receipt_id LIMIT ?", [*params, limit])
        return [hold_row(r) for r in rows]

    def close_hold(self, receipt_id: str, state: str, captured_units: int, closed_by: str, closed_seq: int) -> None:
        """Close a hold (settled, released or expired) by the receipt at ``closed_seq``."""
        self._run(
            "UPDATE holds SET state = ?, captured_units = ?, closed_by = ?, closed_seq = ? WHERE receipt_id = ?",
            (state, captured_units, closed_by, closed_seq, receipt_id),
        )

    def adjust_cost(self, capability_id: str, grant_index: int, delta: int) -> None:
        """Add ``delta`` to a grant's cost units, clamped to [0, 2^63-1]."""
        used = self.usage(capability_id, grant_index)[1]  # in Python: no dialect overflows on the way
        self._run(
            "UPDATE usage SET cost_units = ? WHERE capability_id = ? AND grant_index = ?",
            (max(0, min(used + delta, MAX_UNITS)), capability_id, grant_index),
        )

    def hold_op(self, receipt_id: str, op_id: str) -> tuple[str, str] | None:
        """``(fingerprint, receipt body)`` of a settle/release already done under ``op_id``, or None."""
        row = self._one(
            "SELECT o.fingerprint, r.body FROM hold_ops o JOIN receipts r ON r.seq = o.receipt_seq "
            "WHERE o.receipt_id = ? AND o.op_id = ?",
            (receipt_id, op_id),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def insert_approval_answer(self, approval_id: str, name: str, role: str, at: int, receipt_id: str) -> None:
        """Record one approver's answer (its own signed receipt)."""
        self._run(
            "INSERT INTO approval_answers(approval_id, approver, role, at, receipt_id) VALUES (?, ?, ?, ?, ?)",
            (approval_id, name, role, at, receipt_id),
        )

    def insert_credential(self, name: str, role: str, token_hash: str, created_at: float) -> None:
        """Store a credential (its token's hash only)."""
        self._run(
            "INSERT INTO credentials(name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role, token_hash, created_at),
        )

    def revoke_credential(self, name: str, revoked_at: float) -> None:
        """Mark a credential revoked (it keeps its name)."""
        self._run("UPDATE credentials SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (revoked_at, name))

    def remember_hold_op(self, receipt_id: str, op_id: str, fingerprint: str, seq: int) -> None:
        """Remember the receipt at ``seq`` as the answer of ``op_id`` on a hold."""
        self._run(
            "INSERT INTO hold_ops(receipt_id, op_id, fingerprint, receipt_seq) VALUES (?, ?, ?, ?)",
            (receipt_id, op_id, fingerprint, seq),
        )
