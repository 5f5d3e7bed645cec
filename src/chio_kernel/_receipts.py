"""Receipts: the signed body, the chain hash, the served (wire) form, building and verifying.

One rule each for signing and verifying (see ``docs/kernel.md``, "Signed bodies").
"""

from __future__ import annotations

import hashlib
import json
import json.encoder as _json_encoder
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from chio_sdk.models import ChioReceipt, Decision, HttpReceipt, ToolCallAction
from pydantic import BaseModel

from chio_kernel._errors import KernelInputError
from chio_kernel._ids import _uuid7_str
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import verify_hex

__all__ = ["ChainReport", "receipt_chain_hash", "receipt_signing_bytes", "receipt_wire_dict"]

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class ChainReport:
    """Result of :meth:`Kernel.verify_chain`."""

    ok: bool
    count: int
    first_broken_index: int | None = None
    reason: str | None = None


def _receipt_signed_body(data: dict[str, Any]) -> dict[str, Any]:
    """Receipt dict (``model_dump(exclude_none=True)`` form) -> the body its signature covers."""
    body = dict(data)
    body.pop("signature", None)
    if not body.get("evidence"):
        body.pop("evidence", None)
    if not body.get("metadata"):
        body.pop("metadata", None)
    return body


def receipt_wire_dict(receipt: ChioReceipt | Mapping[str, Any]) -> dict[str, Any]:
    """A receipt as every output path serves it (sidecar answers and listings, the CLI's ``--json``,
    ``show`` and ``export``): exactly the signed fields plus ``signature``.

    That is ``model_dump(mode="json", exclude_none=True)`` without an empty ``evidence`` or
    ``metadata`` (left out of the signed body, as upstream's serialisers do), so any verifier that
    checks Ed25519 over the RFC 8785 canonical JSON of the object without ``signature`` accepts it.
    """
    if isinstance(receipt, ChioReceipt):
        data = receipt.model_dump(mode="json", exclude_none=True)
    else:
        data = {k: v for k, v in receipt.items() if v is not None}
    if not data.get("evidence"):
        data.pop("evidence", None)
    if not data.get("metadata"):
        data.pop("metadata", None)
    return data


def receipt_signing_bytes(receipt: ChioReceipt | Mapping[str, Any]) -> bytes:
    """What a receipt's signature covers: canonical JSON of ``model_dump(exclude_none=True)`` without
    ``signature``, and without ``evidence`` / ``metadata`` when they are empty."""
    data = receipt.model_dump(exclude_none=True) if isinstance(receipt, ChioReceipt) else dict(receipt)
    return canonical_json(_receipt_signed_body(data))


_chain_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


_q = _json_encoder.encode_basestring  # a JSON string literal as RFC 8785 writes it


_qa = _json_encoder.encode_basestring_ascii  # ... and as json.dumps(ensure_ascii=True) writes it


_ACTION_FIELDS = frozenset({"parameters", "parameter_hash"})


_DECISION_FIELDS = frozenset({"verdict", "reason", "guard"})


_RECEIPT_FIELDS = frozenset(ChioReceipt.model_fields) - {"metadata"}


def _construct(cls: type[_M], fields_set: frozenset[str], values: dict[str, Any]) -> _M:
    """``cls.model_construct(**values)`` without its per-field loop (hot path; values are complete)."""
    if cls.__pydantic_post_init__ or cls.__pydantic_root_model__:  # pragma: no cover - not the chio_sdk models
        return cls.model_construct(**values)
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(fields_set))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def receipt_chain_hash(receipt: ChioReceipt | Mapping[str, Any]) -> str:
    """sha256 hex of a receipt exactly as ``ChioClient.verify_receipt_chain`` hashes it."""
    data = receipt.model_dump(exclude_none=True) if isinstance(receipt, ChioReceipt) else receipt
    return hashlib.sha256(_chain_dumps(data).encode()).hexdigest()


