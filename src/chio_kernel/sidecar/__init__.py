"""The loopback sidecar: the embedded kernel behind the HTTP API ``chio_sdk.ChioClient`` speaks.

``chio-durable sidecar`` runs :func:`serve`; :func:`create_app` builds the Starlette app (tests
and embedders can mount it themselves). Every endpoint ``ChioClient`` calls is served with exactly
the JSON it sends and expects, plus a few read/revoke endpoints of our own (see ``docs/sidecar.md``).

Rules the whole app keeps:

* a policy deny is HTTP 200 with a signed deny receipt (``ChioClient`` raises on 403);
* anything a client sends that is not a valid request is a 4xx with ``{"error", "message"}`` —
  bad JSON, wrong types, missing fields, bodies over :data:`MAX_BODY_BYTES` (413), nesting deeper
  than :data:`MAX_JSON_DEPTH`, unknown ids — never a 5xx, and the server keeps serving;
* the kernel is synchronous (SQLite, Ed25519): its calls run in the thread pool so the event loop
  stays responsive;
* binding a non-loopback address requires a bearer token, checked in constant time on every request.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from chio_sdk.models import (
    CapabilityToken,
    ChioHttpRequest,
    ChioReceipt,
    ChioScope,
    HttpReceipt,
    MonetaryAmount,
    Operation,
)
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chio_kernel._coerce import normalize_scope_constraints
from chio_kernel._holds import KernelConflictError
from chio_kernel._postgres_store import KernelKeyRetiredError, is_postgres_dsn, mask_dsn
from chio_kernel._run_context import check_run_metadata
from chio_kernel._kernel import (
    MAX_COST_UNITS,
    CapabilityError,
    KernelInputError,
    check_scope_fields,
    receipt_wire_dict,
)

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_PENDING_HEADERS",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "SidecarConfigError",
    "check_bind",
    "header_timeout_protocol",
    "create_app",
    "is_loopback",
    "serve",
]

log = logging.getLogger("chio_kernel.sidecar")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
#: Request bodies larger than this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 1 << 20
#: JSON nested deeper than this is refused with 422 (no legitimate call needs it; it guards the
#: recursive canonicaliser and validators against stack exhaustion).
MAX_JSON_DEPTH = 64
#: Upper bound for ``GET /v1/receipts?limit=``; the default when no limit is given.
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1_000
#: Seconds a connection may take to deliver a request's complete headers, counted from the moment it
#: waits for a request (connected, or its previous response sent); then it is closed.
DEFAULT_HEADER_TIMEOUT = 10.0
#: At most this many connections may wait for request headers at once; a new one beyond it closes
#: the connection that has waited longest (a slow-header flood cannot crowd out real clients).
DEFAULT_MAX_PENDING_HEADERS = 64
#: ``/chio/evaluate`` maps an HTTP request to a tool call on this server id.
HTTP_TOOL_SERVER = "http"

try:  # orjson is a transitive dependency (prefect); it halves response serialisation time.
    import orjson as _orjson

    def _dumps(obj: Any) -> bytes:
        try:
            return _orjson.dumps(obj)
        except TypeError:  # ints beyond 64 bits, lone surrogates: let the stdlib decide
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

except ImportError:  # pragma: no cover - plain json fallback

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class SidecarConfigError(ValueError):
    """The sidecar was asked to start in a configuration it refuses (e.g. exposed without a token)."""


class ApiError(Exception):
    """A client error: becomes ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


# --- bind / auth ------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True if ``host`` names only this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.lower() in {"localhost", "localhost.localdomain", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the kernel beyond loopback without a bearer token."""
    if token is not None and not token.strip():
        raise SidecarConfigError("--token / CHIO_SIDECAR_TOKEN is empty; pass a non-empty secret")
    if not is_loopback(host) and not token:
        raise SidecarConfigError(
            f"refusing to bind {host!r} without a token: anyone who can reach it could issue "
            "capabilities and evaluate calls. Pass --token SECRET (or set CHIO_SIDECAR_TOKEN), "
            "or bind --host 127.0.0.1."
        )


