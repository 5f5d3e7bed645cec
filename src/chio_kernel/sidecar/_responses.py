"""JSON answers: one serialiser (orjson when importable), receipts and tokens as served."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chio_sdk.models import CapabilityToken, ChioReceipt, Decision, ToolCallAction
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from chio_kernel._paging import Page
from chio_kernel._receipts import receipt_wire_dict
from chio_kernel._secrets import mask_secrets

__all__ = ["dump_receipt", "dump_token", "dumps", "error_response", "json_response", "page_answer", "receipt_json"]


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


def receipt_json(receipt: ChioReceipt) -> bytes:
    """``dumps(dump_receipt(receipt))``, the same bytes, without pydantic's serialiser for the receipts
    an evaluation returns (no evidence; run context of text values); any other goes the model way."""
    if type(receipt) is not ChioReceipt or receipt.evidence:
        return dumps(dump_receipt(receipt))
    action, verdict, meta = receipt.action, receipt.decision, receipt.metadata
    if type(action) is not ToolCallAction or type(verdict) is not Decision or (
        meta and not all(type(v) is str for v in meta.values())
    ):
        return dumps(dump_receipt(receipt))
    decision = {"verdict": verdict.verdict}
    if verdict.reason is not None:
        decision["reason"] = verdict.reason
    if verdict.guard is not None:
        decision["guard"] = verdict.guard
    data = {  # the fields in the model's order, as model_dump(mode="json", exclude_none=True) gives them
        "id": receipt.id,
        "timestamp": receipt.timestamp,
        "capability_id": receipt.capability_id,
        "tool_server": receipt.tool_server,
        "tool_name": receipt.tool_name,
        "action": {"parameters": action.parameters, "parameter_hash": action.parameter_hash},
        "decision": decision,
        "content_hash": receipt.content_hash,
        "policy_hash": receipt.policy_hash,
    }
    if meta:
        data["metadata"] = meta
    data["kernel_key"] = receipt.kernel_key
    data["signature"] = receipt.signature
    return dumps(data)


def dump_token(token: CapabilityToken) -> dict[str, Any]:
    return token.model_dump(mode="json", exclude_none=True)


async def page_answer(
    request: Request,
    key: str,
    fetch: Callable[[], Page[Any]],
    render: Callable[[Any], Any] | None = None,
    extra: Callable[[Page[Any]], dict[str, Any]] | None = None,
) -> Response:
    """One page of a listing: ``{key: items, "count", "next_cursor", **extra(page)}``, and a
    ``Link: <...>; rel="next"`` header (the same query with ``cursor`` moved on) while more follow.

    The page is read, each item rendered (``render``) and the body serialised in the thread pool:
    the event loop, which runs the evaluations, only sends the bytes.
    """

    def build() -> tuple[bytes, str | None]:
        page = fetch()
        items = page.items if render is None else [render(item) for item in page.items]
        more = extra(page) if extra is not None else {}
        return dumps({key: items, "count": len(items), "next_cursor": page.next_cursor, **more}), page.next_cursor

    body, next_cursor = await run_in_threadpool(build)
    response = Response(body, media_type="application/json")
    if next_cursor is not None:
        following = request.url.remove_query_params("after_seq").include_query_params(cursor=next_cursor)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response
