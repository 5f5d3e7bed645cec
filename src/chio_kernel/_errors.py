"""Every error the kernel raises on purpose, in one place, rooted at :class:`ChioKernelError`.

Each error keeps the builtin base it always had (``ValueError``, ``LookupError``,
``RuntimeError``, ``ConnectionError``), so code catching those keeps working::

    ChioKernelError
    ├── KernelInputError (ValueError)            the caller passed something the kernel cannot take
    ├── CapabilityError (ValueError)             a capability operation was refused
    ├── KernelKeyMissingError (RuntimeError)     kernel.key is gone next to a store that needs it
    ├── KernelKeyRetiredError (RuntimeError)     this kernel's key was retired from the fleet store
    ├── StoreUnavailableError (ConnectionError)  the PostgreSQL store could not be reached (retryable)
    │   └── StoreConflictError                   two fleet writers deadlocked; one was rolled back (retryable)
    ├── UnknownHoldError (ValueError)            no budget hold for that receipt id
    ├── KernelConflictError (ValueError)         the request conflicts with what is recorded (409)
    │   ├── IdempotencyKeyReusedError            a key reused for a different call
    │   └── HoldConflictError                    a hold closed twice differently, an op_id reused
    └── ApprovalError
        ├── ApprovalNotFoundError (LookupError)  no such approval (404)
        ├── ApprovalConflictError                answered already, expired, capability revoked (409)
        └── ApprovalTokenError (ValueError)      a signed approval token was refused (403)

The modules that raised them before (``_approvals``, ``_holds``, ``_postgres_store``, ``_kernel``)
re-export them, so existing imports keep working.
"""

from __future__ import annotations

__all__ = [
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalNotFoundError",
    "ApprovalTokenError",
    "CapabilityError",
    "ChioKernelError",
    "HoldConflictError",
    "IdempotencyKeyReusedError",
    "KernelConflictError",
    "KernelInputError",
    "KernelKeyMissingError",
    "KernelKeyRetiredError",
    "StoreConflictError",
    "StoreUnavailableError",
    "UnknownHoldError",
]


class ChioKernelError(Exception):
    """Root of every error the Chio kernel raises on purpose (``except ChioKernelError`` catches them all)."""


class KernelInputError(ChioKernelError, ValueError):
    """The caller passed something the kernel cannot take (wrong type, unknown field, not JSON)."""


class CapabilityError(ChioKernelError, ValueError):
    """A capability operation was refused (not a subset, unknown id, id already taken...)."""


class KernelKeyMissingError(ChioKernelError, RuntimeError):
    """``kernel.key`` is missing next to a store that holds capabilities or receipts.

    Minting a new key there would silently invalidate every stored capability and every receipt
    signature, so the kernel refuses to start; the message says how to restore the key.
    """


class KernelKeyRetiredError(ChioKernelError, RuntimeError):
    """This kernel's signing key was retired from the fleet store: it may not sign anything more."""


class StoreUnavailableError(ChioKernelError, ConnectionError):
    """The PostgreSQL server could not be used (connection refused or lost); nothing was decided.

    One of the store's ``transient_errors``: the sidecar answers it 503 ``store_unavailable``
    (retry later), as it does a busy SQLite store.
    """


class StoreConflictError(StoreUnavailableError):
    """Two write transactions of a fleet waited on each other's rows (a deadlock PostgreSQL broke by
    rolling one back); nothing was decided. The evaluation retries it itself; elsewhere retry."""


class KernelConflictError(ChioKernelError, ValueError):
    """The request conflicts with what the kernel already recorded (HTTP 409 on the sidecar).

    ``code`` is the sidecar's ``error`` field. Not retryable: the same request conflicts again.
    """

    code = "conflict"


class IdempotencyKeyReusedError(KernelConflictError):
    """An idempotency key was reused for a different call (capability, tool, operation, parameters
    or cost): refused, never decided afresh (Stripe's rule)."""

    code = "idempotency_key_reused"


class HoldConflictError(KernelConflictError):
    """A second, different settle/release of a hold that is already closed, or an ``op_id`` reused for a
    different operation. ``closed_by`` names the receipt that closed the hold (when known)."""

    code = "hold_conflict"

    def __init__(self, message: str, *, closed_by: str | None = None) -> None:
        """Keep the message and the id of the receipt that closed the hold.

        Args:
            message: what conflicts and what to do.
            closed_by: the receipt that closed the hold, when known.
        """
        super().__init__(message)
        self.closed_by = closed_by


class UnknownHoldError(ChioKernelError, ValueError):
    """No hold for that receipt id: unknown id, a deny, or an allow that declared no cost (HTTP 404)."""


class ApprovalError(ChioKernelError):
    """Root of the approval errors."""


class ApprovalNotFoundError(ApprovalError, LookupError):
    """No approval with this id in the kernel's store (HTTP 404)."""


class ApprovalConflictError(ApprovalError):
    """The approval cannot be answered any more: already answered, expired, or its capability was
    revoked (HTTP 409). Each approval is answered once."""


class ApprovalTokenError(ApprovalError, ValueError):
    """A signed approval token was refused: untrusted approver key, bad signature, bound to another
    request, parameters or subject, or outside its validity window (HTTP 403)."""
