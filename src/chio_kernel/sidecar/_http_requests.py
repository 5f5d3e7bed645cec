"""The sidecar's HTTP-request evaluation (``/chio/evaluate``, ``/chio/verify``): an HTTP request
mapped to a tool evaluation, wrapped in a signed HttpReceipt."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from chio_sdk.models import CapabilityToken, ChioHttpRequest, ChioReceipt, GuardEvidence, HttpReceipt, Verdict
from pydantic import ValidationError

from chio_kernel._receipts import http_signed_body, verify_http_receipt
from chio_kernel.canonical import canonical_json

__all__ = ["_evaluate_http", "_verify_http_receipt"]


from chio_kernel.sidecar import HTTP_TOOL_SERVER  # defined before the package imports this module


# --- HTTP-request evaluation (/chio/evaluate, /chio/verify) --------------------------------------


def _capability_from_header(header_token: str | None) -> tuple[str | None, CapabilityToken | None, str | None]:
    """(capability id, parsed token, error) from an ``X-Chio-Capability`` header."""
    if not header_token:
        return None, None, None
    try:
        token = CapabilityToken.model_validate_json(header_token)
    except ValidationError:
        return None, None, "X-Chio-Capability is not a CapabilityToken (JSON)"
    return token.id, token, None


def _evaluate_http(kernel: Any, req: ChioHttpRequest, header_token: str | None) -> dict[str, Any]:
    """Map one HTTP request to a tool evaluation and wrap the decision in a signed HttpReceipt.

    Rule: tool_server ``"http"``, tool_name ``"<METHOD> <route_pattern>"`` (method upper-cased),
    parameters ``{"path": path, "query": {...}}``; the underlying tool receipt is stored in the
    chain as usual and referenced from the HttpReceipt's ``metadata.chio_receipt_id``.
    """
    method = req.method.upper()
    tool_name = f"{method} {req.route_pattern}"
    # hash the request first: input that cannot be canonicalised is refused before anything is stored
    caller_hash = hashlib.sha256(canonical_json(req.caller.model_dump(mode="json", exclude_none=True))).hexdigest()
    request_hash = hashlib.sha256(canonical_json(req.model_dump(mode="json", exclude_none=True))).hexdigest()
    cap_id, token, header_error = _capability_from_header(header_token)
    if header_error is None and token is not None and req.capability_id and req.capability_id != token.id:
        header_error = (
            f"capability_id {req.capability_id!r} and the X-Chio-Capability token ({token.id!r}) "
            "name different capabilities; send one"
        )
    cap_id = req.capability_id or cap_id
    tool_receipt: ChioReceipt | None = None
    evidence: list[GuardEvidence] = []
    if header_error is not None:
        verdict = Verdict.deny(header_error, "signature", http_status=401)
    elif cap_id is None:
        verdict = Verdict.deny(
            "no capability presented: send capability_id or an X-Chio-Capability token",
            "signature",
            http_status=401,
        )
    else:
        presented_error = None
        if token is not None:
            valid, reason = kernel.validate_capability(token)
            if not valid:
                presented_error = f"presented capability token is not valid: {reason}"
        if presented_error is not None:
            verdict = Verdict.deny(presented_error, "signature", http_status=403)
        else:
            parameters: dict[str, Any] = {"path": req.path}
            if req.query:
                parameters["query"] = dict(req.query)
            tool_receipt = kernel.evaluate(cap_id, HTTP_TOOL_SERVER, tool_name, parameters)
            evidence = list(tool_receipt.evidence)
            d = tool_receipt.decision
            if d.is_allowed:
                verdict = Verdict.allow()
            else:
                verdict = Verdict.deny(d.reason or "denied", d.guard or "unknown", http_status=403)
    now = int(time.time())
    policy_hash = tool_receipt.policy_hash if tool_receipt is not None else hashlib.sha256(b"").hexdigest()
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
        "timestamp": now,
        "content_hash": request_hash,
        "policy_hash": policy_hash,
        "capability_id": cap_id,
        "metadata": {"chio_receipt_id": tool_receipt.id} if tool_receipt is not None else None,
        "kernel_key": kernel.public_key_hex,
    }
    receipt = http_signed_body(receipt)  # served exactly as signed: no empty evidence/metadata
    receipt["signature"] = kernel.sign_http_receipt(receipt)
    return {
        "verdict": receipt["verdict"],
        "receipt": receipt,
        "evidence": receipt.get("evidence", []),
    }


def _verify_http_receipt(kernel: Any, receipt: HttpReceipt) -> bool:
    return verify_http_receipt(kernel.public_key_hex, receipt)


