"""The fleet's keys: kernels sharing one PostgreSQL store (docs/fleet.md).

``Kernel(store="postgresql://...")`` (or ``$CHIO_STORE``) is the same kernel on a
:class:`~chio_kernel._postgres_store.PostgresStore`, handed two things from here:

* :class:`FleetTrust` — each kernel keeps its own signing key in its data directory and registers
  the public key in the store; a token or receipt signed by ANY registered key verifies on every
  kernel of the fleet (a key registered after this kernel started is learnt the first time it is
  met). A retired key signs nothing more (its kernel's write transactions are refused inside the
  writer lock), and a capability it issued or whose delegation chain it signed denies with guard
  ``signature`` on every kernel, from the next transaction on; receipts it signed before stay
  valid, so the chain still verifies.
* :class:`FleetKeys` — listing and retiring the registered keys (``Kernel.registered_keys``,
  ``Kernel.retire_key``, ``Kernel.check_key_active``; ``chio-durable keys``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

from chio_sdk.models import CapabilityToken

from chio_kernel._capabilities import Trust, token_signers
from chio_kernel._errors import KernelInputError, KernelKeyRetiredError
from chio_kernel._postgres_store import PostgresStore, _PgReader, _PgWriter
from chio_kernel._store import StoreReader, StoreWriter

__all__ = ["FleetKeys", "FleetTrust"]

Read = Callable[[], AbstractContextManager[StoreReader]]


class FleetTrust(Trust):
    """Trust every key registered in the fleet's store (learnt on first sight); refuse retired signers."""

    learns = True

    def __init__(self, own_key: str, trusted_keys: frozenset[str], read: Read) -> None:
        """Trust ``own_key``, ``trusted_keys`` and the store's registered keys, read via ``read``."""
        super().__init__(own_key, trusted_keys)
        self._base = self.issuers
        self._read = read
        self._keys_epoch = -1
        self._retired: frozenset[str] = frozenset()

    def learn(self, st: StoreReader | None) -> None:
        """Accept every key registered in the store (retired ones too: receipts they signed before
        their retirement still verify; capabilities they signed are refused by :meth:`refused_signer`)."""
        if st is None:
            with self._read() as reader:
                self.learn(reader)
            return
        keys = cast(_PgReader, st).registered_keys()
        self.issuers = self._base | {k[0] for k in keys}

    def refused_signer(self, token: CapabilityToken) -> str | None:
        """Why ``token`` is refused: a signer retired (as known at the last write transaction), or None."""
        if not self._retired:
            return None
        retired = next((k for k in token_signers(token) if k in self._retired), None)
        if retired is None:
            return None
        return (
            f"capability {token.id} was signed by kernel key {retired}, which was retired from the "
            "fleet store; issue a new capability from an active kernel"
        )

    def refused_token(self, token: CapabilityToken) -> str | None:
        """Why ``token`` is refused: a signer retired now (read from the store), or None."""
        with self._read() as st:
            retired = cast(_PgReader, st).first_retired(token_signers(token))
        if retired is None:
            return None
        return f"capability {token.id} was signed by kernel key {retired}, which was retired"

    def on_write(self, st: StoreWriter) -> bool:
        """Reload the retired keys when the epoch (read with the writer lock) moved: True then."""
        writer = cast(_PgWriter, st)
        # The epoch comes with the writer lock (no extra round trip); when a key was retired since
        # we last looked, the verified-capability cache is dropped so every capability is re-checked
        # inside this transaction.
        if writer.keys_epoch == self._keys_epoch:
            return False
        self._retired = frozenset(writer.retired_keys())
        self._keys_epoch = writer.keys_epoch
        return True


class FleetKeys:
    """The fleet's registered kernel keys: list, retire, check this kernel's own."""

    def __init__(self, store: PostgresStore, read: Read, public_key: str, data_dir: Path) -> None:
        """Keys of ``store`` (read via ``read``); ``public_key`` / ``data_dir``: this kernel's."""
        self._store = store
        self._read = read
        self._public_key = public_key
        self._data_dir = data_dir

    @property
    def description(self) -> str:
        """The store's URL, password masked (for messages)."""
        return self._store.description

    def check_key_active(self) -> None:
        """Raise :class:`KernelKeyRetiredError` (saying what to do) if this kernel's key was retired."""
        with self._read() as st:
            retired = cast(_PgReader, st).first_retired([self._public_key])
        if retired is not None:
            raise KernelKeyRetiredError(
                f"this kernel's signing key {retired} (data directory {self._data_dir}) was retired from the "
                f"fleet store {self.description}; it signs nothing more. Start it with a new data directory "
                "(--data-dir / CHIO_HOME: a new key, registered on start) to rejoin the fleet"
            )

    def registered_keys(self) -> list[dict[str, Any]]:
        """Every kernel key registered in the store, oldest first (see ``Kernel.registered_keys``)."""
        with self._read() as st:
            rows = cast(_PgReader, st).registered_keys()
        return [
            {"public_key": k, "label": label, "registered_at": at, "retired_at": retired_at,
             "retired_reason": why, "this_kernel": k == self._public_key}
            for k, label, at, retired_at, why in rows
        ]

    def retire_key(self, public_key: str, reason: str) -> None:
        """Retire a registered kernel key (see ``Kernel.retire_key``)."""
        if not isinstance(public_key, str) or len(public_key) != 64 or any(c not in "0123456789abcdef" for c in public_key):
            raise KernelInputError(f"{public_key!r} is not a 64-hex-char (lower-case) Ed25519 public key")
        if not isinstance(reason, str) or not reason.strip():
            raise KernelInputError("reason must be a non-empty string")
        if not self._store.retire_key(public_key, reason):
            raise KernelInputError(
                f"kernel key {public_key} is not registered in this store (see `chio-durable keys list`)"
            )
