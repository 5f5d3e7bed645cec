"""Receipts: the signed body, the chain hash, the served (wire) form, building and verifying.

One rule each for signing and verifying (see ``docs/kernel.md``, "Signed bodies").
"""

from __future__ import annotations

import hashlib
import json
import json.encoder as _json_encoder
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from chio_sdk.models import ChioReceipt
from pydantic import BaseModel

from chio_kernel.canonical import canonical_json

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
