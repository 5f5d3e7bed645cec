"""Every decision is a signed receipt: denials a layer takes before evaluation, recorded by the kernel.

A layer refuses some calls before it can evaluate them (a Prefect task outside its flow's envelope or
with no capability; a Temporal activity with no workflow grant or a bad override). :func:`deny_before_evaluation`
hands each one to the kernel (``Kernel.record_denial``: ``chio_kernel._denials``), which checks what it
can (an ``envelope`` deny is only signed if the envelope really does not cover the call; kernel guard
names are refused) and signs and chains a deny receipt, so the chain has every attempt:

* embedded kernel (``LocalChioClient`` / ``Kernel``): inline;
* sidecar over HTTP with ``chio_kernel.SidecarClient``: ``POST /v1/receipts/denials``;
* a stock ``chio_sdk.ChioClient`` (no such call) or a ``chio_sdk.testing`` mock: the deny stays local,
  ``receipt_id=None``, and the decision dict says ``"recorded": false`` (logged at INFO).

If recording fails (kernel unreachable, refused), the call is still denied (fail closed), with
``receipt_id=None`` and a WARNING: a deny never waits on its receipt.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from chio_sdk.models import ChioScope

from chio_durable._call import GovernedCall
from chio_durable._decision import Evaluation
from chio_durable._loop import await_on_kernel_loop, run_on_kernel_loop
from chio_durable._telemetry import enabled, traced_denial
from chio_durable._transport import EmbeddedTransport, KernelTransport

__all__ = ["deny_before_evaluation", "deny_before_evaluation_async"]

log = logging.getLogger("chio_durable")


def _request(call: GovernedCall, capability_id: str | None, guard: str, reason: str, envelope: ChioScope | None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "capability_id": capability_id or "",
        "tool_server": call.tool_server,
        "tool_name": call.tool_name,
        "parameters": call.parameters,
        "guard": guard,
        "reason": reason,
        "envelope": envelope,
    }
    if call.metadata:  # the run context, signed into the deny receipt too
        request["metadata"] = call.metadata
    return request


def _local(call: GovernedCall, capability_id: str | None, guard: str, reason: str, why: str, *, warn: bool) -> Evaluation:
    (log.warning if warn else log.info)(
        "chio: deny of %s (guard %s) is not in a kernel chain: %s", call.label, guard, why
    )
    evaluation = Evaluation.local_deny(capability_id or "", call.tool_server, call.tool_name, guard, reason)
    return replace(evaluation, decision={**evaluation.decision, "recorded": False})


def _recorder(transport: KernelTransport) -> Any | None:
    if isinstance(transport, EmbeddedTransport):
        return None  # inline, see below
    record = getattr(transport.client, "record_denial", None)
    return record if callable(record) else None


def deny_before_evaluation(
    transport: KernelTransport,
    call: GovernedCall,
    capability_id: str | None,
    *,
    guard: str,
    reason: str,
    envelope: ChioScope | None = None,
) -> Evaluation:
    """The deny of ``call`` by ``guard``, signed and chained by the kernel where the transport can (sync)."""
    if enabled(getattr(transport, "instrument", None)):
        traced, done = traced_denial(call, capability_id, guard)
        return done(_deny(transport, traced, capability_id, guard, reason, envelope))
    return _deny(transport, call, capability_id, guard, reason, envelope)


def _deny(
    transport: KernelTransport, call: GovernedCall, capability_id: str | None, guard: str, reason: str,
    envelope: ChioScope | None,
) -> Evaluation:
    request = _request(call, capability_id, guard, reason, envelope)
    try:
        if isinstance(transport, EmbeddedTransport):
            return Evaluation.from_receipt(transport.kernel.record_denial(**request))
        record = _recorder(transport)
        if record is None:
            return _local(call, capability_id, guard, reason, f"{transport!r} cannot record denials", warn=False)
        return Evaluation.from_receipt(run_on_kernel_loop(record(**request)))
    except Exception as err:  # noqa: BLE001 - still a deny; only its receipt is missing
        return _local(call, capability_id, guard, reason, f"recording failed: {type(err).__name__}: {err}", warn=True)


async def deny_before_evaluation_async(
    transport: KernelTransport,
    call: GovernedCall,
    capability_id: str | None,
    *,
    guard: str,
    reason: str,
    envelope: ChioScope | None = None,
) -> Evaluation:
    """:func:`deny_before_evaluation` for asyncio callers."""
    if isinstance(transport, EmbeddedTransport):
        return deny_before_evaluation(transport, call, capability_id, guard=guard, reason=reason, envelope=envelope)
    if enabled(getattr(transport, "instrument", None)):
        traced, done = traced_denial(call, capability_id, guard)
        return done(await _deny_async(transport, traced, capability_id, guard, reason, envelope))
    return await _deny_async(transport, call, capability_id, guard, reason, envelope)


async def _deny_async(
    transport: KernelTransport, call: GovernedCall, capability_id: str | None, guard: str, reason: str,
    envelope: ChioScope | None,
) -> Evaluation:
    record = _recorder(transport)
    if record is None:
        return _local(call, capability_id, guard, reason, f"{transport!r} cannot record denials", warn=False)
    try:
        receipt = await await_on_kernel_loop(record(**_request(call, capability_id, guard, reason, envelope)))
        return Evaluation.from_receipt(receipt)
    except Exception as err:  # noqa: BLE001 - still a deny; only its receipt is missing
        return _local(call, capability_id, guard, reason, f"recording failed: {type(err).__name__}: {err}", warn=True)
