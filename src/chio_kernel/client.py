"""``LocalChioClient``: the ``chio_sdk.ChioClient`` API, answered by an in-process :class:`Kernel`.

Same methods, signatures and return types as ``ChioClient`` (so code written for the sidecar runs
unchanged), plus the kernel's extras (idempotency keys, costs, revocation, receipt reads). Calls go
straight to the kernel on the caller's thread: no HTTP, no threads, no event-loop hops. A deny is a
receipt (``receipt.decision.verdict == "deny"``), exactly like the sidecar's HTTP 200 deny.
"""

from __future__ import annotations

import os
from typing import Any

from chio_sdk.client import ChioClient
from chio_sdk.errors import ChioError, ChioValidationError
from chio_sdk.models import (
    CallerIdentity,
    CapabilityToken,
    ChioReceipt,
    ChioScope,
    EvaluateResponse,
    GuardEvidence,
    HttpReceipt,
    MonetaryAmount,
    Operation,
)

from chio_kernel.kernel import CapabilityError, Kernel

__all__ = ["LocalChioClient"]


class LocalChioClient:
    """An async, in-process stand-in for ``chio_sdk.ChioClient`` backed by a :class:`Kernel`.

    Args:
        data_dir: the kernel's data directory (default ``$CHIO_HOME`` or ``~/.chio-durable``);
            ignored when ``kernel`` is given.
        kernel: an existing kernel to share (e.g. with a sidecar or other clients in this process).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, kernel: Kernel | None = None) -> None:
        self._owns_kernel = kernel is None
        self.kernel: Kernel = kernel if kernel is not None else Kernel(data_dir)
        self.base_url: str = f"embedded:{self.kernel.data_dir}"

    def __repr__(self) -> str:
        return f"LocalChioClient({self.base_url!r})"

    # --- lifecycle ---

    async def close(self) -> None:
        """Close the kernel if this client created it (a shared kernel stays open)."""
        if self._owns_kernel:
            self.kernel.close()

    async def __aenter__(self) -> LocalChioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- ChioClient API ---

    async def health(self) -> dict[str, Any]:
        """Kernel status (``status``, ``kernel_key``, ``data_dir``, ``receipts``)."""
        return self.kernel.health()

    async def create_capability(
        self,
        *,
        subject: str,
        scope: ChioScope,
        ttl_seconds: int = 3600,
        capability_id: str | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> CapabilityToken:
        """Issue a capability token (see :meth:`Kernel.create_capability`)."""
        return self.kernel.create_capability(
            subject=subject, scope=scope, ttl_seconds=ttl_seconds, capability_id=capability_id, rate_limit=rate_limit
        )

    async def validate_capability(self, token: CapabilityToken) -> bool:
        """True if the token is valid now (signature, issuer, time, revocation, delegation chain)."""
        valid, _reason = self.kernel.validate_capability(token)
        return valid

    async def attenuate_capability(self, token: CapabilityToken, *, new_scope: ChioScope) -> CapabilityToken:
        """A child token with ``new_scope`` ⊆ ``token.scope``; ``ChioValidationError`` if not a subset."""
        if not new_scope.is_subset_of(token.scope):
            raise ChioValidationError("new_scope must be a subset of the parent token scope")
        try:
            return self.kernel.attenuate_capability(token, new_scope)
        except CapabilityError as err:
            raise ChioValidationError(str(err)) from err

    async def verify_receipt(self, receipt: ChioReceipt) -> bool:
        """True if the receipt's signature verifies (this kernel or a trusted key)."""
        return self.kernel.verify_receipt(receipt)

    async def verify_http_receipt(self, receipt: HttpReceipt) -> bool:
        """HTTP receipts are not issued by this kernel; raises ``ChioError`` (as the sidecar answers 4xx)."""
        raise ChioError(
            "the embedded kernel does not issue or verify HTTP receipts; use evaluate_tool_call receipts",
            code="HTTP_404",
        )

    async def verify_receipt_chain(self, receipts: list[ChioReceipt]) -> bool:
        """``ChioClient.verify_receipt_chain``: each receipt's ``content_hash`` is the previous one's hash."""
        return await ChioClient.verify_receipt_chain(self, receipts)  # type: ignore[arg-type]

    async def evaluate_tool_call(
        self,
        *,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None,
        operation: Operation = Operation.INVOKE,
    ) -> ChioReceipt:
        """Evaluate one tool call; returns the signed receipt (allow or deny)."""
        return self.kernel.evaluate(
            capability_id,
            tool_server,
            tool_name,
            parameters,
            idempotency_key=idempotency_key,
            cost=cost,
            operation=operation,
        )

    async def evaluate_http_request(
        self,
        *,
        request_id: str,
        method: str,
        route_pattern: str,
        path: str,
        caller: CallerIdentity,
        **kwargs: Any,
    ) -> EvaluateResponse:
        """HTTP-substrate evaluation is not part of the embedded kernel; raises ``ChioError``."""
        raise ChioError(
            "the embedded kernel evaluates tool calls only (evaluate_tool_call); HTTP request evaluation "
            "needs the upstream Chio HTTP sidecar",
            code="HTTP_404",
        )

    @staticmethod
    def collect_evidence(receipts: list[ChioReceipt]) -> list[GuardEvidence]:
        """All guard evidence of the given receipts (``ChioClient.collect_evidence``)."""
        return ChioClient.collect_evidence(receipts)

    # --- kernel extras ---

    async def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and its descendants; returns the revoked ids."""
        return self.kernel.revoke_capability(capability_id)

    async def get_receipt(self, receipt_id: str) -> ChioReceipt | None:
        """The stored receipt with this id, or None."""
        return self.kernel.get_receipt(receipt_id)

    async def list_receipts(
        self, capability_id: str | None = None, *, limit: int | None = None, after_seq: int | None = None
    ) -> list[ChioReceipt]:
        """Stored receipts in chain order, optionally for one capability (paged by ``limit``/``after_seq``)."""
        return self.kernel.list_receipts(capability_id=capability_id, limit=limit, after_seq=after_seq)
