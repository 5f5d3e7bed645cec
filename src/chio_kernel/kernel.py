"""Deprecated path (one release): import ``Kernel`` and its errors from ``chio_kernel``. Every public
name the old module had still resolves here, with a DeprecationWarning."""

from __future__ import annotations

import warnings

from chio_kernel._capabilities import capability_signing_bytes
from chio_kernel._coerce import MAX_COST_UNITS, check_scope_fields
from chio_kernel._errors import CapabilityError, ChioKernelError, KernelInputError, KernelKeyMissingError
from chio_kernel._ids import uuid7
from chio_kernel._kernel import ChainReport, Kernel
from chio_kernel._receipts import receipt_chain_hash, receipt_signing_bytes, receipt_wire_dict
from chio_kernel._store_factory import resolve_store

warnings.warn(
    "chio_kernel.kernel is deprecated and goes away in the next release: import Kernel, ChainReport and "
    "the errors from chio_kernel",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CapabilityError",
    "ChainReport",
    "ChioKernelError",
    "Kernel",
    "KernelInputError",
    "KernelKeyMissingError",
    "MAX_COST_UNITS",
    "capability_signing_bytes",
    "check_scope_fields",
    "receipt_chain_hash",
    "receipt_signing_bytes",
    "receipt_wire_dict",
    "resolve_store",
    "uuid7",
]
