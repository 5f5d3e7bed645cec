"""The sidecar's approval endpoints, on upstream Chio's paths (docs/approvals.md):

* ``GET /approvals/pending?limit=&cursor=`` -> ``{"approvals": [...], "count": n, "next_cursor"}``
  (still answerable ones, newest first, one page: ``limit`` 1 to 1,000, default 100; a ``Link``
  header names the next page);
* ``GET /approvals/{id}`` -> one approval (404 if unknown);
* ``POST /approvals/{id}/operator-respond`` ``{"outcome": "approved"|"denied", "reason": "..."}``: the
  request's principal answers, named (an approver or operator credential; in open mode the operator
  ``open``); a workload is 403, and so is the principal whose call waits;
* ``POST /approvals/{id}/respond`` with a signed approval token from a trusted approver key;
* ``POST /approvals/{id}/wake`` ``{"wake": {"engine": "<name>", ...}}``: a waiting run registers what
  wakes it once the approval is answered -> ``{"approval_id", "status", "woken": [...]}``.

Both answers return ``{"approval": {...}, "receipt": {...}, "wakes": [...]}`` (the signed resolution
receipt, and one ``{"engine", "ok", "message"}`` report per registered wake, called in the thread pool
after the commit). A second answer is 409; an unknown id 404; a refused token 403; a malformed body 422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel._approvals import (
    ApprovalConflictError,
    ApprovalForbiddenError,
    ApprovalNotFoundError,
    ApprovalTokenError,
)
from chio_kernel._paging import Page
from chio_kernel._run_context import PRINCIPAL_KEY
from chio_kernel.sidecar._auth import ALL_ROLES, admits, check_owner, principal_of
from chio_kernel.sidecar._body import query_cursor, query_int, read_object, req_str
from chio_kernel.sidecar._config import MAX_PAGE_LIMIT
from chio_kernel.sidecar._errors import ApiError, endpoint, found
from chio_kernel.sidecar._responses import dump_receipt, json_response, page_answer

__all__ = ["ROUTES"]


def _approval_id(request: Request) -> str:
    aid = request.path_params["approval_id"]
    if not isinstance(aid, str) or not aid or len(aid) > 256:
        raise ApiError(422, "invalid_request", "the approval id in the path must be 1 to 256 characters")
    return aid


async def _answer(kernel: Any, approval_id: str, call: Callable[[], Any]) -> Response:
    try:
        receipt = await run_in_threadpool(call)
    except ApprovalNotFoundError as err:
        raise ApiError(404, "unknown_approval", str(err)) from None
    except ApprovalConflictError as err:
        raise ApiError(409, "approval_conflict", str(err)) from None
    except ApprovalTokenError as err:
        raise ApiError(403, "approval_token_refused", str(err)) from None
    except ApprovalForbiddenError as err:
        raise ApiError(403, "forbidden", str(err)) from None
    approval = await run_in_threadpool(kernel.get_approval, approval_id)
    wakes = kernel.last_wake_report(approval_id) or []
    return json_response({"approval": approval, "receipt": dump_receipt(receipt), "wakes": wakes})


def _wake_body(data: dict[str, Any]) -> dict[str, Any]:
    """The wake object of a ``POST /approvals/{id}/wake`` body (422 naming what is wrong)."""
    extra = sorted(set(data) - {"wake"})
    if extra:
        raise ApiError(422, "invalid_request", f"unknown fields {extra}; send {{\"wake\": {{\"engine\": \"<name>\", ...}}}}")
    wake = data.get("wake")
    if not isinstance(wake, dict):
        raise ApiError(
            422, "invalid_request", "'wake' is required: a JSON object {\"engine\": \"<name>\", ...engine fields}"
        )
    return wake


@endpoint
@admits("workload", "approver")
async def pending(request: Request) -> Response:
    q = request.query_params
    limit = query_int(q.get("limit"), "limit", 1, MAX_PAGE_LIMIT)
    cursor = query_cursor(q.get("cursor"))
    kernel = request.app.state.kernel
    principal = principal_of(request)

    def page() -> Page[dict[str, Any]]:
        found: Page[dict[str, Any]] = kernel.approvals_page("pending", limit=limit, cursor=cursor)
        if principal.role == "workload":  # its own calls only (the page's cursor still goes on)
            found = Page([a for a in found.items if (a.get("requested_by") or {}).get("name") == principal.name],
                         found.next_cursor)
        return found

    return await page_answer(request, "approvals", page)


async def _own_approval(request: Request, aid: str) -> dict[str, Any]:
    """The approval, if this principal may see it (a workload: only the approvals its own calls wait on)."""
    kernel = request.app.state.kernel
    approval: dict[str, Any] = await found(
        kernel.get_approval, aid, "unknown_approval", f"no approval {aid!r} in this kernel"
    )
    asked = approval.get("requested_by") or {}
    check_owner(request, {PRINCIPAL_KEY: asked.get("name")}, f"approval {aid}")
    return approval


@endpoint
@admits("workload", "approver")
async def get_approval(request: Request) -> Response:
    return json_response(await _own_approval(request, _approval_id(request)))


@endpoint
@admits("approver")
async def operator_respond(request: Request) -> Response:
    kernel = request.app.state.kernel
    aid = _approval_id(request)
    data = await read_object(request)
    outcome = data.get("outcome")
    if outcome not in ("approved", "denied"):
        raise ApiError(422, "invalid_request", "'outcome' must be \"approved\" or \"denied\"")
    reason = None if data.get("reason") is None else req_str(data, "reason", max_len=4096)
    extra = sorted(set(data) - {"outcome", "reason"})
    if extra:
        raise ApiError(422, "invalid_request", f"unknown fields {extra}; send {{\"outcome\", \"reason\"}}")
    who = principal_of(request)  # the authenticated approver, named in the resolution receipt
    return await _answer(kernel, aid, lambda: kernel.respond_approval(aid, outcome, reason, approver=who))


@endpoint
@admits(*ALL_ROLES)
async def respond(request: Request) -> Response:
    kernel = request.app.state.kernel
    aid = _approval_id(request)
    data = await read_object(request)
    token = data.get("token", data)  # the token itself, or {"token": {...}}
    if not isinstance(token, dict):
        raise ApiError(422, "invalid_request", "send the signed approval token as a JSON object")
    return await _answer(kernel, aid, lambda: kernel.respond_approval_token(token, aid))


@endpoint
@admits("workload")
async def form_deny(request: Request) -> Response:
    """A deny from an engine's unauthenticated resume form: it can only stop the call."""
    kernel = request.app.state.kernel
    aid = _approval_id(request)
    await _own_approval(request, aid)
    data = await read_object(request)
    extra = sorted(set(data) - {"reason", "source"})
    if extra:
        raise ApiError(422, "invalid_request", f"unknown fields {extra}; send {{\"reason\", \"source\"}}")
    reason = None if data.get("reason") is None else req_str(data, "reason", max_len=4096)
    source = req_str(data, "source", max_len=64) if "source" in data else "prefect-form"
    try:
        receipt = await run_in_threadpool(kernel.record_form_denial, aid, reason, source=source)
    except ApprovalNotFoundError as err:
        raise ApiError(404, "unknown_approval", str(err)) from None
    approval = await run_in_threadpool(kernel.get_approval, aid)
    return json_response({"approval": approval, "receipt": dump_receipt(receipt)})


@endpoint
@admits("workload")
async def register_wake(request: Request) -> Response:
    aid = _approval_id(request)
    wake = _wake_body(await read_object(request))
    try:  # an answered approval wakes the run at once: the wakers run in the thread pool
        answer = await run_in_threadpool(request.app.state.kernel.register_approval_wake, aid, wake)
    except ApprovalNotFoundError as err:
        raise ApiError(404, "unknown_approval", str(err)) from None
    return json_response(answer)


ROUTES = [
    Route("/approvals/pending", pending, methods=["GET"]),
    Route("/approvals/{approval_id}", get_approval, methods=["GET"]),
    Route("/approvals/{approval_id}/operator-respond", operator_respond, methods=["POST"]),
    Route("/approvals/{approval_id}/respond", respond, methods=["POST"]),
    Route("/approvals/{approval_id}/wake", register_wake, methods=["POST"]),
    Route("/approvals/{approval_id}/form-deny", form_deny, methods=["POST"]),
]
