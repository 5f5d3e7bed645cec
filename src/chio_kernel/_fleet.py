"""``PostgresKernel``: the :class:`~chio_kernel.Kernel` of a fleet sharing one PostgreSQL store.

``Kernel(store="postgresql://...")`` (or ``$CHIO_STORE``) builds one. It is the same kernel on a
:class:`~chio_kernel._postgres_store.PostgresStore`, plus the fleet's keys:

* each kernel keeps its own signing key in its data directory and registers the public key in
  the store; a token or receipt signed by ANY registered key verifies on every kernel of the
  fleet (a key registered after this kernel started is learned the first time it is met);
* a retired key (:meth:`PostgresKernel.retire_key`, ``chio-durable keys retire``) signs nothing
  more (its kernel's write transactions are refused inside the writer lock), and a capability it
  issued or whose delegation chain it signed denies with guard ``signature`` on every kernel, from
  the next transaction on; receipts it signed before stay valid, so the chain still verifies.
"""

from __future__ import annotations

from typing import Any, cast

from chio_sdk.models import CapabilityToken

from chio_kernel._postgres_store import KernelKeyRetiredError, PostgresStore, _PgReader, _PgWriter
from chio_kernel._store import StoreReader, StoreWriter
from chio_kernel._capabilities import Capabilities
from chio_kernel._coerce import _coerce_token
from chio_kernel._kernel import Kernel, KernelInputError, _EvalRequest

__all__ = ["PostgresKernel"]


class PostgresKernel(Kernel):
    """A :class:`Kernel` whose store is a PostgreSQL database shared by a fleet (see the module doc)."""

    _keys_epoch: int = -1
    _retired: frozenset[str] = frozenset()

    @property
    def _pg(self) -> PostgresStore:
        return cast(PostgresStore, self._store)

    @property
    def store(self) -> str:
        """The store's URL, password masked (for messages)."""
        return self._pg.description

    def __repr__(self) -> str:
        return f"Kernel(data_dir={str(self.data_dir)!r}, store={self.store!r}, key={self.public_key_hex[:16]}…)"

    def health(self) -> dict[str, Any]:
        """Status summary; ``store`` names the PostgreSQL store (password masked)."""
        out = super().health()
        out["store"] = self.store
        return out

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same capability component, with the fleet's trust rule (see _FleetCapabilities).
        self._capabilities = _FleetCapabilities(
            self, self._signer, self.trusted_keys, lambda: self._clock(), self._read, self._write
        )
        self._caps = self._capabilities._caps

    # --- trust: every registered key ---

    def _learn_keys(self, st: StoreReader) -> None:
        """Accept every key registered in the store (retired ones too: receipts they signed before
        their retirement still verify; capabilities they signed are refused by ``_retired``)."""
        keys = cast(_PgReader, st).registered_keys()
        self._issuers = frozenset({self.public_key_hex}) | self.trusted_keys | {k[0] for k in keys}
        self._capabilities._issuers = self._issuers

    def _verify_receipt_dict(self, data: dict[str, Any]) -> str | None:
        if data.get("kernel_key") not in self._issuers:
            with self._read() as st:
                self._learn_keys(st)
        return super()._verify_receipt_dict(data)

    # --- retired keys: checked inside every evaluation's transaction ---

    def _evaluate_in(self, st: StoreWriter, req: _EvalRequest) -> Any:
        writer = cast(_PgWriter, st)
        # The epoch comes with the writer lock (no extra round trip); when a key was retired since
        # we last looked, reload the retired set and drop the verified-capability cache, so every
        # capability is re-checked (``_static_check`` below) inside this transaction.
        if writer.keys_epoch != self._keys_epoch:
            self._retired = frozenset(writer.retired_keys())
            self._keys_epoch = writer.keys_epoch
            self._caps.clear()
        return super()._evaluate_in(st, req)

    def validate_capability(self, token: Any) -> tuple[bool, str | None]:
        """As :meth:`Kernel.validate_capability`, and no signer of the token may be retired."""
        valid, reason = super().validate_capability(token)
        if not valid:
            return valid, reason
        tok = _coerce_token(token)
        with self._read() as st:
            retired = cast(_PgReader, st).first_retired(_signers(tok))
        if retired is not None:
            return False, f"capability {tok.id} was signed by kernel key {retired[:16]}…, which was retired"
        return True, None

    # --- the fleet's keys ---

    def check_key_active(self) -> None:
        """Raise :class:`KernelKeyRetiredError` (saying what to do) if this kernel's own signing key
        was retired from the store: it could sign nothing, so a sidecar on it refuses to start."""
        with self._read() as st:
            retired = cast(_PgReader, st).first_retired([self.public_key_hex])
        if retired is not None:
            raise KernelKeyRetiredError(
                f"this kernel's signing key {retired[:16]}… (data directory {self.data_dir}) was retired from the "
                f"fleet store {self.store}; it signs nothing more. Start it with a new data directory "
                "(--data-dir / CHIO_HOME: a new key, registered on start) to rejoin the fleet"
            )

    def registered_keys(self) -> list[dict[str, Any]]:
        """Every kernel key registered in the store, oldest first: ``public_key``, ``label``
        (host:data_dir), ``registered_at``, ``retired_at`` (None while active), ``retired_reason``,
        ``this_kernel``."""
        with self._read() as st:
            rows = cast(_PgReader, st).registered_keys()
        return [
            {"public_key": k, "label": label, "registered_at": at, "retired_at": retired_at,
             "retired_reason": why, "this_kernel": k == self.public_key_hex}
            for k, label, at, retired_at, why in rows
        ]

    def retire_key(self, public_key: str, reason: str = "retired") -> None:
        """Retire a registered kernel key (see the module doc). Not reversible: give the host a new
        data directory, hence a new key. An unknown key raises :class:`KernelInputError`."""
        if not isinstance(public_key, str) or len(public_key) != 64 or any(c not in "0123456789abcdef" for c in public_key):
            raise KernelInputError(f"{public_key!r} is not a 64-hex-char (lower-case) Ed25519 public key")
        if not isinstance(reason, str) or not reason.strip():
            raise KernelInputError("reason must be a non-empty string")
        if not self._pg.retire_key(public_key, reason):
            raise KernelInputError(
                f"kernel key {public_key[:16]}… is not registered in this store (see `chio-durable keys list`)"
            )


def _signers(token: CapabilityToken) -> list[str]:
    """The keys that signed a token: its issuer and every delegation link's delegator."""
    return [token.issuer, *(link.delegator for link in token.delegation_chain)]


class _FleetCapabilities(Capabilities):
    """Capabilities whose signature check trusts every key registered in the fleet's store (learnt
    on first sight) and refuses tokens signed by a retired key."""

    def __init__(self, kernel: PostgresKernel, *args: Any) -> None:
        super().__init__(*args)
        self._kernel = kernel

    def _static_check(self, st: StoreReader | None, token: CapabilityToken) -> str | None:
        kernel = self._kernel
        if any(k not in self._issuers for k in _signers(token)):  # a kernel that joined after this one started
            if st is not None:
                kernel._learn_keys(st)
            else:
                with kernel._read() as reader:
                    kernel._learn_keys(reader)
        problem = super()._static_check(st, token)
        if problem is None and kernel._retired:
            retired = next((k for k in _signers(token) if k in kernel._retired), None)
            if retired is not None:
                return (
                    f"capability {token.id} was signed by kernel key {retired[:16]}…, which was retired from the "
                    "fleet store; issue a new capability from an active kernel"
                )
        return problem
