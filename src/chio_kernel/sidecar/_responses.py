"""JSON answers: one serialiser (orjson when importable), receipts and tokens as served."""

from __future__ import annotations

import json
from typing import Any

from chio_sdk.models import CapabilityToken, ChioReceipt
from starlette.responses import Response

from chio_kernel._receipts import receipt_wire_dict
from chio_kernel._secrets import mask_secrets

__all__ = ["dump_receipt", "dump_token", "dumps", "error_response", "json_response"]


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


try:  # orjson is a transitive dependency (prefect); it halves response serialisation time.
    import orjson as _orjson

    def dumps(obj: Any) -> bytes:
        """Compact UTF-8 JSON."""
        try:
            return _orjson.dumps(obj)
        except TypeError:  # ints beyond 64 bits, lone surrogates: let the stdlib decide
            return _stdlib_dumps(obj)

except ImportError:  # pragma: no cover - plain json fallback
    dumps = _stdlib_dumps


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


def error_response(status: int, error: str, message: str) -> Response:
    """Every error answer: ``{"error": code, "message": what to send instead}``."""
    return json_response({"error": error, "message": mask_secrets(message)}, status)


def dump_receipt(receipt: ChioReceipt) -> dict[str, Any]:
    # exactly the signed fields (no empty evidence/metadata): what we hand out is what we signed
    return receipt_wire_dict(receipt)


def dump_token(token: CapabilityToken) -> dict[str, Any]:
    return token.model_dump(mode="json", exclude_none=True)
