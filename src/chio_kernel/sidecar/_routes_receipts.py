"""Evaluation and receipt endpoints: ``/v1/evaluate``, ``/v1/receipts/denials``, verify, read, list."""

from __future__ import annotations

from collections import deque
from typing import Any

from chio_sdk.models import ChioReceipt, ChioScope, MonetaryAmount, Operation
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel._approvals import PENDING_HEADER, PENDING_VERDICT
from chio_kernel._kernel import MAX_COST_UNITS
from chio_kernel._receipts import chain_dict
from chio_kernel._run_context import PRINCIPAL_KEY
from chio_kernel.sidecar._auth import ALL_ROLES, admits, asked_by, check_owner, principal_of
from chio_kernel.sidecar._body import (
    model, only_fields, opt_str, query_cursor, query_int, read_object, read_scope_object, req_str, run_metadata,
)
from chio_kernel.sidecar._config import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from chio_kernel.sidecar._errors import ApiError, endpoint, found
from chio_kernel.sidecar._responses import dump_receipt, json_response, page_answer, receipt_json

__all__ = ["ROUTES"]

_OPERATIONS = ", ".join(o.value for o in Operation)
_NO_COUNT: deque[None] = deque()
#: what ``POST /v1/evaluate`` takes: the stock chio_sdk.ChioClient's fields (``parameter_hash`` is
#: ignored: the kernel hashes itself) and the wire additions of docs/sidecar.md
EVALUATE_FIELDS = frozenset({
    "capability_id", "tool_server", "tool_name", "parameters", "parameter_hash",
    "idempotency_key", "cost", "operation", "approval_id", "metadata",
})
DENIAL_FIELDS = frozenset({
    "capability_id", "tool_server", "tool_name", "parameters", "guard", "reason", "envelope", "metadata",
})


def _parameters(data: dict[str, Any]) -> dict[str, Any]:
    parameters = data.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(422, "invalid_request", "'parameters' must be a JSON object of named arguments")
    return parameters


def _cost(data: dict[str, Any]) -> MonetaryAmount | None:
    if data.get("cost") is None:
        return None
    cost = model(MonetaryAmount, data["cost"], "cost")
    if not 0 <= cost.units <= MAX_COST_UNITS or not cost.currency:
        raise ApiError(422, "invalid_request", "'cost' needs units from 0 to 2^63-1 (minor units) and a currency")
    return cost


def _operation(data: dict[str, Any]) -> Operation:
    if data.get("operation") is None:
        return Operation.INVOKE
    try:
        return Operation(data["operation"])
    except (ValueError, TypeError):
        raise ApiError(422, "invalid_request", f"'operation' must be one of {_OPERATIONS}") from None


_PENDING_UNDERSTOOD = PENDING_HEADER.lower()


@endpoint
@admits("workload")
async def evaluate(request: Request) -> Response:
    # listings pause while evaluations are in flight (a wrapped kernel without the count: a stand-in)
    flight = getattr(request.app.state.kernel, "_in_flight", _NO_COUNT)
    flight.append(None)
    try:
        return await _evaluate(request)
    finally:
        flight.pop()


async def _evaluate(request: Request) -> Response:
    data = await read_scope_object(request.scope, request.receive)  # the body without Request.stream()
    only_fields(data, EVALUATE_FIELDS, "the /v1/evaluate body")
    capability_id = req_str(data, "capability_id", max_len=256)
    tool_server = req_str(data, "tool_server")
    tool_name = req_str(data, "tool_name")
    parameters = _parameters(data)
    kwargs = {
        "idempotency_key": opt_str(data, "idempotency_key", max_len=512),
        "cost": _cost(data),
        "operation": _operation(data),
        "approval_id": opt_str(data, "approval_id", max_len=256),  # a re-evaluation (docs/approvals.md)
        "metadata": asked_by(request, run_metadata(data)),
    }
    # the client's parameter_hash is ignored: the kernel computes its own
    kernel = request.app.state.kernel
    if request.app.state.evaluate_inline:  # group commit on the loop (see _app.create_app), one commit per turn
        receipt = await kernel._evaluate_async(capability_id, tool_server, tool_name, parameters, defer=True, **kwargs)
    else:
        receipt = await run_in_threadpool(kernel.evaluate, capability_id, tool_server, tool_name, parameters, **kwargs)
    if (
        receipt.decision.verdict == PENDING_VERDICT
        and request.headers.get(_PENDING_UNDERSTOOD, "").strip().lower() != "understood"
    ):  # fail closed: a client that knows only allow/deny would run a pending call
        receipt = await run_in_threadpool(kernel.pending_as_deny, receipt, kwargs["metadata"])
    return Response(receipt_json(receipt), media_type="application/json")  # json_response(dump_receipt(...))


