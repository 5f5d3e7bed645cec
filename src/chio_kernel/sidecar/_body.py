"""Reading request bodies and checking their fields: every refusal is an :class:`ApiError` (4xx)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from chio_sdk.models import ChioScope
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from chio_kernel._coerce import normalize_scope_constraints
from chio_kernel._errors import KernelInputError
from chio_kernel._kernel import check_scope_fields
from chio_kernel._run_context import check_run_metadata
from chio_kernel.sidecar._config import MAX_BODY_BYTES, MAX_JSON_DEPTH
from chio_kernel.sidecar._errors import ApiError, short, validation_message
from chio_kernel.sidecar._responses import dumps

_orjson_loads: Callable[[bytes], Any] | None
try:  # orjson (a transitive dependency) parses a small body ~8x faster than json.loads
    from orjson import JSONDecodeError as _OrjsonError, loads as _orjson_loads
except ImportError:  # pragma: no cover - the stdlib path alone
    _orjson_loads = None

__all__ = [
    "model",
    "only_fields",
    "opt_int",
    "opt_str",
    "parse_rate_limit",
    "query_cursor",
    "query_int",
    "read_object",
    "read_scope_object",
    "req_str",
    "run_metadata",
    "scope",
]

#: A JSON ``\\uD800``-``\\uDFFF`` escape or the UTF-8-style bytes of a surrogate (cheap pre-check).
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
#: Every ASCII digit as "0", anything else as " ": 20 zeros in a row in a body so mapped mean maybe an
#: integer beyond 64 bits, which orjson would turn into a float (a translate is ~8x faster than a regex).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_TWENTY_DIGITS = b"0" * 20


def _reject_constant(name: str) -> Any:
    raise ApiError(400, "bad_json", f"{name} is not valid JSON (numbers must be finite)")


def _depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Iterative nesting check (no recursion: the point is to refuse what would blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_lone_surrogate(value: Any) -> bool:
    """Does any string (key or value) in the parsed JSON hold a lone surrogate? (iterative)"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not _utf8_ok(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _declared_length(length: bytes | str | None) -> None:
    """Refuse (400 / 413) a ``Content-Length`` that is not an integer or is over :data:`MAX_BODY_BYTES`."""
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if declared > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")


def _joined(chunks: list[bytes], size: int, chunk: bytes) -> int:
    size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    chunks.append(chunk)
    return size


