"""Capability endpoints: issue, validate, attenuate, list, show, revoke (``/v1/capabilities...``)."""

from __future__ import annotations

from typing import Any

from chio_sdk.models import CapabilityToken
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel._errors import CapabilityError, CapabilityLimitError
from chio_kernel.sidecar._auth import ALL_ROLES, admits, principal_of
from chio_kernel.sidecar._body import (
    model,
    only_fields,
    opt_int,
    opt_str,
    parse_rate_limit,
    query_cursor,
    query_int,
    read_object,
    req_str,
    scope,
)
from chio_kernel.sidecar._config import MAX_PAGE_LIMIT, MAX_TTL_SECONDS
from chio_kernel.sidecar._errors import ApiError, endpoint, found, short
from chio_kernel.sidecar._responses import dump_token, json_response, page_answer

__all__ = ["ROUTES"]

_CREATE_FIELDS = frozenset({"subject", "scope", "ttl_seconds", "id", "rate_limit"})
_ATTENUATE_FIELDS = frozenset({"parent_token", "parent_id", "new_scope", "ttl_seconds", "id"})


@endpoint
@admits("operator")
async def create_capability(request: Request) -> Response:
    data = await read_object(request)
    only_fields(data, _CREATE_FIELDS, "the /v1/capabilities body")
    subject = req_str(data, "subject", max_len=4096)
    if "scope" not in data:
        raise ApiError(422, "invalid_request", "'scope' is required (a ChioScope object)")
    granted = scope(data["scope"], "scope")
    ttl = opt_int(data, "ttl_seconds", minimum=1, maximum=MAX_TTL_SECONDS)
    cap_id = opt_str(data, "id", max_len=256)
    rate_limit = parse_rate_limit(data.get("rate_limit"))
    token = await run_in_threadpool(
        request.app.state.kernel.create_capability,
        subject=subject,
        scope=granted,
        ttl_seconds=ttl if ttl is not None else 3600,
        capability_id=cap_id,
        rate_limit=rate_limit,
    )
    return json_response(dump_token(token))


@endpoint
@admits(*ALL_ROLES)
async def validate_capability(request: Request) -> Response:
    token = model(CapabilityToken, await read_object(request), "capability token")
    valid, reason = await run_in_threadpool(request.app.state.kernel.validate_capability, token)
    body: dict[str, Any] = {"valid": bool(valid)}
    if reason:
        body["reason"] = reason
    return json_response(body)


def _parent(data: dict[str, Any]) -> str | CapabilityToken:
    """The parent of an attenuation: its id, or the token the caller holds."""
    parent_raw = data.get("parent_token", data.get("parent_id"))
    if isinstance(parent_raw, str):
        return req_str(data, "parent_token" if "parent_token" in data else "parent_id")
    if isinstance(parent_raw, dict):
        return model(CapabilityToken, parent_raw, "parent_token")
    raise ApiError(422, "invalid_request", "'parent_token' is required (the parent CapabilityToken or its id)")


async def _attenuable_parent(kernel: Any, parent: str | CapabilityToken) -> str:
    """The parent's id once the stored parent is known, matches what the caller sent, and is valid."""
    parent_id = parent if isinstance(parent, str) else parent.id
    message = f"no capability {parent_id!r} in this kernel"
    known = await found(kernel.get_capability, parent_id, "unknown_capability", message)
    # attenuate from the token this kernel stored, never from what the caller claims it says
    if not isinstance(parent, str) and parent.model_dump(exclude_none=True) != known.model_dump(exclude_none=True):
        raise ApiError(400, "not_attenuable", f"parent_token does not match the stored capability {parent_id!r}")
    valid, reason = await run_in_threadpool(kernel.validate_capability, known)
    if not valid:
        raise ApiError(400, "not_attenuable", f"parent capability {parent_id!r} is not valid: {reason}")
    return parent_id


@endpoint
@admits("workload")
async def attenuate_capability(request: Request) -> Response:
    kernel = request.app.state.kernel
    data = await read_object(request)
    only_fields(data, _ATTENUATE_FIELDS, "the /v1/capabilities/attenuate body")
    parent = _parent(data)
    if "new_scope" not in data:
        raise ApiError(422, "invalid_request", "'new_scope' is required (a ChioScope object)")
    new_scope = scope(data["new_scope"], "new_scope")
    ttl = opt_int(data, "ttl_seconds", minimum=1, maximum=MAX_TTL_SECONDS)
    cap_id = opt_str(data, "id", max_len=256)
    parent_id = await _attenuable_parent(kernel, parent)
    try:
        child = await run_in_threadpool(
            kernel.attenuate_capability, parent_id, new_scope, ttl_seconds=ttl, capability_id=cap_id
        )
    except CapabilityLimitError as err:
        raise ApiError(422, err.code, short(err, 600)) from None
    except CapabilityError as err:
        if principal_of(request).role == "workload":  # narrowing only: widening is not its to do
            raise ApiError(403, "forbidden", f"a workload may only narrow a capability: {short(err)}") from None
        raise ApiError(400, "not_attenuable", short(err)) from None
    return json_response(dump_token(child))


@endpoint
@admits("operator")
async def list_capabilities(request: Request) -> Response:
    q = request.query_params
    limit = query_int(q.get("limit"), "limit", 1, MAX_PAGE_LIMIT)
    cursor = query_cursor(q.get("cursor"))
    kernel = request.app.state.kernel
    return await page_answer(request, "capabilities", lambda: kernel.capabilities_page(limit=limit, cursor=cursor),
                             dump_token)


async def _known_capability(request: Request) -> tuple[str, Any]:
    """``(id, token)`` of the path's capability; 404 if this kernel never issued it."""
    cid = request.path_params["capability_id"]
    message = f"no capability {cid!r} in this kernel"
    token = await found(request.app.state.kernel.get_capability, cid, "unknown_capability", message)
    return cid, token


@endpoint
@admits("workload")
async def get_capability(request: Request) -> Response:
    _, token = await _known_capability(request)
    return json_response(dump_token(token))


@endpoint
@admits("operator")
async def revoke_capability(request: Request) -> Response:
    cid, _ = await _known_capability(request)
    revoked = await run_in_threadpool(request.app.state.kernel.revoke_capability, cid)
    return json_response({"revoked": list(revoked)})


ROUTES = [
    Route("/v1/capabilities", create_capability, methods=["POST"]),
    Route("/v1/capabilities", list_capabilities, methods=["GET"]),
    Route("/v1/capabilities/validate", validate_capability, methods=["POST"]),
    Route("/v1/capabilities/attenuate", attenuate_capability, methods=["POST"]),
    Route("/v1/capabilities/{capability_id}", get_capability, methods=["GET"]),
    Route("/v1/capabilities/{capability_id}/revoke", revoke_capability, methods=["POST"]),
]
