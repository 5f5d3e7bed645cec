"""JSON answers: one serialiser (orjson when importable), receipts and tokens as served."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chio_sdk.models import CapabilityToken, ChioReceipt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from chio_kernel._paging import Page
from chio_kernel._receipts import receipt_wire_dict
from chio_kernel._secrets import mask_secrets

__all__ = ["dump_receipt", "dump_token", "dumps", "error_response", "json_response", "page_answer"]


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
