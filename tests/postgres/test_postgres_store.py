"""``PostgresStore`` against the store interface's guarantees (chio_kernel._store), on a real server."""

from __future__ import annotations

import socket
from chio_kernel import ChioKernelError

import pytest
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel._postgres_store import (
        KernelKeyRetiredError,
    PostgresStore,
    StoreUnavailableError,
    mask_dsn,
)
from chio_kernel._store import GENESIS_HASH, CapabilityRow, KernelStore

KEY_A = "a" * 64
KEY_B = "b" * 64


def _row(cap_id: str, parent: str | None = None) -> CapabilityRow:
    return CapabilityRow(cap_id, '{"id": "%s"}' % cap_id, parent, "agent:x", 1, 2, None, None)


def _chain_is_free(dsn: str, key: str) -> bool:
    """Can another connection lock ``key``'s chain head right now?"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT 1 FROM chain_heads WHERE kernel_id = %s FOR UPDATE", (key,))
            free = True
        except psycopg.errors.LockNotAvailable:
            free = False
        conn.execute("ROLLBACK")
    return free


def test_is_a_kernel_store(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    assert isinstance(store, KernelStore)
    with store.read() as r:
        assert r.chain_head() == (0, GENESIS_HASH)
        assert r.receipt_count() == 0
    store.close()


def test_a_write_locks_only_its_own_kernels_chain_until_commit(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    other = PostgresStore(pg_dsn, signer_key=KEY_B)
    with other.write() as w:
        w.append_receipt(1, "rcpt-b1", "cap-1", "allow", "hb1", "{}")
    with store.write():  # the first write transaction of a kernel creates its chain head row
        pass
    assert _chain_is_free(pg_dsn, KEY_A)
    with store.write() as w:
        assert not _chain_is_free(pg_dsn, KEY_A)  # another writer of this kernel's chain waits here
        assert _chain_is_free(pg_dsn, KEY_B)  # another kernel's writers do not
        with other.write() as wb:  # and write meanwhile, on their own chain
            assert wb.chain_head() == (1, "hb1")
            wb.append_receipt(2, "rcpt-b2", "cap-1", "allow", "hb2", "{}")
        seq = w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
        assert seq == 3  # the fleet-wide order, not the position in the chain
    assert _chain_is_free(pg_dsn, KEY_A)
    assert store.commits == 2
    with store.read() as r:
        assert r.chain_head() == (1, "h1")
        assert r.chains() == sorted([(KEY_A, 1, "h1"), (KEY_B, 2, "hb2")])
        assert r.chain_receipts(KEY_B, 0, 10) == [(1, "{}"), (2, "{}")]
    with other.read() as r:
        assert r.chain_head() == (2, "hb2")
    store.close()
    other.close()


def test_an_exception_rolls_the_whole_transaction_back(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with pytest.raises(RuntimeError, match="boom"):
        with store.write() as w:
            w.insert_capability(_row("cap-1"), 1.0)
            w.charge("cap-1", 0, 5)
            w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
            raise RuntimeError("boom")
    with store.read() as r:
        assert r.receipt_count() == 0
        assert r.capability("cap-1") is None
        assert r.usage_of("cap-1") == []
    assert store.commits == 0 and _chain_is_free(pg_dsn, KEY_A)
    store.close()


def test_the_chain_cannot_fork_even_without_the_lock(pg_dsn: str) -> None:
    """Two receipts at the same place of one kernel's chain cannot both commit."""
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with store.write() as w:
        w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
    with psycopg.connect(pg_dsn, autocommit=True) as raw:
        with pytest.raises(psycopg.errors.UniqueViolation):
            raw.execute("INSERT INTO receipts(id, capability_id, verdict, chain_hash, body, kernel_id, chain_seq) "
                        "VALUES ('rcpt-fork', 'cap-1', 'allow', 'h2', '{}', %s, 1)", (KEY_A,))
    store.close()


