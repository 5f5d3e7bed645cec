"""The embedded Chio kernel: capability tokens, guards, signed hash-chained receipts.

``Kernel`` is the kernel itself (thread-safe; processes may share a data directory);
``LocalChioClient`` offers it through the ``chio_sdk.ChioClient`` API in-process, ``SidecarClient``
(a ``ChioClient``) over HTTP with the kernel's extras. The sidecar and CLI live in
``chio_kernel.sidecar`` / ``chio_kernel.cli`` and are not imported here (keeps this import light).
"""

from chio_kernel._approvals import sign_approval_token
from chio_kernel._client import LocalChioClient, SidecarClient
from chio_kernel._errors import (
    ApprovalConflictError,
    ApprovalError,
    ApprovalNotFoundError,
    ApprovalTokenError,
    CapabilityError,
    ChioKernelError,
    HoldConflictError,
    IdempotencyKeyReusedError,
    KernelConflictError,
    KernelInputError,
    KernelKeyMissingError,
    UnknownHoldError,
)
from chio_kernel._kernel import ChainReport, Kernel
from chio_kernel._receipts import ChainStatus, receipt_chain_hash, receipt_signing_bytes
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import default_data_dir

__all__ = [
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalNotFoundError",
    "ApprovalTokenError",
    "CapabilityError",
    "ChainReport",
    "ChainStatus",
    "ChioKernelError",
    "HoldConflictError",
    "IdempotencyKeyReusedError",
    "Kernel",
    "KernelConflictError",
    "KernelInputError",
    "KernelKeyMissingError",
    "LocalChioClient",
    "SidecarClient",
    "UnknownHoldError",
    "canonical_json",
    "default_data_dir",
    "receipt_chain_hash",
    "receipt_signing_bytes",
    "sign_approval_token",
]
