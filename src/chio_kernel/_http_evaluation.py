"""HTTP-request evaluation: one HTTP request mapped to one tool evaluation, the decision wrapped in a
signed HttpReceipt (the rule of ``docs/sidecar.md``, "HTTP-request evaluation").

Shared by the sidecar's ``/chio/evaluate`` / ``/chio/verify`` and ``LocalChioClient``'s
``evaluate_http_request`` / ``verify_http_receipt``: the same request gives the same decision either
way. Nothing here knows about HTTP servers; parsing the wire body is the caller's job.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from chio_sdk.models import CapabilityToken, ChioHttpRequest, ChioReceipt, GuardEvidence, HttpReceipt, Verdict
from pydantic import ValidationError

from chio_kernel._receipts import http_signed_body, verify_http_receipt as _verify_signature
from chio_kernel.canonical import canonical_json

__all__ = ["HTTP_TOOL_SERVER", "capability_from_header", "evaluate_http", "verify_http_receipt"]

#: An HTTP request is evaluated as a tool call on this server id.
HTTP_TOOL_SERVER = "http"

_EMPTY_POLICY_HASH = hashlib.sha256(b"").hexdigest()


def capability_from_header(header_token: str | None) -> tuple[str | None, CapabilityToken | None, str | None]:
    """(capability id, parsed token, error) from an ``X-Chio-Capability`` header value."""
    if not header_token:
        return None, None, None
    try:
        token = CapabilityToken.model_validate_json(header_token)
    except ValidationError:
        return None, None, "X-Chio-Capability is not a CapabilityToken (JSON)"
    return token.id, token, None


def _presented_capability(req: ChioHttpRequest, header_token: str | None) -> tuple[str | None, CapabilityToken | None, str | None]:
    """The capability the request presents (body id first, else the header token's) and any error."""
    cap_id, token, header_error = capability_from_header(header_token)
    if header_error is None and token is not None and req.capability_id and req.capability_id != token.id:
        header_error = (
            f"capability_id {req.capability_id!r} and the X-Chio-Capability token ({token.id!r}) "
            "name different capabilities; send one"
        )
    return req.capability_id or cap_id, token, header_error


def _decide(
    kernel: Any, req: ChioHttpRequest, tool_name: str, header_token: str | None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[Verdict, ChioReceipt | None, str | None]:
    """(verdict, underlying tool receipt or None, capability id) for one HTTP request."""
    cap_id, token, header_error = _presented_capability(req, header_token)
    if header_error is not None:
        return Verdict.deny(header_error, "signature", http_status=401), None, cap_id
    if cap_id is None:
        reason = "no capability presented: send capability_id or an X-Chio-Capability token"
        return Verdict.deny(reason, "signature", http_status=401), None, cap_id
    if token is not None:
        valid, why = kernel.validate_capability(token)
        if not valid:
            reason = f"presented capability token is not valid: {why}"
            return Verdict.deny(reason, "signature", http_status=403), None, cap_id
    parameters: dict[str, Any] = {"path": req.path}
    if req.query:
        parameters["query"] = dict(req.query)
    tool_receipt: ChioReceipt = kernel.evaluate(cap_id, HTTP_TOOL_SERVER, tool_name, parameters, metadata=metadata)
    d = tool_receipt.decision
    if d.is_allowed:
        return Verdict.allow(), tool_receipt, cap_id
    return Verdict.deny(d.reason or "denied", d.guard or "unknown", http_status=403), tool_receipt, cap_id


def evaluate_http(
    kernel: Any, req: ChioHttpRequest, header_token: str | None, metadata: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Map one HTTP request to a tool evaluation and wrap the decision in a signed HttpReceipt.

    Rule: tool_server ``"http"``, tool_name ``"<METHOD> <route_pattern>"`` (method upper-cased),
    parameters ``{"path": path, "query": {...}}``; the underlying tool receipt is stored in the
    chain as usual and referenced from the HttpReceipt's ``metadata.chio_receipt_id``. Returns the
    ``EvaluateResponse`` as JSON-ready data: ``{"verdict", "receipt", "evidence"}``. ``metadata``: who
    asked (the sidecar's principal), signed into the tool receipt. A pending approval is not an allow:
    the HttpReceipt denies.
    """
    method = req.method.upper()
    tool_name = f"{method} {req.route_pattern}"
    # hash the request first: input that cannot be canonicalised is refused before anything is stored
    caller_hash = hashlib.sha256(canonical_json(req.caller.model_dump(mode="json", exclude_none=True))).hexdigest()
    request_hash = hashlib.sha256(canonical_json(req.model_dump(mode="json", exclude_none=True))).hexdigest()
    verdict, tool_receipt, cap_id = _decide(kernel, req, tool_name, header_token, metadata)
    evidence: list[GuardEvidence] = list(tool_receipt.evidence) if tool_receipt is not None else []
    receipt: dict[str, Any] = {
        "id": f"hrcpt-{uuid.uuid4().hex}",
        "request_id": req.request_id,
        "route_pattern": req.route_pattern,
        "method": method,
        "caller_identity_hash": caller_hash,
        "session_id": req.session_id,
        "verdict": verdict.model_dump(mode="json", exclude_none=True),
        "evidence": [e.model_dump(mode="json", exclude_none=True) for e in evidence],
        "response_status": 200 if verdict.is_allowed else (verdict.http_status or 403),
        "timestamp": int(time.time()),
        "content_hash": request_hash,
        "policy_hash": tool_receipt.policy_hash if tool_receipt is not None else _EMPTY_POLICY_HASH,
        "capability_id": cap_id,
        "metadata": {"chio_receipt_id": tool_receipt.id} if tool_receipt is not None else None,
        "kernel_key": kernel.public_key_hex,
    }
    receipt = http_signed_body(receipt)  # served exactly as signed: no empty evidence/metadata
    receipt["signature"] = kernel.sign_http_receipt(receipt)
    return {"verdict": receipt["verdict"], "receipt": receipt, "evidence": receipt.get("evidence", [])}


def verify_http_receipt(kernel: Any, receipt: HttpReceipt) -> bool:
    """True if ``receipt`` is an HttpReceipt signed by ``kernel``'s key."""
    return bool(_verify_signature(kernel.public_key_hex, receipt))
