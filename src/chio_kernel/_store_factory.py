"""Choosing and opening the kernel's store: SQLite in the data directory, or a fleet's PostgreSQL.

``Kernel.__init__`` calls :func:`resolve_store` then :func:`open_kernel_store`; the trust that goes
with the store (a lone kernel's keys, or every key registered in the fleet's store) comes from
:func:`store_trust`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from chio_kernel._capabilities import Trust
from chio_kernel._errors import KernelInputError, KernelKeyMissingError
from chio_kernel._secrets import mask_secrets
from chio_kernel._sqlite_store import DB_FILE, SQLiteStore
from chio_kernel._store import KernelStore, StoreReader, StoreWriter
from chio_kernel.signing import KEY_FILE

if TYPE_CHECKING:
    from chio_kernel._fleet import FleetKeys

__all__ = ["STORE_ENV", "StoreGate", "open_kernel_store", "refuse_missing_key", "resolve_store", "store_trust"]

#: The environment variable that selects the store when ``store`` is not given (docs/fleet.md).
STORE_ENV = "CHIO_STORE"


class StoreGate:
    """The kernel's store behind a closed flag: the ``read`` / ``write`` every service is handed."""

    __slots__ = ("store", "_name", "closed")

    def __init__(self, store: KernelStore, name: str) -> None:
        """Guard ``store``; ``name`` (the kernel's repr) says what is closed."""
        self.store = store
        self._name = name
        self.closed = False

    def check_open(self) -> None:
        """Raise ``RuntimeError`` once closed."""
        if self.closed:
            raise RuntimeError(f"{self._name} is closed; create a new Kernel")

    def read(self) -> AbstractContextManager[StoreReader]:
        """A short read transaction (``RuntimeError`` once closed)."""
        if self.closed:
            raise RuntimeError(f"{self._name} is closed; create a new Kernel")
        return self.store.read()

    def write(self) -> AbstractContextManager[StoreWriter]:
        """A write transaction (``RuntimeError`` once closed)."""
        if self.closed:
            raise RuntimeError(f"{self._name} is closed; create a new Kernel")
        return self.store.write()

    def close(self) -> None:
        """Close the store (once)."""
        if not self.closed:
            self.closed = True
            self.store.close()


def resolve_store(store: str | None) -> str | None:
    """The PostgreSQL URL a kernel should use, or None for the default SQLite store in its data dir.

    Args:
        store: ``postgresql://...`` / ``postgres://...`` selects PostgreSQL; ``None`` (then
            ``$CHIO_STORE``), ``""`` or ``"sqlite"`` the SQLite store.

    Returns:
        The URL, or None for SQLite.

    Raises:
        KernelInputError: anything else.
    """
    value = store if store is not None else os.environ.get(STORE_ENV, "")
    if not isinstance(value, str):
        raise KernelInputError(f"store must be a postgresql:// URL or 'sqlite', got {type(value).__name__}")
    value = value.strip()
    if value in ("", "sqlite"):
        return None
    if value.startswith(("postgresql://", "postgres://")):
        return value
    where = "store" if store is not None else f"${STORE_ENV}"
    raise KernelInputError(
        f"{where} must be a PostgreSQL URL (postgresql://user@host:5432/dbname) or 'sqlite' (the default: "
        f"kernel.db in the data directory), got {mask_secrets(value)[:60]!r}"
    )


def refuse_missing_key(data_dir: Path, fsync: bool) -> None:
    """Refuse to start if ``kernel.key`` is absent but the SQLite store in ``data_dir`` holds
    capabilities or receipts (a new key would silently orphan them).

    Raises:
        KernelKeyMissingError: saying how to restore the key.
    """
    if (data_dir / KEY_FILE).exists() or not (data_dir / DB_FILE).exists():
        return
    probe = SQLiteStore(data_dir, fsync=fsync)
    try:
        counts = probe.stored_counts()
    finally:
        probe.close()
    if not counts.capabilities and not counts.receipts:
        return  # a store that never held anything: nothing to orphan
    key_hint = f" (its public key {counts.newest_key})" if counts.newest_key else ""
    raise KernelKeyMissingError(
        f"the kernel signing key {data_dir / KEY_FILE} is missing, but the store {data_dir / DB_FILE} holds "
        f"{counts.capabilities} capabilities and {counts.receipts} receipts signed with it; a new key would "
        f"invalidate all of them. Restore kernel.key from your backup into {data_dir}{key_hint}; or, to start "
        f"a new kernel identity, use another data directory (--data-dir / CHIO_HOME) or move kernel.db, "
        f"kernel.db-wal and kernel.db-shm out of {data_dir}."
    )


def open_kernel_store(dsn: str | None, data_dir: Path, *, fsync: bool, signer_key: str) -> KernelStore:
    """Open the store: SQLite in ``data_dir`` (``dsn`` None), else the fleet's PostgreSQL store.

    Args:
        dsn: what :func:`resolve_store` answered.
        data_dir: the kernel's data directory (SQLite's ``kernel.db``; the fleet label).
        fsync: SQLite ``synchronous=FULL``.
        signer_key: the kernel's public key (registered in a fleet's store).

    Returns:
        The open store.
    """
    if dsn is None:
        return SQLiteStore(data_dir, fsync=fsync)
    from chio_kernel._postgres_store import PostgresStore  # psycopg only when a fleet is used

    return PostgresStore(dsn, signer_key=signer_key, label=f"{socket.gethostname()}:{data_dir}")


def store_trust(
    store: KernelStore,
    own_key: str,
    trusted_keys: frozenset[str],
    read: Callable[[], AbstractContextManager[StoreReader]],
    data_dir: Path,
) -> tuple[Trust, FleetKeys | None]:
    """The trust that goes with ``store`` and, for a fleet's store, its key registry.

    Returns:
        ``(Trust, None)`` on SQLite; ``(FleetTrust, FleetKeys)`` on PostgreSQL.
    """
    if isinstance(store, SQLiteStore):
        return Trust(own_key, trusted_keys), None
    from chio_kernel._fleet import FleetKeys, FleetTrust
    from chio_kernel._postgres_store import PostgresStore

    assert isinstance(store, PostgresStore)
    return FleetTrust(own_key, trusted_keys, read), FleetKeys(store, read, own_key, data_dir)
