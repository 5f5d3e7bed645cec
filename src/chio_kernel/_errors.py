"""Every error the kernel raises on purpose, in one place, rooted at :class:`ChioKernelError`.

Each error keeps the builtin base it always had (``ValueError``, ``LookupError``,
``RuntimeError``, ``ConnectionError``), so code catching those keeps working::

    ChioKernelError
    ├── KernelInputError (ValueError)            the caller passed something the kernel cannot take
    ├── CapabilityError (ValueError)             a capability operation was refused
    │   └── CapabilityLimitError                 too many grants, or a delegation chain too deep (422)
    ├── KernelKeyMissingError (RuntimeError)     kernel.key is gone next to a store that needs it
    ├── KernelKeyRetiredError (RuntimeError)     this kernel's key was retired from the fleet store
    ├── StoreUnavailableError (ConnectionError)  the PostgreSQL store could not be reached (retryable)
    │   └── StoreConflictError                   two fleet writers deadlocked; one was rolled back (retryable)
    ├── UnknownHoldError (ValueError)            no budget hold for that receipt id
    ├── ProofError (ValueError)                  a checkpoint, proof or evidence package does not verify
    ├── KernelConflictError (ValueError)         the request conflicts with what is recorded (409)
    │   ├── IdempotencyKeyReusedError            a key reused for a different call
    │   └── HoldConflictError                    a hold closed twice differently, an op_id reused
    ├── CredentialError (ValueError)             a credential was refused (bad name or role, taken, unknown)
    └── ApprovalError
        ├── ApprovalNotFoundError (LookupError)  no such approval (404)
        ├── ApprovalConflictError                answered already, expired, capability revoked (409)
        ├── ApprovalTokenError (ValueError)      a signed approval token was refused (403)
        └── ApprovalForbiddenError (PermissionError)  this principal may not answer this approval (403)

The modules that raised them before (``_approvals``, ``_holds``, ``_postgres_store``, ``_kernel``)
re-export them, so existing imports keep working.
"""

from __future__ import annotations

__all__ = [
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalTokenError",
    "CapabilityError",
    "CapabilityLimitError",
    "ChioKernelError",
    "CredentialError",
    "HoldConflictError",
    "IdempotencyKeyReusedError",
    "KernelConflictError",
    "KernelInputError",
    "KernelKeyMissingError",
    "KernelKeyRetiredError",
    "ProofError",
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


class CapabilityLimitError(CapabilityError):
    """A capability would exceed the kernel's limits: more grants than ``max_grants``, or a
    delegation chain deeper than ``max_delegation_depth`` (HTTP 422 ``limit_exceeded``). The
    message names the limit and how to raise it."""

    code = "limit_exceeded"


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


class ProofError(ChioKernelError, ValueError):
    """A checkpoint, an inclusion or consistency proof, or an evidence package does not verify (the
    message names what is wrong)."""


class ApprovalForbiddenError(ApprovalError, PermissionError):
    """This principal may not answer this approval: its role is not approver or operator, it is the
    principal whose call waits, or it answered this approval already (HTTP 403)."""


class CredentialError(ChioKernelError, ValueError):
    """A credential operation was refused: a malformed name or unknown role, a name already taken, or
    an unknown credential (``docs/security.md``)."""
