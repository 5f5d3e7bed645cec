"""The sidecar's budget-hold endpoints (docs/budgets.md), in the route table of :mod:`chio_kernel.sidecar._app`.

* ``POST /v1/receipts/{id}/settle`` ``{"actual_cost": {"units", "currency"}, "op_id"}`` -> the signed
  settle receipt;
* ``POST /v1/receipts/{id}/release`` ``{"op_id", "reason"?}`` -> the signed release receipt;
* ``GET /v1/receipts/{id}/hold`` -> the hold (amount, state, expiry, closing receipt);
* ``GET /v1/holds?state=&capability_id=&limit=&cursor=`` -> ``{"holds": [...], "count",
  "next_cursor"}`` (newest first, one page: ``limit`` 1 to 1,000, default 100);
* ``POST /v1/holds/expire`` -> ``{"expired": [receipts], "count"}`` (sweep holds past the TTL);
* ``GET /v1/capabilities/{id}/budgets`` -> ``{"capability_id", "budgets": [...]}`` (captured, held,
  remaining per budgeted grant of the capability and its ancestors).

No hold for that receipt: 404 ``unknown_hold``; a second, different settle/release of a closed hold,
or an ``op_id`` reused for another operation: 409 ``hold_conflict`` (with ``closed_by``); malformed
bodies: 4xx as everywhere in the sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chio_sdk.models import MonetaryAmount
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel._errors import CapabilityError
from chio_kernel._holds import HoldConflictError, UnknownHoldError
from chio_kernel._kernel import MAX_COST_UNITS
from chio_kernel.sidecar._auth import admits, asked_by, check_owner, principal_of
from chio_kernel.sidecar._body import model, only_fields, opt_str, query_cursor, query_int, read_object, req_str
from chio_kernel.sidecar._config import MAX_PAGE_LIMIT
from chio_kernel.sidecar._errors import ApiError, Handler, endpoint, found
from chio_kernel.sidecar._responses import dump_receipt, json_response, page_answer

__all__ = ["ROUTES"]

_SETTLE_FIELDS = frozenset({"actual_cost", "op_id"})
_RELEASE_FIELDS = frozenset({"op_id", "reason"})


async def _hold_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a kernel hold operation in the thread pool; its refusals as 404 / 409 answers."""
    try:
        return await run_in_threadpool(fn, *args)
    except UnknownHoldError as err:
        raise ApiError(404, "unknown_hold", str(err)) from None


async def _own_hold(request: Request, rid: str) -> None:
    """A workload settles, releases and reads only the holds of its own allow receipts (403 else)."""
    if principal_of(request).role != "workload":
        return
    receipt = await run_in_threadpool(request.app.state.kernel.get_receipt, rid)
    if receipt is None:
        raise ApiError(404, "unknown_hold", f"no receipt {rid!r} in this kernel's store")
    check_owner(request, receipt.metadata, f"the hold of receipt {rid}")


def _conflicts(fn: Handler) -> Handler:
    """:func:`endpoint`, with a closed hold's conflict as a 409 naming the receipt that closed it."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except HoldConflictError as err:
            return json_response({"error": err.code, "message": str(err), "closed_by": err.closed_by}, 409)

    wrapper.__name__ = fn.__name__
    return endpoint(wrapper)


@_conflicts
@admits("workload")
async def settle(request: Request) -> Response:
    rid = request.path_params["receipt_id"]
    await _own_hold(request, rid)
    data = await read_object(request)
    only_fields(data, _SETTLE_FIELDS, "the settle body")
    if not isinstance(data.get("actual_cost"), dict):
        raise ApiError(422, "invalid_request", "'actual_cost' is required: {\"units\": int, \"currency\": str}")
    cost = model(MonetaryAmount, data["actual_cost"], "actual_cost")
    if not 0 <= cost.units <= MAX_COST_UNITS or not cost.currency:
        raise ApiError(
            422, "invalid_request", "'actual_cost' needs units from 0 to 2^63-1 (minor units) and a currency"
        )
    op_id = req_str(data, "op_id", max_len=256)
    kernel = request.app.state.kernel
    receipt = await _hold_call(lambda: kernel.settle(rid, cost, op_id, metadata=asked_by(request)))
    return json_response(dump_receipt(receipt))


@_conflicts
@admits("workload")
async def release(request: Request) -> Response:
    rid = request.path_params["receipt_id"]
    await _own_hold(request, rid)
    data = await read_object(request)
    only_fields(data, _RELEASE_FIELDS, "the release body")
    op_id = req_str(data, "op_id", max_len=256)
    reason = opt_str(data, "reason", max_len=1024) or "released"
    kernel = request.app.state.kernel
    receipt = await _hold_call(lambda: kernel.release(rid, op_id, reason, metadata=asked_by(request)))
    return json_response(dump_receipt(receipt))


@endpoint
@admits("workload")
async def get_hold(request: Request) -> Response:
    rid = request.path_params["receipt_id"]
    await _own_hold(request, rid)
    message = f"receipt {rid!r} holds no budget (or is unknown)"
    return json_response(await found(request.app.state.kernel.get_hold, rid, "unknown_hold", message))


@endpoint
@admits("operator")
async def expire(request: Request) -> Response:
    receipts = await run_in_threadpool(request.app.state.kernel.expire_holds)
    return json_response({"expired": [dump_receipt(r) for r in receipts], "count": len(receipts)})


@endpoint
@admits("approver")
async def list_holds(request: Request) -> Response:
    q = request.query_params
    state = q.get("state") or None
    cap = q.get("capability_id") or None
    limit = query_int(q.get("limit"), "limit", 1, MAX_PAGE_LIMIT)
    cursor = query_cursor(q.get("cursor"))
    kernel = request.app.state.kernel
    return await page_answer(
        request, "holds", lambda: kernel.holds_page(state=state, capability_id=cap, limit=limit, cursor=cursor)
    )


@endpoint
@admits("workload")
async def budgets(request: Request) -> Response:
    cid = request.path_params["capability_id"]
    try:
        rows = await run_in_threadpool(request.app.state.kernel.budgets, cid)
    except CapabilityError:
        raise ApiError(404, "unknown_capability", f"no capability {cid!r} in this kernel") from None
    return json_response({"capability_id": cid, "budgets": rows})


ROUTES = [
    Route("/v1/receipts/{receipt_id}/settle", settle, methods=["POST"]),
    Route("/v1/receipts/{receipt_id}/release", release, methods=["POST"]),
    Route("/v1/receipts/{receipt_id}/hold", get_hold, methods=["GET"]),
    Route("/v1/holds", list_holds, methods=["GET"]),
    Route("/v1/holds/expire", expire, methods=["POST"]),
    Route("/v1/capabilities/{capability_id}/budgets", budgets, methods=["GET"]),
]