class _BearerAuth:
    """Pure-ASGI guard: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, got = value.strip().partition(b" ")
                    if scheme.lower() != b"bearer":  # the scheme is case-insensitive (RFC 6750)
                        got = b""
                    got = got.strip()
                    break
            if not got or not hmac.compare_digest(got, self._expected):
                response = _error(
                    401,
                    "unauthorized",
                    "this sidecar requires 'Authorization: Bearer <token>' (the token it was started with)",
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- request / response helpers ----------------------------------------------------------------


def _json(data: Any, status: int = 200) -> Response:
    return Response(_dumps(data), status_code=status, media_type="application/json")


def _error(status: int, error: str, message: str) -> Response:
    return _json({"error": error, "message": message}, status)


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


async def _read_json(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not an integer") from None
        if declared > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "bad_json", "request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except ApiError:
        raise
    except RecursionError:
        raise ApiError(422, "too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # includes UnicodeDecodeError and the int-digits limit
        raise ApiError(400, "bad_json", f"request body is not valid UTF-8 JSON: {_short(err)}") from None
    if not _depth_ok(data):
        raise ApiError(422, "too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    # json.loads lets lone UTF-16 surrogates through (a "\\ud800" escape, or raw bytes it decodes with
    # surrogatepass); no later step can encode them, so refuse them here, for every endpoint
    if _MAYBE_SURROGATE.search(body) and _has_lone_surrogate(data):
        raise ApiError(422, "invalid_request", "a string in the body contains a lone UTF-16 surrogate; send valid Unicode")
    return data


#: A JSON ``\\uD800``-``\\uDFFF`` escape or the UTF-8-style bytes of a surrogate (cheap pre-check).
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


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


async def _read_object(request: Request) -> dict[str, Any]:
    data = await _read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"expected a JSON object, got {type(data).__name__}")
    return data


def _short(err: BaseException, limit: int = 300) -> str:
    text = str(err).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _req_str(data: dict[str, Any], key: str, *, max_len: int = 1024) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(422, "invalid_request", f"'{key}' is required and must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(422, "invalid_request", f"'{key}' is longer than {max_len} characters")
    if not _utf8_ok(value):
        raise ApiError(422, "invalid_request", f"'{key}' is not valid unicode (lone surrogate)")
    return value


def _opt_str(data: dict[str, Any], key: str, *, max_len: int = 1024) -> str | None:
    if data.get(key) is None:
        return None
    return _req_str(data, key, max_len=max_len)


def _opt_int(data: dict[str, Any], key: str, *, minimum: int = 0, maximum: int = 2**62) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ApiError(422, "invalid_request", f"'{key}' must be an integer in [{minimum}, {maximum}]")
    return value


_M = TypeVar("_M", bound=BaseModel)


def _model(cls: type[_M], data: Any, what: str) -> _M:
    """Validate a wire object strictly: JSON types as the model declares them (no ``false`` -> 0,
    no ``"12"`` -> 12), so a wrong type is a 422, never silently coerced."""
    try:
        return cls.model_validate_json(_dumps(data), strict=True)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", f"{what}: {_validation_message(err)}") from None


def _scope(data: Any, what: str) -> ChioScope:
    """A scope from the wire: the kernel's own unknown-field check first (pydantic would drop a
    misspelt ``constraint`` and issue a wider scope), then strict validation."""
    check_scope_fields(data, what)  # KernelInputError -> 422 naming the field
    # upstream's {"type": "require_approval_above", "value": {"threshold_units": N}} -> "value": N
    return _model(ChioScope, normalize_scope_constraints(data, what), what)


def _run_metadata(data: dict[str, Any]) -> dict[str, str] | None:
    """The body's optional ``"metadata"`` (the caller's run context, signed into the receipt), checked
    before anything is decided: a 422 saying what is wrong otherwise."""
    try:
        return check_run_metadata(data.get("metadata"))
    except KernelInputError as err:
        raise ApiError(422, "invalid_request", f"'metadata': {_short(err)}") from None


def _dump_receipt(receipt: ChioReceipt) -> dict[str, Any]:
    # exactly the signed fields (no empty evidence/metadata): what we hand out is what we signed
    return receipt_wire_dict(receipt)


def _dump_token(token: CapabilityToken) -> dict[str, Any]:
    return token.model_dump(mode="json", exclude_none=True)


def _parse_rate_limit(value: Any) -> tuple[int, float] | None:
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


Handler = Callable[[Request], Awaitable[Response]]


def _store_errors(kernel: Any) -> tuple[type[Exception], ...]:
    """The kernel store's transient errors (``KernelStore.transient_errors``); SQLite's by default."""
    errors = getattr(getattr(kernel, "_store", None), "transient_errors", None)
    return tuple(errors) if errors else (sqlite3.Error,)


def _endpoint(fn: Handler, store_errors: tuple[type[Exception], ...] = (sqlite3.Error,)) -> Handler:
    """Map every failure of one handler to a JSON answer: the known client errors 4xx, the store's
    transient errors 503, anything else 500 with the traceback logged (so a bug of ours is never
    disguised as a client error)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ApiError as err:
            return _error(err.status, err.error, err.message)
        except ValidationError as err:
            return _error(422, "invalid_request", _validation_message(err))
        except CapabilityError as err:
            return _error(400, "capability_error", _short(err))
        except KernelConflictError as err:  # e.g. an idempotency key reused for another call (docs/budgets.md)
            return _error(409, err.code, _short(err))
        except KernelInputError as err:  # input the kernel cannot take (it says what to pass)
            return _error(422, "invalid_request", _short(err))
        except KernelKeyRetiredError as err:  # this kernel may sign nothing more: not the request's fault
            log.error("%s %s refused: %s", request.method, request.url.path, err)
            return _error(503, "kernel_key_retired", _short(err, 600))
        except store_errors as err:  # the store, not the request: retryable, and nothing was decided
            log.warning("store error in %s %s: %s", request.method, request.url.path, err)
            return _error(503, "store_unavailable", f"the receipt store could not be used ({_short(err)}); retry")
        except Exception:  # a bug on our side: say so, keep serving
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return _error(500, "internal_error", "the sidecar hit an unexpected error; see its log")

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _store_info(kernel: Any) -> dict[str, str]:
    """``/chio/health``'s store fields: ``store`` = ``"sqlite"`` or ``"postgresql"``, and for
    PostgreSQL ``store_url`` with the password masked (``PostgresKernel.store``)."""
    url = getattr(kernel, "store", None)
    if isinstance(url, str) and is_postgres_dsn(url):
        return {"store": "postgresql", "store_url": mask_dsn(url)}
    return {"store": "sqlite"}


