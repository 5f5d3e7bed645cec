"""Checkpoint and proof endpoints: ``/v1/checkpoints``, ``/v1/checkpoints/{seq}``,
``/v1/checkpoints/consistency``, ``/v1/checkpoints/verify``, ``/v1/receipts/{id}/proof``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chio_kernel.sidecar._body import query_int
from chio_kernel.sidecar._errors import ApiError, endpoint, found
from chio_kernel.sidecar._responses import json_response

__all__ = ["ROUTES"]

_MAX_SEQ = 2**62


@endpoint
async def list_checkpoints(request: Request) -> Response:
    q = request.query_params
    first = query_int(q.get("from"), "from", 1, _MAX_SEQ) or 1
    last = query_int(q.get("to"), "to", 1, _MAX_SEQ)
    kernel_id = q.get("kernel_id") or None
    cps = await run_in_threadpool(
        lambda: request.app.state.kernel.list_checkpoints(kernel_id=kernel_id, first=first, last=last)
    )
    return json_response({"checkpoints": cps, "count": len(cps)})


@endpoint
async def get_checkpoint(request: Request) -> Response:
    seq = int(request.path_params["seq"])
    cp = await run_in_threadpool(request.app.state.kernel.get_checkpoint, seq)
    if cp is None:
        raise ApiError(404, "unknown_checkpoint", f"no checkpoint {seq} of this kernel (GET /v1/checkpoints lists them)")
    return json_response(cp)


@endpoint
async def consistency(request: Request) -> Response:
    q = request.query_params
    first = query_int(q.get("from"), "from", 1, _MAX_SEQ)
    last = query_int(q.get("to"), "to", 1, _MAX_SEQ)
    if first is None or last is None:
        raise ApiError(422, "invalid_request", "pass both checkpoint numbers: ?from=M&to=N (M <= N)")
    proof = await run_in_threadpool(request.app.state.kernel.consistency_proof, first, last)
    return json_response(proof)


@endpoint
async def verify(request: Request) -> Response:
    report = await run_in_threadpool(request.app.state.kernel.verify_checkpoints)
    return json_response({"ok": report.ok, "checkpoints": report.checkpoints, "covered": report.covered,
                          "uncovered_chains": report.uncovered, "problems": report.problems})


@endpoint
async def receipt_proof(request: Request) -> Response:
    rid = request.path_params["receipt_id"]
    kernel = request.app.state.kernel
    await found(kernel.get_receipt, rid, "unknown_receipt", f"no receipt {rid!r} in this kernel's store")
    return json_response(await run_in_threadpool(kernel.inclusion_proof, rid))


ROUTES = [
    Route("/v1/checkpoints", list_checkpoints, methods=["GET"]),
    Route("/v1/checkpoints/consistency", consistency, methods=["GET"]),
    Route("/v1/checkpoints/verify", verify, methods=["GET"]),
    Route("/v1/checkpoints/{seq:int}", get_checkpoint, methods=["GET"]),
    Route("/v1/receipts/{receipt_id}/proof", receipt_proof, methods=["GET"]),
]