def test_budgets_rates_idempotency_revocations(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    big = 2**63 - 1
    with store.write() as w:
        w.insert_capability(_row("cap-root"), 1.0)
        w.insert_capability(_row("cap-child", "cap-root"), 2.0)
        w.insert_capability(_row("cap-grandchild", "cap-child"), 3.0)
        assert w.usage("cap-root", 0) == (0, 0)
        w.charge("cap-root", 0, big)
        w.charge("cap-root", 0, big)  # saturates instead of overflowing BIGINT
        assert w.usage("cap-root", 0) == (2, big)
        w.record_rate_event("cap-root", 100.0)
        w.record_rate_event("cap-root", 105.0)
        assert w.rate_window("cap-root", 111.0, 10.0) == (1, 105.0)  # the event at 100 left the window
        w.append_receipt(1, "rcpt-1", "cap-root", "allow", "h1", '{"id": "rcpt-1"}')
        w.remember_idempotency("k1", 1)
        assert w.idempotent_receipt("k1") == '{"id": "rcpt-1"}'
        assert w.idempotent_receipt("k2") is None
        assert w.capability_subtree("cap-root") == ["cap-root", "cap-child", "cap-grandchild"]
        w.insert_revocations([("cap-child", 5.0, "revoked"), ("cap-grandchild", 5.0, "ancestor")])
        w.insert_revocations([("cap-child", 9.0, "again")])  # an id already revoked keeps its row
        assert w.head_and_revoked(["cap-grandchild", "cap-child", "cap-root"])[:2] == (1, "h1")
        assert w.head_and_revoked(["cap-root"]) == (1, "h1", None)
    with store.read() as r:
        assert r.revocation("cap-child") == (5.0, "revoked")
        assert r.first_revoked(["cap-root", "cap-grandchild"]) == "cap-grandchild"
        assert r.usage_of("cap-root") == [(0, 2, big)]
        assert r.capability_tokens() == [_row(c).token for c in ("cap-root", "cap-child", "cap-grandchild")]
        assert r.capability("cap-child") == _row("cap-child", "cap-root")
    store.close()


def test_receipts_by_capability_after_catch_up(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with store.write() as w:
        for seq in range(1, 7):
            w.append_receipt(seq, f"rcpt-{seq}", f"cap-{seq % 2}", "allow", f"h{seq}", f'"{seq}"')
    store.catch_up_capability_index()  # nothing to do: indexed on append
    with store.read() as r:
        assert r.receipts_after(0, None, "cap-1") == [(1, '"1"'), (3, '"3"'), (5, '"5"')]
        assert r.receipts_after(2, 2) == [(3, '"3"'), (4, '"4"')]
        assert r.receipt_body("rcpt-4") == '"4"'
    store.close()


def test_a_snapshot_does_not_see_later_commits(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with store.snapshot() as snap:
        assert snap.receipt_count() == 0
        with store.write() as w:  # a writer is not blocked by the snapshot
            w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
        assert snap.receipt_count() == 0
    with store.snapshot() as snap:
        assert snap.receipt_count() == 1
    store.close()


def test_a_retired_key_cannot_write(pg_dsn: str) -> None:
    a = PostgresStore(pg_dsn, signer_key=KEY_A, label="host-a:/srv/chio")
    b = PostgresStore(pg_dsn, signer_key=KEY_B)
    assert b.retire_key(KEY_A, "host decommissioned")
    assert not b.retire_key("c" * 64, "unknown")
    with pytest.raises(KernelKeyRetiredError, match="retired"):
        with a.write() as w:
            w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
    with b.write() as w:  # the others go on
        w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
    with a.read() as r:
        keys = {k[0]: k for k in r.registered_keys()}
        assert keys[KEY_A][1] == "host-a:/srv/chio" and keys[KEY_A][4] == "host decommissioned"
        assert keys[KEY_B][3] is None
        assert r.first_retired([KEY_B, KEY_A]) == KEY_A
    a.close()
    b.close()


def test_an_unreachable_server_is_a_transient_store_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailableError, match="cannot connect") as info:
        PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/nothing", connect_timeout=5)
    # a kernel error, and the builtin ConnectionError (the sidecar answers the store's transient errors 503)
    assert isinstance(info.value, ChioKernelError) and isinstance(info.value, ConnectionError)


def test_a_lost_connection_is_transient_and_the_next_transaction_reconnects(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'chio-kernel' AND pid <> pg_backend_pid()")
    with pytest.raises(StoreUnavailableError):
        with store.read() as r:
            r.receipt_count()
    with store.write() as w:
        w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
    with store.read() as r:
        assert r.receipt_count() == 1
    store.close()


def test_the_dsn_password_is_masked_in_messages() -> None:
    assert mask_dsn("postgresql://chio:s3cret@db.internal:5432/chio") == "postgresql://chio:***@db.internal:5432/chio"
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        PostgresStore("mysql://x")


def test_a_forked_child_gets_its_own_connection_and_the_parent_keeps_its_own(pg_dsn: str) -> None:
    import os

    store = PostgresStore(pg_dsn, signer_key=KEY_A)
    with store.write() as w:
        w.append_receipt(1, "rcpt-1", "cap-1", "allow", "h1", "{}")
    pid = os.fork()
    if pid == 0:  # the child: writes through a fresh connection, never touching the parent's session
        code = 1
        try:
            with store.write() as w:
                w.append_receipt(2, "rcpt-2", "cap-1", "allow", "h2", "{}")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with store.write() as w:  # the parent's connection still works
        w.append_receipt(3, "rcpt-3", "cap-1", "allow", "h3", "{}")
    with store.read() as r:
        assert r.chain_head() == (3, "h3") and r.receipt_count() == 3
    store.close()
