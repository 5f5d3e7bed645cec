"""The embedded Chio kernel: capability tokens, guards, signed hash-chained receipts.

``Kernel`` is the kernel itself (thread-safe; processes may share a data directory);
``LocalChioClient`` offers it through the ``chio_sdk.ChioClient`` API in-process, ``SidecarClient``
(a ``ChioClient``) over HTTP with the kernel's extras. The sidecar and CLI live in
``chio_kernel.sidecar`` / ``chio_kernel.cli`` and are not imported here (keeps this import light).
Signed Merkle checkpoints and their proofs: the pure verifiers are in ``chio_kernel.proofs``;
``verify_evidence`` checks an evidence package offline (docs/checkpoints.md).
"""

from chio_kernel._approvals import sign_approval_token
from chio_kernel._client import LocalChioClient, SidecarClient
from chio_kernel._errors import (
    ApprovalConflictError,
    ApprovalError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTokenError,
    CapabilityError,
    CapabilityLimitError,
    ChioKernelError,
    CredentialError,
    HoldConflictError,
    IdempotencyKeyReusedError,
    KernelConflictError,
    KernelInputError,
    KernelKeyMissingError,
    ProofError,
    UnknownHoldError,
)
from chio_kernel._checkpoints import CheckpointReport
from chio_kernel._evidence import EvidenceReport, verify_evidence
from chio_kernel._kernel import ChainReport, Kernel
from chio_kernel._paging import Page
from chio_kernel._receipts import ChainStatus, receipt_chain_hash, receipt_signing_bytes
from chio_kernel._roles import OPEN_PRINCIPAL, Principal, Role
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import default_data_dir
from chio_kernel._webhooks import WebhookSettings, new_webhook_secret, sign_webhook, verify_webhook

__all__ = [
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalTokenError",
    "CapabilityError",
    "CapabilityLimitError",
    "ChainReport",
    "ChainStatus",
    "CheckpointReport",
    "ChioKernelError",
    "EvidenceReport",
    "CredentialError",
    "HoldConflictError",
    "IdempotencyKeyReusedError",
    "Kernel",
    "KernelConflictError",
    "KernelInputError",
    "KernelKeyMissingError",
    "LocalChioClient",
    "ProofError",
    "OPEN_PRINCIPAL",
    "Principal",
    "Role",
    "Page",
    "SidecarClient",
    "UnknownHoldError",
    "WebhookSettings",
    "canonical_json",
    "default_data_dir",
    "new_webhook_secret",
    "receipt_chain_hash",
    "receipt_signing_bytes",
    "sign_approval_token",
    "verify_evidence",
    "sign_webhook",
    "verify_webhook",
]