async def _read_body(request: Request) -> bytes:
    """The raw body, refused (413) over :data:`MAX_BODY_BYTES` on ``Content-Length`` and while streaming."""
    _declared_length(request.headers.get("content-length"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size = _joined(chunks, size, chunk)
    return b"".join(chunks)


async def _read_scope_body(scope: Scope, receive: Receive) -> bytes:
    """:func:`_read_body` straight from the ASGI scope and ``receive`` (no ``Request`` object: the hot path)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            _declared_length(value)
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            size = _joined(chunks, size, message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def _too_deep(body: bytes, data: Any) -> bool:
    # nesting needs one "{" or "[" per level: a body with few of them needs no walk
    return body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and not _depth_ok(data)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON: UTF-8, finite numbers, at most :data:`MAX_JSON_DEPTH` deep, no lone surrogates.

    The fast path (orjson) takes what it parses to the same values as ``json.loads``: it refuses
    lone surrogates, ``NaN``/``Infinity``, non-UTF-8 and nesting past 1024 itself, and a body with
    a possible integer beyond 64 bits skips it. Whatever it refuses goes the ``json.loads`` way,
    so every refusal and its message are those of the stdlib path."""
    if not body:
        raise ApiError(400, "bad_json", "request body is empty; send a JSON object")
    if _orjson_loads is not None and _TWENTY_DIGITS not in body.translate(_DIGITS_AS_ZERO):
        try:
            data = _orjson_loads(body)
        except _OrjsonError:
            pass
        else:
            if _too_deep(body, data):
                raise ApiError(422, "too_deep", _TOO_DEEP)
            return data
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except ApiError:
        raise
    except RecursionError:
        raise ApiError(422, "too_deep", _TOO_DEEP) from None
    except ValueError as err:  # includes UnicodeDecodeError and the int-digits limit
        raise ApiError(400, "bad_json", f"request body is not valid UTF-8 JSON: {short(err)}") from None
    if _too_deep(body, data):
        raise ApiError(422, "too_deep", _TOO_DEEP)
    # json.loads lets lone UTF-16 surrogates through (a "\\ud800" escape, or raw bytes it decodes with
    # surrogatepass); no later step can encode them, so refuse them here, for every endpoint
    if _MAYBE_SURROGATE.search(body) and _has_lone_surrogate(data):
        raise ApiError(422, "invalid_request", "a string in the body contains a lone UTF-16 surrogate; send valid Unicode")
    return data


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"expected a JSON object, got {type(data).__name__}")
    return data


async def read_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (4xx otherwise)."""
    return _object(parse_json(await _read_body(request)))


async def read_scope_object(scope: Scope, receive: Receive) -> dict[str, Any]:
    """:func:`read_object` from the ASGI scope and ``receive``, for a handler that builds no ``Request``."""
    return _object(parse_json(await _read_scope_body(scope, receive)))


def req_str(data: dict[str, Any], key: str, *, max_len: int = 1024) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(422, "invalid_request", f"'{key}' is required and must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(422, "invalid_request", f"'{key}' is longer than {max_len} characters")
    if not _utf8_ok(value):
        raise ApiError(422, "invalid_request", f"'{key}' is not valid unicode (lone surrogate)")
    return value


def opt_str(data: dict[str, Any], key: str, *, max_len: int = 1024) -> str | None:
    if data.get(key) is None:
        return None
    return req_str(data, key, max_len=max_len)


def opt_int(data: dict[str, Any], key: str, *, minimum: int = 0, maximum: int = 2**62) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ApiError(422, "invalid_request", f"'{key}' must be an integer in [{minimum}, {maximum}]")
    return value


def query_cursor(raw: str | None) -> str | None:
    """The ``cursor`` query parameter (None: the first page); the kernel checks what it says."""
    if raw is None or raw == "":
        return None
    if len(raw) > 1024:
        raise ApiError(422, "invalid_request", "query parameter 'cursor' must be the next_cursor of the previous page")
    return raw


def query_int(raw: str | None, name: str, minimum: int, maximum: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", f"query parameter '{name}' must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(422, "invalid_request", f"query parameter '{name}' must be in [{minimum}, {maximum}]")
    return value


_M = TypeVar("_M", bound=BaseModel)


def only_fields(data: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Refuse (422, naming them) the fields of ``data`` that ``what`` does not take: a misspelt
    optional field (``idempotencyKey``) must not be dropped silently and the call run without it."""
    if len(data) > len(allowed) or not allowed.issuperset(data):
        unknown = sorted(k for k in data if k not in allowed)
        raise ApiError(
            422, "invalid_request",
            f"{what} has unknown field(s) {', '.join(repr(k[:64]) for k in unknown[:10])}; it takes "
            f"{', '.join(sorted(allowed))}",
        )


def model(cls: type[_M], data: Any, what: str) -> _M:
    """Validate a wire object strictly: JSON types as the model declares them (no ``false`` -> 0,
    no ``"12"`` -> 12), so a wrong type is a 422, never silently coerced; a top-level field the
    model does not declare is refused too (422 naming it)."""
    if isinstance(data, dict):
        only_fields(data, frozenset(cls.model_fields), what)
    try:
        return cls.model_validate_json(dumps(data), strict=True)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", f"{what}: {validation_message(err)}") from None


def scope(data: Any, what: str) -> ChioScope:
    """A scope from the wire: the kernel's own unknown-field check first (pydantic would drop a
    misspelt ``constraint`` and issue a wider scope), then strict validation."""
    check_scope_fields(data, what)  # KernelInputError -> 422 naming the field
    # upstream's {"type": "require_approval_above", "value": {"threshold_units": N}} -> "value": N
    return model(ChioScope, normalize_scope_constraints(data, what), what)


def run_metadata(data: dict[str, Any]) -> dict[str, str] | None:
    """The body's optional ``"metadata"`` (the caller's run context, signed into the receipt), checked
    before anything is decided: a 422 saying what is wrong otherwise."""
    try:
        return check_run_metadata(data.get("metadata"))
    except KernelInputError as err:
        raise ApiError(422, "invalid_request", f"'metadata': {short(err)}") from None


def parse_rate_limit(value: Any) -> tuple[int, float] | None:
    """``{"max_calls": n, "per_seconds": s}`` or ``[n, s]`` -> ``(n, s)``."""
    if value is None:
        return None
    if isinstance(value, dict):
        calls, per = value.get("max_calls"), value.get("per_seconds")
    elif isinstance(value, list) and len(value) == 2:
        calls, per = value
    else:
        calls = per = None
    if (
        isinstance(calls, int)
        and not isinstance(calls, bool)
        and calls > 0
        and isinstance(per, (int, float))
        and not isinstance(per, bool)
        and 0 < per <= 10**9
    ):
        return calls, float(per)
    raise ApiError(
        422,
        "invalid_request",
        "'rate_limit' must be {\"max_calls\": <int > 0>, \"per_seconds\": <number > 0>}",
    )
