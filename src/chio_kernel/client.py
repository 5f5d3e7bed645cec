"""``LocalChioClient``: the ``chio_sdk.ChioClient`` API, answered by an in-process :class:`Kernel`.

Same methods, signatures and return types as ``ChioClient`` (so code written for the sidecar runs
unchanged), plus the kernel's extras (idempotency keys, costs, revocation, receipt reads). Calls go
straight to the kernel on the caller's thread: no HTTP, no threads, no event-loop hops. A deny is a
receipt (``receipt.decision.verdict == "deny"``), exactly like the sidecar's HTTP 200 deny.
"""

from __future__ import annotations

import os
import time
from typing import Any

from chio_sdk.client import ChioClient, _capability_id_from_token
from chio_sdk.errors import ChioValidationError
from chio_sdk.models import (
    CallerIdentity,
    CapabilityToken,
    ChioHttpRequest,
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
        """True if the HTTP receipt is signed by this kernel (the sidecar's ``/chio/verify``)."""
        from chio_kernel.sidecar import _verify_http_receipt  # lazy: keeps ``import chio_kernel`` light

        return bool(_verify_http_receipt(self.kernel, receipt))

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
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body_hash: str | None = None,
        body_length: int = 0,
        session_id: str | None = None,
        capability_id: str | None = None,
        capability_token: str | None = None,
        model_metadata: dict[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> EvaluateResponse:
        """Evaluate an HTTP request exactly as the sidecar's ``/chio/evaluate`` does (see docs/sidecar.md)."""
        from chio_kernel.sidecar import _evaluate_http  # lazy: keeps ``import chio_kernel`` light

        request = ChioHttpRequest(
            request_id=request_id,
            method=method,
            route_pattern=route_pattern,
            path=path,
            query=query or {},
            headers=headers or {},
            caller=caller,
            body_hash=body_hash,
            body_length=body_length,
            session_id=session_id,
            capability_id=capability_id or _capability_id_from_token(capability_token),
            model_metadata=model_metadata,
            timestamp=timestamp or int(time.time()),
        )
        return EvaluateResponse.model_validate(_evaluate_http(self.kernel, request, capability_token))

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
