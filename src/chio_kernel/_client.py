"""Two clients with the ``chio_sdk.ChioClient`` API and the kernel's extras.

* :class:`LocalChioClient` answers from an in-process :class:`Kernel`: calls go straight to the
  kernel on the caller's thread, no HTTP, no threads, no event-loop hops.
* :class:`SidecarClient` IS-A ``chio_sdk.ChioClient`` for the sidecar over HTTP, on an ``httpx``
  client of its own: it knows its URL (``base_url``), sends the kernel's optional fields
  (idempotency key, cost, operation), can send a bearer token, and reads/revokes through the
  sidecar's own endpoints. Use it wherever a stock ``ChioClient`` would go.

Both: same methods, signatures and return types as ``ChioClient`` (so code written for the sidecar
runs unchanged), plus the kernel's extras (idempotency keys, costs, revocation, receipt reads). A
deny is a receipt (``receipt.decision.verdict == "deny"``), exactly like the sidecar's HTTP 200 deny.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx
from chio_sdk.client import ChioClient
from chio_sdk.errors import (
    ChioConnectionError,
    ChioDeniedError,
    ChioError,
    ChioTimeoutError,
    ChioValidationError,
)
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

from chio_kernel._approvals import PENDING_HEADER, PENDING_VERDICT
from chio_kernel._kernel import CapabilityError, Kernel
from chio_kernel._secrets import mask_secrets

__all__ = ["LocalChioClient", "SidecarClient", "capability_id_from_token"]


def capability_id_from_token(raw_token: str | None) -> str | None:
    """The ``id`` of a capability token given as JSON text; ``None`` if absent or not a token.

    What ``ChioClient.evaluate_http_request`` does with its ``capability_token`` argument: best
    effort, the kernel then validates the token itself.
    """
    if raw_token is None:
        return None
    try:
        return CapabilityToken.model_validate_json(raw_token).id
    except ValueError:  # pydantic's ValidationError: not a token
        return None


class _HttpRequestEvaluation:
    """``evaluate_http_request`` of both clients: the one place a ``ChioHttpRequest`` is assembled.

    Each client says how the assembled request is evaluated (``_evaluate_http``): in process by the
    kernel, or by the sidecar's ``/chio/evaluate``.
    """

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
        """Evaluate an HTTP request as the sidecar's ``/chio/evaluate`` does (see docs/sidecar.md).

        ``capability_id`` defaults to the id of ``capability_token``; ``timestamp`` to now.
        """
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
            capability_id=capability_id or capability_id_from_token(capability_token),
            model_metadata=model_metadata,
            timestamp=timestamp or int(time.time()),
        )
        return await self._evaluate_http(request, capability_token)

    async def _evaluate_http(self, request: ChioHttpRequest, capability_token: str | None) -> EvaluateResponse:
        raise NotImplementedError


class LocalChioClient(_HttpRequestEvaluation):
    """An async, in-process stand-in for ``chio_sdk.ChioClient`` backed by a :class:`Kernel`.

    Args:
        data_dir: the kernel's data directory (default ``$CHIO_HOME`` or ``~/.chio-durable``);
            ignored when ``kernel`` is given.
        kernel: an existing kernel to share (e.g. with a sidecar or other clients in this process).
        store: ``"postgresql://..."`` to share one PostgreSQL store with a fleet of kernels (default
            ``$CHIO_STORE``, else SQLite in ``data_dir``; see docs/fleet.md); ignored when ``kernel``
            is given.
        understands_pending: ``evaluate_tool_call`` answers a call waiting for a person with its
            ``pending_approval`` receipt (True), or with a signed deny naming the approval (False, the
            default: fail closed for code that checks only ``is_denied``, as the sidecar does for a
            stock ``ChioClient``). This package's layers call the kernel directly and get the pending
            receipt either way.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        kernel: Kernel | None = None,
        store: str | None = None,
        *,
        understands_pending: bool = False,
    ) -> None:
        self.understands_pending = understands_pending
        self._owns_kernel = kernel is None
        self.kernel: Kernel = kernel if kernel is not None else Kernel(data_dir, store=store)
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
        """Report the kernel's status.

        Returns:
            ``status``, ``kernel_key``, ``data_dir``, ``receipts`` (the chain head), ``mode``; ``store``
            (password masked) on a fleet store.
        """
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
        """Issue a capability token signed by this kernel (see :meth:`Kernel.create_capability`).

        Args:
            subject: who the token is for (the agent or worker identity).
            scope: the grants the token carries (tools, constraints, budgets).
            ttl_seconds: how long the token is valid from now.
            capability_id: the token's id (default: a new random id).
            rate_limit: ``(calls, per_seconds)``: at most that many evaluations per window.

        Returns:
            The signed token.
        """
        return self.kernel.create_capability(
            subject=subject, scope=scope, ttl_seconds=ttl_seconds, capability_id=capability_id, rate_limit=rate_limit
        )

    async def validate_capability(self, token: CapabilityToken) -> bool:
        """Tell whether a token is valid now.

        Args:
            token: the capability token to check (signature, issuer, time, revocation, delegation chain).

        Returns:
            True if valid; the reason it is not stays with the kernel (``Kernel.validate_capability``).
        """
        valid, _reason = self.kernel.validate_capability(token)
        return valid

    async def attenuate_capability(self, token: CapabilityToken, *, new_scope: ChioScope) -> CapabilityToken:
        """Derive a child token whose scope is a subset of its parent's.

        Args:
            token: the parent capability token.
            new_scope: the child's scope; must be a subset of ``token.scope``.

        Returns:
            The signed child token.

        Raises:
            ChioValidationError: ``new_scope`` is not a subset, or the kernel refused the parent.
        """
        if not new_scope.is_subset_of(token.scope):
            raise ChioValidationError("new_scope must be a subset of the parent token scope")
        try:
            return self.kernel.attenuate_capability(token, new_scope)
        except CapabilityError as err:
            raise ChioValidationError(str(err)) from err

    async def verify_receipt(self, receipt: ChioReceipt) -> bool:
        """Verify a receipt's signature.

        Args:
            receipt: a receipt signed by this kernel or by a trusted kernel key.

        Returns:
            True if the signature verifies.
        """
        return self.kernel.verify_receipt(receipt)

    async def verify_http_receipt(self, receipt: HttpReceipt) -> bool:
        """Verify an HTTP receipt as the sidecar's ``/chio/verify`` does.

        Args:
            receipt: an HTTP receipt from :meth:`evaluate_http_request`.

        Returns:
            True if it is signed by this kernel.
        """
        from chio_kernel._http_evaluation import verify_http_receipt  # lazy: keeps ``import chio_kernel`` light

        return verify_http_receipt(self.kernel, receipt)

    async def verify_receipt_chain(self, receipts: list[ChioReceipt]) -> bool:
        """Verify that receipts chain: each ``content_hash`` is the previous receipt's hash.

        Args:
            receipts: receipts in chain order.

        Returns:
            True if the chain is unbroken (``ChioClient.verify_receipt_chain``).
        """
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
        approval_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        understands_pending: bool | None = None,
    ) -> ChioReceipt:
        """Evaluate one tool call against a capability and sign the decision.

        Args:
            capability_id: the capability the call runs under.
            tool_server: the server (or engine namespace) the tool belongs to.
            tool_name: the tool.
            parameters: the call's JSON arguments (hashed into the receipt).
            idempotency_key: the same key re-evaluated while the capability is valid returns the same
                receipt and charges no budget twice.
            cost: the call's declared cost, held against the grant's cost budget (docs/budgets.md).
            operation: what the call does (default ``INVOKE``).
            approval_id: re-send a call that was pending once a person approved it (docs/approvals.md).
            metadata: the caller's run context (e.g. ``{"flow_run_id": ...}``), signed into the receipt's
                ``metadata``.
            understands_pending: True: a call waiting for a person comes back as its
                ``pending_approval`` receipt; False: as a signed deny (fail closed for callers that
                check only ``is_denied``); None: the client's (see the class doc).

        Returns:
            The signed receipt: allow, deny or ``pending_approval`` (a deny is a receipt, not an error).
        """
        # concurrent callers on this event loop share one store transaction (group commit)
        receipt = await self.kernel._evaluate_async(
            capability_id,
            tool_server,
            tool_name,
            parameters,
            idempotency_key=idempotency_key,
            cost=cost,
            operation=operation,
            approval_id=approval_id,
            metadata=metadata,
        )
        pending = self.understands_pending if understands_pending is None else understands_pending
        if not pending and receipt.decision.verdict == PENDING_VERDICT:
            return await asyncio.to_thread(self.kernel.pending_as_deny, receipt, metadata)
        return receipt

    async def record_denial(
        self,
        *,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        guard: str,
        reason: str,
        envelope: ChioScope | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Sign and chain a deny receipt for a call refused before evaluation (``Kernel.record_denial``).

        Args:
            capability_id: the capability the call would have run under.
            tool_server: the tool's server.
            tool_name: the tool.
            parameters: the call's JSON arguments.
            guard: the name of the check that refused the call.
            reason: why, in a sentence.
            envelope: the scope the call was checked against, if any (recorded in the receipt).
            metadata: the caller's run context, signed into the receipt.

        Returns:
            The signed deny receipt.
        """
        return self.kernel.record_denial(
            capability_id, tool_server, tool_name, parameters, guard=guard, reason=reason, envelope=envelope,
            metadata=metadata,
        )

    async def _evaluate_http(self, request: ChioHttpRequest, capability_token: str | None) -> EvaluateResponse:
        """Evaluate an HTTP request exactly as the sidecar's ``/chio/evaluate`` does (see docs/sidecar.md)."""
        from chio_kernel._http_evaluation import evaluate_http  # lazy: keeps ``import chio_kernel`` light

        return EvaluateResponse.model_validate(evaluate_http(self.kernel, request, capability_token))

    @staticmethod
    def collect_evidence(receipts: list[ChioReceipt]) -> list[GuardEvidence]:
        """All guard evidence of the given receipts (``ChioClient.collect_evidence``)."""
        return ChioClient.collect_evidence(receipts)

    # --- kernel extras ---

    async def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and its descendants.

        Args:
            capability_id: the root of the subtree to revoke.

        Returns:
            Every revoked id, root first.

        Raises:
            CapabilityError: unknown id.
        """
        return self.kernel.revoke_capability(capability_id)

    async def get_receipt(self, receipt_id: str) -> ChioReceipt | None:
        """Read one stored receipt.

        Args:
            receipt_id: the receipt's id.

        Returns:
            The receipt, or None if the kernel has none with this id.
        """
        return self.kernel.get_receipt(receipt_id)

    async def list_receipts(
        self, capability_id: str | None = None, *, limit: int | None = None, after_seq: int | None = None
    ) -> list[ChioReceipt]:
        """List stored receipts in chain order.

        Args:
            capability_id: only the receipts of this capability (default: all).
            limit: at most this many (one page).
            after_seq: start after this chain position (the next page).

        Returns:
            The receipts.
        """
        return self.kernel.list_receipts(capability_id=capability_id, limit=limit, after_seq=after_seq)

    # --- approvals (docs/approvals.md) ---

    async def list_pending_approvals(self) -> list[dict[str, Any]]:
        """List the approvals still waiting for an answer (``GET /approvals/pending``).

        Returns:
            One dict per pending approval, as :meth:`get_approval` returns them.
        """
        return self.kernel.list_approvals("pending")

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        """Read one approval (see ``Kernel.get_approval``).

        Args:
            approval_id: the approval (``apr-...``).

        Returns:
            Its status now, the call, the receipts and the answer; None if unknown.
        """
        return self.kernel.get_approval(approval_id)

    async def respond_approval(self, approval_id: str, outcome: str, reason: str | None = None) -> ChioReceipt:
        """Answer an approval as the kernel's operator, once.

        The registered wakes are called in a worker thread (a slow waker does not hold up this event
        loop); see :meth:`last_wake_report`.

        Args:
            approval_id: the approval.
            outcome: ``"approved"`` or ``"denied"``.
            reason: why (recorded and signed).

        Returns:
            The signed resolution receipt.

        Raises:
            ApprovalConflictError: the approval was already answered.
        """
        return await asyncio.to_thread(self.kernel.respond_approval, approval_id, outcome, reason)

    async def respond_approval_token(self, token: dict[str, Any]) -> ChioReceipt:
        """Answer an approval with a signed approval token from a trusted approver key.

        Wakes the waiting run as :meth:`respond_approval` does.

        Args:
            token: the token made by :func:`sign_approval_token` (a dict naming ``request_id``).

        Returns:
            The signed resolution receipt.

        Raises:
            ApprovalConflictError: the approval was already answered.
        """
        return await asyncio.to_thread(self.kernel.respond_approval_token, token)

    async def record_form_denial(
        self, approval_id: str, reason: str | None = None, *, source: str = "prefect-form"
    ) -> ChioReceipt:
        """Record a deny from an engine's unauthenticated resume form (it can only stop the call).

        See ``Kernel.record_form_denial``.

        Args:
            approval_id: the approval the paused run waited for.
            reason: what the person wrote in the form, or None.
            source: which form (lowercase letters, digits, dashes).

        Returns:
            The signed deny receipt.
        """
        return self.kernel.record_form_denial(approval_id, reason, source=source)

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> dict[str, Any]:
        """Register what wakes the run waiting for this approval (see ``Kernel.register_approval_wake``).

        Args:
            approval_id: the approval the run waits for.
            wake: ``{"engine": "<name>", ...engine-specific JSON fields}``.

        Returns:
            ``{"approval_id", "status", "woken": [...]}`` (``woken`` is not empty when the approval
            was already answered: the run was woken at once).

        Raises:
            ApprovalNotFoundError: no such approval.
            KernelInputError: a malformed, too big or one too many wake (nothing written).
        """
        return await asyncio.to_thread(self.kernel.register_approval_wake, approval_id, wake)

    def last_wake_report(self, approval_id: str) -> list[dict[str, Any]] | None:
        """Tell what answering this approval through this kernel woke (see ``Kernel.last_wake_report``).

        Args:
            approval_id: the approval answered in this process.

        Returns:
            One ``{"engine", "ok", "message"}`` report per registered wake, or None if this process has
            not answered it.
        """
        return self.kernel.last_wake_report(approval_id)

    # --- budget holds (docs/budgets.md) ---

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt:
        """Settle the hold of an allow with the actual cost: capture it, free the rest (see :meth:`Kernel.settle`).

        Args:
            receipt_id: the allow receipt that placed the hold.
            actual_cost: what the call cost, in the hold's currency (minor units).
            op_id: names this operation: the same ``op_id`` again returns the same receipt.

        Returns:
            The signed settle receipt.

        Raises:
            HoldConflictError: the hold was closed by a different operation, or ``op_id`` reused.
            UnknownHoldError: no hold for this receipt.
        """
        return self.kernel.settle(receipt_id, actual_cost, op_id)

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt:
        """Free the whole hold of an allow (compensation; see :meth:`Kernel.release`).

        Args:
            receipt_id: the allow receipt that placed the hold.
            op_id: names this operation (same rules as :meth:`settle`).
            reason: why (recorded and signed).

        Returns:
            The signed release receipt.

        Raises:
            HoldConflictError: the hold was closed by a different operation, or ``op_id`` reused.
            UnknownHoldError: no hold for this receipt.
        """
        return self.kernel.release(receipt_id, op_id, reason)

    async def expire_holds(self) -> list[ChioReceipt]:
        """Expire every hold past the kernel's hold TTL now.

        Returns:
            Their signed expiry receipts.
        """
        return self.kernel.expire_holds()

    async def get_hold(self, receipt_id: str) -> dict[str, Any] | None:
        """Read the hold placed by an allow (see :meth:`Kernel.get_hold`).

        Args:
            receipt_id: the allow receipt.

        Returns:
            ``amount``, ``state``, ``captured_units``, ``created_at``, ``expires_at``, ``closed_by``,
            ``grants``; or None.
        """
        return self.kernel.get_hold(receipt_id)

    async def budgets(self, capability_id: str) -> list[dict[str, Any]]:
        """Report captured, held and remaining amounts per budgeted grant (see :meth:`Kernel.budgets`).

        Args:
            capability_id: the capability (its ancestors' budgets count too).

        Returns:
            One dict per budgeted grant: ``captured``, ``held``, ``remaining``, ``currency``, ...

        Raises:
            CapabilityError: unknown capability.
        """
        return self.kernel.budgets(capability_id)


class SidecarClient(_HttpRequestEvaluation, ChioClient):
    """``chio_sdk.ChioClient`` for the sidecar, with a public URL and the kernel's wire extras.

    A drop-in ``ChioClient`` (it is one: ``isinstance(client, ChioClient)`` holds, every method keeps
    its signature and return type) whose requests go through an ``httpx.AsyncClient`` this class
    builds and owns, so it needs no private part of ``chio_sdk``. On top of ``ChioClient``:

    * ``base_url`` is a public attribute (error messages and events name the sidecar);
    * ``evaluate_tool_call(..., idempotency_key=, cost=, operation=)`` sends the kernel's optional
      ``/v1/evaluate`` fields: a retried call with the same key gets the same receipt back and is
      charged once (the stock ``ChioClient`` cannot send them; see ``docs/sidecar.md``);
    * ``token=`` sends ``Authorization: Bearer <token>`` on every request (a credential token of a
      ``--auth roles`` sidecar, or the ``--token`` of a token-mode one; docs/security.md);
    * pending approvals fail closed: by default it does NOT say it understands ``pending_approval``,
      so a call waiting for a person comes back as a signed deny (guard ``approval``, naming the
      approval) — what a stock ``ChioClient`` gets, safe to hand to code that checks only
      ``is_denied`` (upstream ``chio-prefect``). ``understands_pending=True`` (on the client, or per
      ``evaluate_tool_call``; this package's layers pass it) sends ``X-Chio-Pending: understood`` and
      gets the ``pending_approval`` receipt itself (``is_allowed`` and ``is_denied`` both False), which
      the caller must not run; it re-sends the call with ``approval_id`` once approved
      (docs/approvals.md);
    * ``get_capability``, ``revoke_capability``, ``get_receipt``, ``list_receipts``: the sidecar's
      read/revoke endpoints, the same extras :class:`LocalChioClient` offers.

    Errors are ``ChioClient``'s: ``ChioConnectionError`` (unreachable), ``ChioTimeoutError``,
    ``ChioDeniedError`` (HTTP 403), ``ChioError`` with ``code="HTTP_<status>"`` (any other 4xx/5xx).

    Args:
        base_url: the sidecar's address (default ``http://127.0.0.1:9090``).
        timeout: seconds per request (default 5, as ``ChioClient``).
        token: the bearer token: a credential's (``chio-durable credentials add``) or the sidecar's
            ``--token``.
        understands_pending: send ``X-Chio-Pending: understood`` on evaluations: pending calls come
            back as ``pending_approval`` receipts instead of signed denies (default False).
    """

    def __init__(
        self, base_url: str | None = None, *, timeout: float = 5.0, token: str | None = None,
        understands_pending: bool = False,
    ) -> None:
        super().__init__(base_url, timeout=timeout)
        self.base_url: str = (base_url or self.DEFAULT_BASE_URL).rstrip("/")
        self._wake_reports: dict[str, list[dict[str, Any]]] = {}
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        self.understands_pending = understands_pending
        self._sidecar = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout), headers=headers)

    def __repr__(self) -> str:
        return f"SidecarClient({mask_secrets(self.base_url)!r})"

    # --- lifecycle ---

    async def close(self) -> None:
        """Close this client's HTTP connections."""
        try:
            await self._sidecar.aclose()
        finally:
            await super().close()

    async def __aenter__(self) -> SidecarClient:
        return self

    # --- ChioClient API, over this client's own HTTP connection ---

    async def health(self) -> dict[str, Any]:
        """Read the sidecar's ``/chio/health`` answer.

        Returns:
            The kernel's status: ``status``, ``kernel_key``, ``data_dir``, ``receipts``, ``mode``.
        """
        return await self._request("GET", "/chio/health")

    async def create_capability(
        self,
        *,
        subject: str,
        scope: ChioScope,
        ttl_seconds: int = 3600,
        capability_id: str | None = None,
        rate_limit: tuple[int, float] | None = None,
    ) -> CapabilityToken:
        """Issue a capability token through the sidecar (``POST /v1/capabilities``).

        Args:
            subject: who the token is for (the agent or worker identity).
            scope: the grants the token carries (tools, constraints, budgets).
            ttl_seconds: how long the token is valid from now.
            capability_id: the token's id (default: a new random id; a kernel extra).
            rate_limit: ``(calls, per_seconds)``: at most that many evaluations per window (a kernel extra).

        Returns:
            The signed token.
        """
        body: dict[str, Any] = {
            "subject": subject,
            "scope": scope.model_dump(exclude_none=True),
            "ttl_seconds": ttl_seconds,
        }
        if capability_id is not None:
            body["id"] = capability_id
        if rate_limit is not None:
            body["rate_limit"] = list(rate_limit)
        return CapabilityToken.model_validate(await self._request("POST", "/v1/capabilities", body))

    async def validate_capability(self, token: CapabilityToken) -> bool:
        """Ask the sidecar whether a token is valid now.

        Args:
            token: the capability token to check.

        Returns:
            True if the sidecar finds it valid.
        """
        data = await self._request("POST", "/v1/capabilities/validate", token.model_dump(exclude_none=True))
        return bool(data.get("valid", False))

    async def attenuate_capability(self, token: CapabilityToken, *, new_scope: ChioScope) -> CapabilityToken:
        """Derive a child token whose scope is a subset of its parent's.

        Args:
            token: the parent capability token.
            new_scope: the child's scope; must be a subset of ``token.scope``.

        Returns:
            The signed child token.

        Raises:
            ChioValidationError: ``new_scope`` is not a subset.
        """
        if not new_scope.is_subset_of(token.scope):
            raise ChioValidationError("new_scope must be a subset of the parent token scope")
        body = {"parent_token": token.model_dump(exclude_none=True), "new_scope": new_scope.model_dump(exclude_none=True)}
        return CapabilityToken.model_validate(await self._request("POST", "/v1/capabilities/attenuate", body))

    async def verify_receipt(self, receipt: ChioReceipt) -> bool:
        """Ask the sidecar's kernel to verify a receipt's signature.

        Args:
            receipt: the receipt.

        Returns:
            True if the signature verifies.
        """
        data = await self._request("POST", "/v1/receipts/verify", receipt.model_dump(exclude_none=True))
        return bool(data.get("valid", False))

    async def verify_http_receipt(self, receipt: HttpReceipt) -> bool:
        """Ask the sidecar's kernel to verify an HTTP receipt's signature (``/chio/verify``).

        Args:
            receipt: an HTTP receipt from :meth:`evaluate_http_request`.

        Returns:
            True if the signature verifies.
        """
        data = await self._request("POST", "/chio/verify", receipt.model_dump(exclude_none=True))
        return bool(data.get("valid", False))

    async def evaluate_tool_call(  # keyword extras with defaults: every ChioClient call still fits
        self,
        *,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None,
        operation: Operation = Operation.INVOKE,
        approval_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        understands_pending: bool | None = None,
    ) -> ChioReceipt:
        """Evaluate one tool call through the sidecar's ``/v1/evaluate``.

        Args:
            capability_id: the capability the call runs under.
            tool_server: the server (or engine namespace) the tool belongs to.
            tool_name: the tool.
            parameters: the call's JSON arguments (hashed into the receipt).
            idempotency_key: the same key re-evaluated while the capability is valid returns the same
                receipt and charges no budget twice.
            cost: the call's declared cost, held against the grant's cost budget (docs/budgets.md).
            operation: what the call does (default ``INVOKE``; sent only when different).
            approval_id: re-send a pending call once a person approved it (docs/approvals.md).
            metadata: the caller's run context (e.g. ``{"workflow_id": ...}``), signed into the receipt's
                ``metadata`` (the body's ``"metadata"``, docs/sidecar.md).
            understands_pending: True: a call waiting for a person comes back as its
                ``pending_approval`` receipt; False: as a signed deny (fail closed for callers that
                check only ``is_denied``); None: the client's ``understands_pending``.

        Returns:
            The signed receipt: allow, deny or ``pending_approval``, as ``ChioClient`` returns it.

        Raises:
            ChioConnectionError: the sidecar is unreachable.
            ChioTimeoutError: no answer within ``timeout``.
            ChioDeniedError: the sidecar answered 403.
            ChioError: the sidecar answered an error status (``code="HTTP_<status>"``).
        """
        body: dict[str, Any] = {
            "capability_id": capability_id,
            "tool_server": tool_server,
            "tool_name": tool_name,
            "parameters": parameters,
        }
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if cost is not None:
            body["cost"] = cost.model_dump()
        if operation != Operation.INVOKE:
            body["operation"] = operation.value
        if approval_id is not None:
            body["approval_id"] = approval_id
        if metadata:
            body["metadata"] = dict(metadata)
        pending = self.understands_pending if understands_pending is None else understands_pending
        headers = _UNDERSTOOD if pending else None
        return ChioReceipt.model_validate(await self._request("POST", "/v1/evaluate", body, headers=headers))

    async def record_denial(
        self,
        *,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        guard: str,
        reason: str,
        envelope: ChioScope | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Sign and chain a deny receipt for a call refused before evaluation (``POST /v1/receipts/denials``).

        Args:
            capability_id: the capability the call would have run under.
            tool_server: the tool's server.
            tool_name: the tool.
            parameters: the call's JSON arguments.
            guard: the name of the check that refused the call.
            reason: why, in a sentence.
            envelope: the scope the call was checked against, if any (recorded in the receipt).
            metadata: the caller's run context, signed into the receipt.

        Returns:
            The signed deny receipt.
        """
        body: dict[str, Any] = {
            "capability_id": capability_id,
            "tool_server": tool_server,
            "tool_name": tool_name,
            "parameters": parameters,
            "guard": guard,
            "reason": reason,
        }
        if envelope is not None:
            body["envelope"] = envelope.model_dump(mode="json")
        if metadata:
            body["metadata"] = dict(metadata)
        return ChioReceipt.model_validate(await self._request("POST", "/v1/receipts/denials", body))

    async def _evaluate_http(self, request: ChioHttpRequest, capability_token: str | None) -> EvaluateResponse:
        """Evaluate an HTTP request through the sidecar's ``/chio/evaluate`` (as ``ChioClient`` does)."""
        extra = {"X-Chio-Capability": capability_token} if capability_token is not None else None
        data = await self._request("POST", "/chio/evaluate", request.model_dump(exclude_none=True), headers=extra)
        return EvaluateResponse.model_validate(data)

    # --- kernel extras ---

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """``GET path``: the JSON answer, or ``None`` when the sidecar answers 404 (it knows no such thing)."""
        try:
            return await self._request("GET", path)
        except ChioError as err:
            if err.code == "HTTP_404":
                return None
            raise

    async def get_capability(self, capability_id: str) -> CapabilityToken | None:
        """Read a token the sidecar's kernel issued.

        Args:
            capability_id: the token's id.

        Returns:
            The token, or None if the sidecar knows none with this id.
        """
        data = await self._get_or_none(f"/v1/capabilities/{_segment(capability_id)}")
        return None if data is None else CapabilityToken.model_validate(data)

    async def revoke_capability(self, capability_id: str) -> list[str]:
        """Revoke a capability and its descendants.

        Args:
            capability_id: the root of the subtree to revoke.

        Returns:
            Every revoked id, root first.

        Raises:
            ChioError: ``code="HTTP_404"`` for an unknown id.
        """
        data = await self._request("POST", f"/v1/capabilities/{_segment(capability_id)}/revoke", {})
        return [str(i) for i in data.get("revoked", [])]

    async def get_receipt(self, receipt_id: str) -> ChioReceipt | None:
        """Read one stored receipt.

        Args:
            receipt_id: the receipt's id.

        Returns:
            The receipt, or None if the sidecar has none with this id.
        """
        data = await self._get_or_none(f"/v1/receipts/{_segment(receipt_id)}")
        return None if data is None else ChioReceipt.model_validate(data)

    async def list_receipts(
        self, capability_id: str | None = None, *, limit: int | None = None, after_seq: int | None = None
    ) -> list[ChioReceipt]:
        """List stored receipts in chain order (``GET /v1/receipts``).

        Args:
            capability_id: only the receipts of this capability (default: all).
            limit: at most this many (one page).
            after_seq: start after this chain position (the next page).

        Returns:
            The receipts.
        """
        params: dict[str, str] = {}
        if capability_id is not None:
            params["capability_id"] = capability_id
        if limit is not None:
            params["limit"] = str(limit)
        if after_seq is not None:
            params["after_seq"] = str(after_seq)
        data = await self._request("GET", "/v1/receipts", params=params)
        return [ChioReceipt.model_validate(r) for r in data.get("receipts", [])]

    # --- approvals (docs/approvals.md) ---

    async def list_pending_approvals(self) -> list[dict[str, Any]]:
        """List the approvals still waiting for an answer (``GET /approvals/pending``).

        Returns:
            One dict per pending approval, as :meth:`get_approval` returns them.
        """
        data = await self._request("GET", "/approvals/pending")
        return [dict(a) for a in data.get("approvals", [])]

    async def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        """Read one approval (``GET /approvals/{id}``).

        Args:
            approval_id: the approval (``apr-...``).

        Returns:
            Its status now, the call, the receipts and the answer; None if the sidecar knows none.
        """
        return await self._get_or_none(f"/approvals/{_segment(approval_id)}")

    async def respond_approval(self, approval_id: str, outcome: str, reason: str | None = None) -> ChioReceipt:
        """Answer an approval as the kernel's operator (``POST /approvals/{id}/operator-respond``).

        Args:
            approval_id: the approval.
            outcome: ``"approved"`` or ``"denied"``.
            reason: why (recorded and signed).

        Returns:
            The signed resolution receipt; the sidecar's wake report is kept for :meth:`last_wake_report`.

        Raises:
            ApprovalConflictError: the approval was already answered (HTTP 409).
        """
        body: dict[str, Any] = {"outcome": outcome}
        if reason is not None:
            body["reason"] = reason
        data = await self._approval_request(f"/approvals/{_segment(approval_id)}/operator-respond", body)
        self._keep_wakes(approval_id, data)
        return ChioReceipt.model_validate(data["receipt"])

    async def record_form_denial(
        self, approval_id: str, reason: str | None = None, *, source: str = "prefect-form"
    ) -> ChioReceipt:
        """Record a deny from an engine's unauthenticated resume form (it can only stop the call).

        ``POST /approvals/{id}/form-deny``; see ``Kernel.record_form_denial``.

        Args:
            approval_id: the approval the paused run waited for.
            reason: what the person wrote in the form, or None.
            source: which form (lowercase letters, digits, dashes).

        Returns:
            The signed deny receipt.
        """
        body: dict[str, Any] = {"source": source}
        if reason is not None:
            body["reason"] = reason
        data = await self._approval_request(f"/approvals/{_segment(approval_id)}/form-deny", body)
        return ChioReceipt.model_validate(data["receipt"])

    async def respond_approval_token(self, token: dict[str, Any]) -> ChioReceipt:
        """Answer an approval with a signed approval token (``POST /approvals/{request_id}/respond``).

        Args:
            token: the token made by :func:`sign_approval_token` (a dict naming ``request_id``).

        Returns:
            The signed resolution receipt.

        Raises:
            ApprovalConflictError: the approval was already answered (HTTP 409).
        """
        approval_id = str(token.get("request_id", ""))
        data = await self._approval_request(f"/approvals/{_segment(approval_id)}/respond", token)
        self._keep_wakes(approval_id, data)
        return ChioReceipt.model_validate(data["receipt"])

    def _keep_wakes(self, approval_id: str, data: dict[str, Any]) -> None:
        wakes = data.get("wakes")
        if isinstance(wakes, list):
            self._wake_reports[approval_id] = [dict(w) for w in wakes if isinstance(w, dict)]

    def last_wake_report(self, approval_id: str) -> list[dict[str, Any]] | None:
        """Tell what the sidecar reported waking when this client answered the approval.

        Args:
            approval_id: the approval this client answered.

        Returns:
            The sidecar's ``"wakes"`` (one ``{"engine", "ok", "message"}`` each), or None (not answered by
            this client, or a sidecar that does not wake runs).
        """
        report = self._wake_reports.get(approval_id)
        return None if report is None else [dict(r) for r in report]

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> dict[str, Any]:
        """Register what wakes the run waiting for this approval (``POST /approvals/{id}/wake``).

        Args:
            approval_id: the approval the run waits for.
            wake: ``{"engine": "<name>", ...engine-specific JSON fields}``.

        Returns:
            ``{"approval_id", "status", "woken": [...]}`` as the sidecar answers it.

        Raises:
            ApprovalNotFoundError: the sidecar knows no such approval.
            KernelInputError: the sidecar refused the wake (HTTP 422; the message says why).
            ChioError: anything else, e.g. ``code="HTTP_404"`` from a sidecar without this route.
        """
        from chio_kernel._approvals import PENDING_HEADER, ApprovalNotFoundError
        from chio_kernel._errors import KernelInputError

        try:
            return await self._request("POST", f"/approvals/{_segment(approval_id)}/wake", {"wake": dict(wake)})
        except ChioError as err:
            if err.code == "HTTP_404" and "unknown_approval" in str(err):  # the approval, not the route
                raise ApprovalNotFoundError(str(err)) from err
            if err.code == "HTTP_422":
                raise KernelInputError(str(err)) from err
            raise

    async def _approval_request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from chio_kernel._approvals import ApprovalConflictError

        try:
            return await self._request("POST", path, body)
        except ChioError as err:
            if err.code == "HTTP_409":  # the same error LocalChioClient raises
                raise ApprovalConflictError(str(err)) from err
            raise

    # --- budget holds (docs/budgets.md) ---

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt:
        """Settle the hold of an allow with the actual cost (``POST /v1/receipts/{id}/settle``).

        Args:
            receipt_id: the allow receipt that placed the hold.
            actual_cost: what the call cost, in the hold's currency (minor units).
            op_id: names this operation: the same ``op_id`` again returns the same receipt.

        Returns:
            The signed settle receipt.

        Raises:
            ChioError: ``code="HTTP_409"`` when another operation closed the hold, ``"HTTP_404"`` when
                there is no hold.
        """
        body = {"actual_cost": actual_cost.model_dump(), "op_id": op_id}
        return ChioReceipt.model_validate(
            await self._request("POST", f"/v1/receipts/{_segment(receipt_id)}/settle", body)
        )

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt:
        """Free the whole hold of an allow (``POST /v1/receipts/{id}/release``).

        Args:
            receipt_id: the allow receipt that placed the hold.
            op_id: names this operation (same rules as :meth:`settle`).
            reason: why (recorded and signed).

        Returns:
            The signed release receipt.

        Raises:
            ChioError: as :meth:`settle`.
        """
        body = {"op_id": op_id, "reason": reason}
        return ChioReceipt.model_validate(
            await self._request("POST", f"/v1/receipts/{_segment(receipt_id)}/release", body)
        )

    async def expire_holds(self) -> list[ChioReceipt]:
        """Expire every hold past the TTL now (``POST /v1/holds/expire``).

        Returns:
            Their signed expiry receipts.
        """
        data = await self._request("POST", "/v1/holds/expire", {})
        return [ChioReceipt.model_validate(r) for r in data.get("expired", [])]

    async def get_hold(self, receipt_id: str) -> dict[str, Any] | None:
        """Read the hold placed by an allow (``GET /v1/receipts/{id}/hold``).

        Args:
            receipt_id: the allow receipt.

        Returns:
            The hold (``amount``, ``state``, ``captured_units``, ...), or None.
        """
        return await self._get_or_none(f"/v1/receipts/{_segment(receipt_id)}/hold")

    async def budgets(self, capability_id: str) -> list[dict[str, Any]]:
        """Report captured, held and remaining per budgeted grant (``GET /v1/capabilities/{id}/budgets``).

        Args:
            capability_id: the capability.

        Returns:
            One dict per budgeted grant: ``captured``, ``held``, ``remaining``, ``currency``, ...
        """
        data = await self._request("GET", f"/v1/capabilities/{_segment(capability_id)}/budgets")
        return list(data.get("budgets", []))

    # --- HTTP ---

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            resp = await self._sidecar.request(method, path, json=body, headers=headers, params=params)
        except httpx.ConnectError as exc:
            raise ChioConnectionError(f"Failed to connect to Chio sidecar at {self.base_url}") from exc
        except httpx.TimeoutException as exc:
            raise ChioTimeoutError(f"Request to {path} timed out") from exc
        return _answer(resp)


_UNDERSTOOD = {PENDING_HEADER: "understood"}


def _segment(value: str) -> str:
    """``value`` as one URL path segment (an id with ``/`` or ``?`` must not change the route)."""
    from urllib.parse import quote

    return quote(value, safe="")


def _answer(resp: httpx.Response) -> dict[str, Any]:
    """``ChioClient``'s error mapping: 403 → ``ChioDeniedError``, other ≥ 400 → ``ChioError("HTTP_<n>")``."""
    if resp.status_code == 403:
        try:
            data = resp.json()
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        raise ChioDeniedError(str(data.get("message", "denied")), guard=data.get("guard"), reason=data.get("reason"))
    if resp.status_code >= 400:
        try:
            detail: Any = resp.json()
        except ValueError:
            detail = resp.text
        raise ChioError(f"Chio sidecar returned {resp.status_code}: {detail}", code=f"HTTP_{resp.status_code}")
    data = resp.json()
    if not isinstance(data, dict):
        raise ChioError(f"Chio sidecar answered {type(data).__name__}, not a JSON object", code="BAD_ANSWER")
    return data
