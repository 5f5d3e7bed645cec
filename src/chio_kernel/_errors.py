"""The kernel's errors: one root, :class:`ChioKernelError`.

Each error also keeps the builtin base it always had (``ValueError`` / ``RuntimeError``), so code
catching those keeps working.
"""

from __future__ import annotations

__all__ = ["CapabilityError", "ChioKernelError", "KernelInputError", "KernelKeyMissingError"]


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
