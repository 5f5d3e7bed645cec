"""The sidecar's HTTP-request endpoints (``/chio/evaluate``, ``/chio/verify``): the wire parsing here,
the evaluation itself in :mod:`chio_kernel._http_evaluation` (shared with ``LocalChioClient``)."""

from __future__ import annotations

from chio_sdk.models import ChioHttpRequest, HttpReceipt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel._http_evaluation import evaluate_http, verify_http_receipt
from chio_kernel.sidecar._body import model, read_object, req_str
from chio_kernel.sidecar._auth import ALL_ROLES, admits, asked_by
from chio_kernel.sidecar._errors import endpoint
from chio_kernel.sidecar._responses import json_response

__all__ = ["ROUTES"]


@endpoint
@admits("workload")
async def http_evaluate(request: Request) -> Response:
    data = await read_object(request)
    http_req = model(ChioHttpRequest, data, "HTTP request")
    for field in ("request_id", "method", "route_pattern", "path"):
        req_str(data, field, max_len=8192)
    header_token = request.headers.get("x-chio-capability")
    result = await run_in_threadpool(
        evaluate_http, request.app.state.kernel, http_req, header_token, asked_by(request)
    )
    return json_response(result)


@endpoint
@admits(*ALL_ROLES)
async def http_verify(request: Request) -> Response:
    receipt = model(HttpReceipt, await read_object(request), "HTTP receipt")
    return json_response({"valid": verify_http_receipt(request.app.state.kernel, receipt)})


ROUTES = [
    Route("/chio/evaluate", http_evaluate, methods=["POST"]),
    Route("/chio/verify", http_verify, methods=["POST"]),
]
