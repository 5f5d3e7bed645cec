"""Compatibility path: the SQLite store lives in :mod:`chio_kernel._sqlite_store`, the store interface
in :mod:`chio_kernel._store`."""

from chio_kernel._sqlite_store import DB_FILE, SCHEMA_VERSION, SQLiteStore, open_store
from chio_kernel._store import GENESIS_HASH, KernelStore

__all__ = ["DB_FILE", "GENESIS_HASH", "SCHEMA_VERSION", "KernelStore", "SQLiteStore", "open_store"]