@endpoint
@admits("workload")
async def record_denial(request: Request) -> Response:
    """A signed deny receipt for a call a layer refused before evaluation (chio_kernel._denials)."""
    data = await read_object(request)
    only_fields(data, DENIAL_FIELDS, "the /v1/receipts/denials body")
    capability_id = data.get("capability_id", "")
    if capability_id != "":
        capability_id = req_str(data, "capability_id", max_len=256)
    tool_server = data.get("tool_server", "")
    if tool_server != "":
        tool_server = req_str(data, "tool_server")
    tool_name = req_str(data, "tool_name")
    guard = req_str(data, "guard", max_len=128)
    reason = req_str(data, "reason", max_len=8192)
    parameters = _parameters(data)
    envelope = model(ChioScope, data["envelope"], "envelope") if data.get("envelope") is not None else None
    receipt = await run_in_threadpool(
        request.app.state.kernel.record_denial, capability_id, tool_server, tool_name, parameters,
        guard=guard, reason=reason, envelope=envelope, metadata=asked_by(request, run_metadata(data)),
    )
    return json_response(dump_receipt(receipt))


@endpoint
@admits(*ALL_ROLES)
async def verify_receipt(request: Request) -> Response:
    receipt = model(ChioReceipt, await read_object(request), "receipt")
    valid = await run_in_threadpool(request.app.state.kernel.verify_receipt, receipt)
    return json_response({"valid": bool(valid)})


@endpoint
@admits("workload")
async def get_receipt(request: Request) -> Response:
    rid = request.path_params["receipt_id"]
    kernel = request.app.state.kernel
    receipt = await found(kernel.get_receipt, rid, "unknown_receipt", f"no receipt {rid!r} in this kernel's store")
    check_owner(request, receipt.metadata, f"receipt {rid}")
    return json_response(dump_receipt(receipt))


@endpoint
@admits("workload")
async def list_receipts(request: Request) -> Response:
    kernel = request.app.state.kernel
    q = request.query_params
    cap = q.get("capability_id") or None
    limit = query_int(q.get("limit"), "limit", 1, MAX_LIST_LIMIT)
    limit = limit if limit is not None else DEFAULT_LIST_LIMIT
    after = query_int(q.get("after_seq"), "after_seq", 0, 2**62)
    cursor = query_cursor(q.get("cursor"))
    if after is not None and cursor is not None:
        raise ApiError(422, "invalid_request", "pass either 'cursor' or 'after_seq', not both")
    principal = principal_of(request)
    if principal.role == "workload" or after is not None:  # position paging (next_after_seq)
        if principal.role == "workload":  # its own receipts only (filtered in the store's SQL)
            if cursor is not None:
                raise ApiError(422, "invalid_request", "a workload pages its own receipts with 'after_seq'")
            rows = await run_in_threadpool(lambda: kernel.query_receipts(
                capability_id=cap, metadata={PRINCIPAL_KEY: principal.name}, after_seq=after or 0, limit=limit
            ))
        else:
            rows = await run_in_threadpool(
                lambda: kernel.list_receipts_with_seq(capability_id=cap, limit=limit, after_seq=after)
            )
        return json_response({
            "receipts": [dump_receipt(r) for _, r in rows],
            "count": len(rows),
            "next_after_seq": rows[-1][0] if rows else after,
        })
    return await page_answer(
        request, "receipts", lambda: kernel.receipts_page(capability_id=cap, limit=limit, cursor=cursor),
        lambda row: dump_receipt(row[1]), lambda page: {"next_after_seq": page.items[-1][0] if page.items else None},
    )


@endpoint
@admits(*ALL_ROLES)
async def verify_chain(request: Request) -> Response:
    report = await run_in_threadpool(request.app.state.kernel.verify_chain)
    return json_response({
        "ok": bool(report.ok),
        "count": report.count,
        "first_broken_index": report.first_broken_index,
        "reason": report.reason,
        "chains": [chain_dict(c) for c in report.chains],
    })


ROUTES = [  # /v1/evaluate first: the hot path matches on the first route (no other route matches its path)
    Route("/v1/evaluate", evaluate, methods=["POST"]),
    Route("/v1/receipts/denials", record_denial, methods=["POST"]),
    Route("/v1/receipts/verify", verify_receipt, methods=["POST"]),
    Route("/v1/receipts/verify-chain", verify_chain, methods=["GET"]),
    Route("/v1/receipts", list_receipts, methods=["GET"]),
    Route("/v1/receipts/{receipt_id}", get_receipt, methods=["GET"]),
]