# --- the app ----------------------------------------------------------------------------------


def create_app(
    kernel: Any | None = None,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
) -> Starlette:
    """Build the sidecar ASGI app around ``kernel`` (or a new ``Kernel(data_dir)``).

    With ``token`` every request must carry ``Authorization: Bearer <token>``.
    """
    if kernel is None:
        from chio_kernel._kernel import Kernel

        kernel = Kernel(data_dir=data_dir)
    k = kernel
    store_errors = _store_errors(k)

    def endpoint(fn: Handler) -> Handler:
        return _endpoint(fn, store_errors)


    store_info = _store_info(k)

    @endpoint
    async def health(request: Request) -> Response:
        return _json({"status": "ok", "kernel_key": k.public_key_hex, "version": _version(), **store_info})

    @endpoint
    async def create_capability(request: Request) -> Response:
        data = await _read_object(request)
        subject = _req_str(data, "subject", max_len=4096)
        if "scope" not in data:
            raise ApiError(422, "invalid_request", "'scope' is required (a ChioScope object)")
        scope = _scope(data["scope"], "scope")
        ttl = _opt_int(data, "ttl_seconds", minimum=1, maximum=10 * 366 * 86400)
        cap_id = _opt_str(data, "id", max_len=256)
        rate_limit = _parse_rate_limit(data.get("rate_limit"))
        token_ = await run_in_threadpool(
            k.create_capability,
            subject=subject,
            scope=scope,
            ttl_seconds=ttl if ttl is not None else 3600,
            capability_id=cap_id,
            rate_limit=rate_limit,
        )
        return _json(_dump_token(token_))

    @endpoint
    async def validate_capability(request: Request) -> Response:
        data = await _read_object(request)
        token_ = _model(CapabilityToken, data, "capability token")
        valid, reason = await run_in_threadpool(k.validate_capability, token_)
        body: dict[str, Any] = {"valid": bool(valid)}
        if reason:
            body["reason"] = reason
        return _json(body)

    @endpoint
    async def attenuate_capability(request: Request) -> Response:
        data = await _read_object(request)
        parent_raw = data.get("parent_token", data.get("parent_id"))
        if isinstance(parent_raw, str):
            parent: Any = _req_str(data, "parent_token" if "parent_token" in data else "parent_id")
        elif isinstance(parent_raw, dict):
            parent = _model(CapabilityToken, parent_raw, "parent_token")
        else:
            raise ApiError(
                422, "invalid_request", "'parent_token' is required (the parent CapabilityToken or its id)"
            )
        if "new_scope" not in data:
            raise ApiError(422, "invalid_request", "'new_scope' is required (a ChioScope object)")
        new_scope = _scope(data["new_scope"], "new_scope")
        ttl = _opt_int(data, "ttl_seconds", minimum=1, maximum=10 * 366 * 86400)
        cap_id = _opt_str(data, "id", max_len=256)
        parent_id = parent if isinstance(parent, str) else parent.id
        known = await run_in_threadpool(k.get_capability, parent_id)
        if known is None:
            raise ApiError(404, "unknown_capability", f"no capability {parent_id!r} in this kernel")
        if not isinstance(parent, str):
            # attenuate from the token this kernel stored, never from what the caller claims it says
            if parent.model_dump(exclude_none=True) != known.model_dump(exclude_none=True):
                raise ApiError(
                    400, "not_attenuable", f"parent_token does not match the stored capability {parent_id!r}"
                )
        valid, reason = await run_in_threadpool(k.validate_capability, known)
        if not valid:
            raise ApiError(400, "not_attenuable", f"parent capability {parent_id!r} is not valid: {reason}")
        try:
            child = await run_in_threadpool(
                k.attenuate_capability, parent_id, new_scope, ttl_seconds=ttl, capability_id=cap_id
            )
        except CapabilityError as err:
            raise ApiError(400, "not_attenuable", _short(err)) from None
        return _json(_dump_token(child))

    @endpoint
    async def evaluate(request: Request) -> Response:
        data = await _read_object(request)
        capability_id = _req_str(data, "capability_id", max_len=256)
        tool_server = _req_str(data, "tool_server")
        tool_name = _req_str(data, "tool_name")
        parameters = data.get("parameters", {})
        if not isinstance(parameters, dict):
            raise ApiError(422, "invalid_request", "'parameters' must be a JSON object of named arguments")
        idem = _opt_str(data, "idempotency_key", max_len=512)
        cost = None
        if data.get("cost") is not None:
            cost = _model(MonetaryAmount, data["cost"], "cost")
            if not 0 <= cost.units <= MAX_COST_UNITS or not cost.currency:
                raise ApiError(
                    422, "invalid_request", "'cost' needs units from 0 to 2^63-1 (minor units) and a currency"
                )
        operation = Operation.INVOKE
        if data.get("operation") is not None:
            try:
                operation = Operation(data["operation"])
            except (ValueError, TypeError):
                allowed = ", ".join(o.value for o in Operation)
                raise ApiError(422, "invalid_request", f"'operation' must be one of {allowed}") from None
        approval_id = _opt_str(data, "approval_id", max_len=256)  # a re-evaluation (docs/approvals.md)
        metadata = _run_metadata(data)
        # the client's parameter_hash is ignored: the kernel computes its own
        receipt = await run_in_threadpool(
            k.evaluate,
            capability_id,
            tool_server,
            tool_name,
            parameters,
            idempotency_key=idem,
            cost=cost,
            operation=operation,
            approval_id=approval_id,
            metadata=metadata,
        )
        return _json(_dump_receipt(receipt))

    @endpoint
    async def record_denial(request: Request) -> Response:
        """A signed deny receipt for a call a layer refused before evaluation (chio_kernel._denials)."""
        data = await _read_object(request)
        capability_id = data.get("capability_id", "")
        if capability_id != "":
            capability_id = _req_str(data, "capability_id", max_len=256)
        tool_server = data.get("tool_server", "")
        if tool_server != "":
            tool_server = _req_str(data, "tool_server")
        tool_name = _req_str(data, "tool_name")
        guard = _req_str(data, "guard", max_len=128)
        reason = _req_str(data, "reason", max_len=8192)
        parameters = data.get("parameters", {})
        if not isinstance(parameters, dict):
            raise ApiError(422, "invalid_request", "'parameters' must be a JSON object of named arguments")
        envelope = _model(ChioScope, data["envelope"], "envelope") if data.get("envelope") is not None else None
        receipt = await run_in_threadpool(
            k.record_denial, capability_id, tool_server, tool_name, parameters,
            guard=guard, reason=reason, envelope=envelope, metadata=_run_metadata(data),
        )
        return _json(_dump_receipt(receipt))

    @endpoint
    async def verify_receipt(request: Request) -> Response:
        data = await _read_object(request)
        receipt = _model(ChioReceipt, data, "receipt")
        valid = await run_in_threadpool(k.verify_receipt, receipt)
        return _json({"valid": bool(valid)})

    @endpoint
    async def get_receipt(request: Request) -> Response:
        rid = request.path_params["receipt_id"]
        receipt = await run_in_threadpool(k.get_receipt, rid)
        if receipt is None:
            raise ApiError(404, "unknown_receipt", f"no receipt {rid!r} in this kernel's store")
        return _json(_dump_receipt(receipt))

    @endpoint
    async def list_receipts(request: Request) -> Response:
        q = request.query_params
        cap = q.get("capability_id") or None
        limit = _query_int(q.get("limit"), "limit", 1, MAX_LIST_LIMIT)
        after = _query_int(q.get("after_seq"), "after_seq", 0, 2**62)
        rows = await run_in_threadpool(  # seq: the page position
            lambda: k.list_receipts_with_seq(
                capability_id=cap,
                limit=limit if limit is not None else DEFAULT_LIST_LIMIT,
                after_seq=after,
            )
        )
        return _json({
            "receipts": [_dump_receipt(r) for _, r in rows],
            "count": len(rows),
            "next_after_seq": rows[-1][0] if rows else after,
        })

    @endpoint
    async def verify_chain(request: Request) -> Response:
        report = await run_in_threadpool(k.verify_chain)
        return _json(_report_dict(report))

    @endpoint
    async def list_capabilities(request: Request) -> Response:
        tokens = await run_in_threadpool(k.list_capabilities)
        return _json({"capabilities": [_dump_token(t) for t in tokens], "count": len(tokens)})

    async def known_capability(request: Request) -> tuple[str, Any]:
        """``(id, token)`` of the path's capability; 404 if this kernel never issued it."""
        cid = request.path_params["capability_id"]
        token_ = await run_in_threadpool(k.get_capability, cid)
        if token_ is None:
            raise ApiError(404, "unknown_capability", f"no capability {cid!r} in this kernel")
        return cid, token_

    @endpoint
    async def get_capability(request: Request) -> Response:
        _, token_ = await known_capability(request)
        return _json(_dump_token(token_))

    @endpoint
    async def revoke_capability(request: Request) -> Response:
        cid, _ = await known_capability(request)
        revoked = await run_in_threadpool(k.revoke_capability, cid)
        return _json({"revoked": list(revoked)})

    @endpoint
    async def http_evaluate(request: Request) -> Response:
        data = await _read_object(request)
        http_req = _model(ChioHttpRequest, data, "HTTP request")
        for field in ("request_id", "method", "route_pattern", "path"):
            _req_str(data, field, max_len=8192)
        header_token = request.headers.get("x-chio-capability")
        result = await run_in_threadpool(_evaluate_http, k, http_req, header_token)
        return _json(result)

    @endpoint
    async def http_verify(request: Request) -> Response:
        data = await _read_object(request)
        receipt = _model(HttpReceipt, data, "HTTP receipt")
        return _json({"valid": _verify_http_receipt(k, receipt)})

    routes = [
        Route("/chio/health", health, methods=["GET"]),
        Route("/chio/evaluate", http_evaluate, methods=["POST"]),
        Route("/chio/verify", http_verify, methods=["POST"]),
        Route("/v1/capabilities", create_capability, methods=["POST"]),
        Route("/v1/capabilities", list_capabilities, methods=["GET"]),
        Route("/v1/capabilities/validate", validate_capability, methods=["POST"]),
        Route("/v1/capabilities/attenuate", attenuate_capability, methods=["POST"]),
        Route("/v1/capabilities/{capability_id}", get_capability, methods=["GET"]),
        Route("/v1/capabilities/{capability_id}/revoke", revoke_capability, methods=["POST"]),
        Route("/v1/evaluate", evaluate, methods=["POST"]),
        Route("/v1/receipts/denials", record_denial, methods=["POST"]),
        Route("/v1/receipts/verify", verify_receipt, methods=["POST"]),
        Route("/v1/receipts/verify-chain", verify_chain, methods=["GET"]),
        Route("/v1/receipts", list_receipts, methods=["GET"]),
        Route("/v1/receipts/{receipt_id}", get_receipt, methods=["GET"]),
        *approval_routes(k, endpoint),
    ]
    from chio_kernel.sidecar._budgets import budget_routes  # settle / release / expire / budgets

    routes += budget_routes(k, endpoint)

    async def http_exception(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return _error(404, "not_found", f"no endpoint {request.method} {request.url.path}")
        if status == 405:
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
        return _error(status, "http_error", _short(exc))

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_exception})
    app.state.kernel = k
    if token:
        app.add_middleware(_BearerAuth, token=token)
    return app


def _query_int(raw: str | None, name: str, minimum: int, maximum: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", f"query parameter '{name}' must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(422, "invalid_request", f"query parameter '{name}' must be in [{minimum}, {maximum}]")
    return value


def _report_dict(report: Any) -> dict[str, Any]:
    return {
        "ok": bool(report.ok),
        "count": report.count,
        "first_broken_index": report.first_broken_index,
        "reason": report.reason,
    }


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chio-durable")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "0+unknown"


# after the definitions above, which these modules import from the package
from chio_kernel.sidecar._http_requests import (  # noqa: E402
    _capability_from_header as _capability_from_header,
    _evaluate_http as _evaluate_http,
    _verify_http_receipt as _verify_http_receipt,
)
from chio_kernel.sidecar._approvals import approval_routes  # noqa: E402
from chio_kernel.sidecar._server import header_timeout_protocol as header_timeout_protocol  # noqa: E402
from chio_kernel.sidecar._server import serve as serve  # noqa: E402