def build_receipt(
    sign_hex: Callable[[bytes], str],
    key: str,
    prev_hash: str,
    now: float,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    params: dict[str, Any],
    params_text: str,
    params_ascii: str,
    param_hash: str,
    deny: tuple[str, str] | None,
    policy_hash: str,
) -> tuple[ChioReceipt, str, str]:
    """Build and sign one receipt chained onto ``prev_hash``: ``(receipt, stored text, chain hash)``.

    ``params_text`` is the canonical JSON of ``params`` (signed), ``params_ascii`` their chain-hash
    serialisation; ``deny`` is ``(guard, reason)`` or None for an allow. The stored text is the
    receipt exactly as ``ChioClient.verify_receipt_chain`` serialises it; its sha256 is the chain hash.
    """
    rid = "rcpt-" + _uuid7_str()
    ts = str(int(now))
    q_cap, q_tool, q_server = _q(capability_id), _q(tool_name), _q(tool_server)
    guard: str | None = None
    reason: str | None = None
    if deny is None:
        decision: dict[str, str | None] = {"verdict": "allow"}
        decision_text = decision_ascii = '{"verdict":"allow"}'
    else:
        guard, reason = deny
        decision = {"verdict": "deny", "reason": reason, "guard": guard}
        decision_text = '{"guard":' + _q(guard) + ',"reason":' + _q(reason) + ',"verdict":"deny"}'
        decision_ascii = '{"guard":' + _qa(guard) + ',"reason":' + _qa(reason) + ',"verdict":"deny"}'
    # The canonical JSON of the signed body, spliced from canonical parts in sorted key order
    # (equal to canonical_json(body); tests/kernel check both ways agree).
    signed = (
        '{"action":{"parameter_hash":"' + param_hash + '","parameters":' + params_text
        + '},"capability_id":' + q_cap + ',"content_hash":"' + prev_hash
        + '","decision":' + decision_text + ',"id":"' + rid + '","kernel_key":"' + key
        + '","policy_hash":"' + policy_hash + '","timestamp":' + ts
        + ',"tool_name":' + q_tool + ',"tool_server":' + q_server + "}"
    )
    signature = sign_hex(signed.encode("utf-8"))
    # The stored text is the receipt exactly as ChioClient.verify_receipt_chain serialises it
    # (model_dump(exclude_none=True), sort_keys, ensure_ascii): its sha256 is the next content_hash.
    if not (q_cap.isascii() and q_tool.isascii() and q_server.isascii()):
        q_cap, q_tool, q_server = _qa(capability_id), _qa(tool_name), _qa(tool_server)
    stored = (
        '{"action":{"parameter_hash":"' + param_hash + '","parameters":' + params_ascii
        + '},"capability_id":' + q_cap + ',"content_hash":"' + prev_hash
        + '","decision":' + decision_ascii + ',"evidence":[],"id":"' + rid + '","kernel_key":"' + key
        + '","policy_hash":"' + policy_hash + '","signature":"' + signature + '","timestamp":' + ts
        + ',"tool_name":' + q_tool + ',"tool_server":' + q_server + "}"
    )
    chain_hash = hashlib.sha256(stored.encode()).hexdigest()
    action = {"parameters": params, "parameter_hash": param_hash}
    body = {
        "id": rid,
        "timestamp": int(now),
        "capability_id": capability_id,
        "tool_server": tool_server,
        "tool_name": tool_name,
        "action": action,
        "decision": decision,
        "content_hash": prev_hash,
        "policy_hash": policy_hash,
        "evidence": [],
        "kernel_key": key,
        "signature": signature,
    }
    body["action"] = _construct(ToolCallAction, _ACTION_FIELDS, action)
    body["decision"] = _construct(
        Decision, _DECISION_FIELDS, {"verdict": decision["verdict"], "reason": reason, "guard": guard}
    )
    body["metadata"] = None
    return _construct(ChioReceipt, _RECEIPT_FIELDS, body), stored, chain_hash


def verify_receipt_dict(data: dict[str, Any], issuers: Collection[str]) -> str | None:
    """Why a receipt (``model_dump(exclude_none=True)`` form) does not verify against ``issuers``, or None."""
    key = data.get("kernel_key")
    if key not in issuers:
        return f"receipt {data.get('id')} was signed by {str(key)[:16]}…, which is not this kernel nor a trusted key"
    try:
        action = data["action"]
        if hashlib.sha256(canonical_json(action["parameters"])).hexdigest() != action["parameter_hash"]:
            return f"receipt {data.get('id')}: parameter_hash does not match its parameters"
        message = canonical_json(_receipt_signed_body(data))
    except (KeyError, TypeError, ValueError) as err:
        return f"receipt {data.get('id')} is malformed: {err}"
    if not verify_hex(str(key), str(data.get("signature")), message):
        return f"receipt {data.get('id')} has an invalid signature (altered after signing)"
    return None


# --- HTTP receipts (the sidecar's /chio/evaluate and /chio/verify) ------------------------------


def check_http_receipt_body(body: Mapping[str, Any]) -> None:
    """Refuse anything but an HttpReceipt body (``id`` ``hrcpt-...``, HttpReceipt fields only), so
    signing one is no way to sign a tool receipt or a capability token."""
    allowed = set(HttpReceipt.model_fields) - {"signature"}
    extra = set(body) - allowed
    if extra or not str(body.get("id", "")).startswith("hrcpt-") or not {"method", "route_pattern"} <= set(body):
        raise KernelInputError(
            f"sign_http_receipt signs HttpReceipt bodies only (id 'hrcpt-...', fields {sorted(allowed)}); "
            f"got fields {sorted(body)}"
        )


def http_signed_body(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """The signed body of an HttpReceipt: everything but ``signature``; empty evidence/metadata left out
    (the same rule as tool receipts)."""
    body = {k: v for k, v in receipt.items() if k != "signature" and v is not None}
    if not body.get("evidence"):
        body.pop("evidence", None)
    if not body.get("metadata"):
        body.pop("metadata", None)
    return body


def verify_http_receipt(kernel_key: str, receipt: HttpReceipt) -> bool:
    """True if ``receipt`` is signed by ``kernel_key`` over its signed body."""
    if receipt.kernel_key != kernel_key:
        return False
    body = http_signed_body(receipt.model_dump(mode="json", exclude_none=True))
    try:
        message = canonical_json(body)
    except (ValueError, TypeError):
        return False
    return verify_hex(receipt.kernel_key, receipt.signature, message)
