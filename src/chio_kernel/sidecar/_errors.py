"""Failures as HTTP answers: the known client errors 4xx, the store's transient errors 503, anything
else a logged 500 (a bug of ours is never disguised as a client error, and the server keeps serving)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from chio_kernel._errors import CapabilityError, CapabilityLimitError, KernelInputError
from chio_kernel._holds import KernelConflictError
from chio_kernel._postgres_store import KernelKeyRetiredError
from chio_kernel.sidecar._responses import error_response

__all__ = [
    "ApiError",
    "Handler",
    "SidecarConfigError",
    "endpoint",
    "found",
    "http_exception",
    "short",
    "store_errors",
    "validation_message",
]

log = logging.getLogger("chio_kernel.sidecar")

Handler = Callable[[Request], Awaitable[Response]]


class SidecarConfigError(ValueError):
    """The sidecar was asked to start in a configuration it refuses (e.g. exposed without a token)."""


class ApiError(Exception):
    """A client error: becomes ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


_T = TypeVar("_T")


async def found(lookup: Callable[[str], _T | None], key: str, error: str, message: str) -> _T:
    """``lookup(key)`` in the thread pool: what it found, or a 404 answer ``error`` / ``message`` if nothing."""
    value = await run_in_threadpool(lookup, key)
    if value is None:
        raise ApiError(404, error, message)
    return value


def short(err: BaseException, limit: int = 300) -> str:
    text = str(err).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def store_errors(kernel: Any) -> tuple[type[Exception], ...]:
    """The kernel store's transient errors (``KernelStore.transient_errors``); SQLite's by default."""
    errors = getattr(getattr(kernel, "_store", None), "transient_errors", None)
    return tuple(errors) if errors else (sqlite3.Error,)


def _client_error(err: Exception) -> Response | None:
    """The answer for a known client error, or None."""
    if isinstance(err, ApiError):
        return error_response(err.status, err.error, err.message)
    if isinstance(err, ValidationError):
        return error_response(422, "invalid_request", validation_message(err))
    if isinstance(err, CapabilityLimitError):  # too many grants, too deep: the sentence names the limit
        return error_response(422, err.code, short(err, 600))
    if isinstance(err, CapabilityError):
        return error_response(400, "capability_error", short(err))
    if isinstance(err, KernelConflictError):  # e.g. an idempotency key reused for another call (docs/budgets.md)
        return error_response(409, err.code, short(err))
    if isinstance(err, KernelInputError):  # input the kernel cannot take (it says what to pass)
        return error_response(422, "invalid_request", short(err))
    return None


def error_answer(request: Request, err: Exception) -> Response:
    """The answer for any exception a handler raised."""
    answer = _client_error(err)
    if answer is not None:
        return answer
    if isinstance(err, KernelKeyRetiredError):  # this kernel may sign nothing more: not the request's fault
        log.error("%s %s refused: %s", request.method, request.url.path, err)
        return error_response(503, "kernel_key_retired", short(err, 600))
    if isinstance(err, request.app.state.store_errors):  # the store: retryable, nothing was decided
        log.warning("store error in %s %s: %s", request.method, request.url.path, err)
        return error_response(503, "store_unavailable", f"the receipt store could not be used ({short(err)}); retry")
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=err)
    return error_response(500, "internal_error", "the sidecar hit an unexpected error; see its log")


def endpoint(fn: Handler) -> Handler:
    """Wrap a handler so every failure becomes a JSON answer (:func:`error_answer`)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as err:  # mapped: client errors 4xx, store 503, a bug of ours 500 (logged)
            return error_answer(request, err)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (unknown path, wrong method) in the sidecar's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return error_response(404, "not_found", f"no endpoint {request.method} {request.url.path}")
    if status == 405:
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    return error_response(status, "http_error", short(exc))
