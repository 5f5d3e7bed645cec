"""One OpenTelemetry span per Chio decision, and its metrics (docs/observability.md).

The transports call :func:`traced_evaluation` / :func:`traced_hold` / :func:`traced_denial` only when
:func:`enabled` says so (``ChioGovernance(instrument=)``, :func:`instrument_all`, pydantic-ai's
``Agent.instrument_all()``); otherwise nothing here runs and OpenTelemetry is not
imported. Each span is opened in the caller's context, so it is a child of the operation it governs
(pydantic-ai's ``execute_tool`` or chat span, Prefect's task run span, Temporal's ``RunActivity``
span), and its ids are sent as the call's run context: the kernel signs ``trace_id`` and ``span_id``
(this decision's span, whose parent is the governed operation) into the receipt.
Raw parameters never reach a span: only their ``parameter_hash``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from chio_sdk.models import ChioReceipt, MonetaryAmount

from chio_durable._call import GovernedCall
from chio_durable._decision import PENDING_VERDICT, Evaluation
from chio_kernel._telemetry import instrument_kernel, otel

__all__ = [
    "RUN_CONTEXT_MAX_KEYS",
    "SPAN_NAME",
    "DecisionTrace",
    "enabled",
    "follow",
    "instrument_all",
    "record_budgets",
    "traced_denial",
    "traced_evaluation",
    "traced_hold",
    "with_trace",
]


class _Switch:
    on = False
    followers: tuple[Callable[[], bool], ...] = ()


_SWITCH = _Switch()


def instrument_all(on: bool = True) -> None:
    """Trace every Chio decision made in this process, by every layer that does not say
    ``instrument=False`` (and the kernel's own, when it runs in this process).

    Args:
        on: True to switch instrumentation on, False to switch it off again.

    Raises:
        ImportError: ``on`` and the OpenTelemetry API is not installed: a one-line message naming
            ``pip install 'chio-durable[otel]'``.
    """
    instrument_kernel(on)
    _SWITCH.on = bool(on)


def follow(check: Callable[[], bool]) -> None:
    """Also instrument whenever ``check()`` says so (pydantic-ai's ``Agent.instrument_all()``)."""
    if check not in _SWITCH.followers:
        _SWITCH.followers = (*_SWITCH.followers, check)


def enabled(flag: bool | None = None) -> bool:
    """Whether to trace a decision: ``flag`` when the layer set one, else the process-wide switch."""
    if flag is not None:
        return flag
    if _SWITCH.on:
        return True
    return any(check() for check in _SWITCH.followers) if _SWITCH.followers else False


SPAN_NAME = "apply_guardrail chio"
"""The name of a decision span (the draft GenAI ``apply_guardrail {guardian}`` convention)."""

_TARGET = {
    "model": "llm_input", "output": "llm_output", "tool": "tool_call", "mcp": "tool_call",
    "mcp_list": "tool_definition", "task": "tool_call", "activity": "tool_call",
}

# approval id -> (trace id, span id) of the pending decision seen in this process: the later
# re-evaluation under the approval links back to it (else the pending receipt is read from the kernel).
_PENDING: OrderedDict[str, tuple[int, int]] = OrderedDict()
_PENDING_MAX = 4096


def _hex(ctx: Any) -> tuple[str, str]:
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


RUN_CONTEXT_MAX_KEYS = 16
"""The kernel's limit on run-context keys (``chio_kernel._run_context.MAX_KEYS``)."""


def with_trace(call: GovernedCall, span: Any) -> GovernedCall:
    """``call`` with ``trace_id`` / ``span_id`` (of its decision span) added to its run context; as
    is when they would not fit the kernel's limit (the span is there; the receipt lacks the ids)."""
    meta = call.metadata
    if meta is not None and len(meta) + 2 > RUN_CONTEXT_MAX_KEYS and len({*meta, "trace_id", "span_id"}) > RUN_CONTEXT_MAX_KEYS:
        return call
    trace_id, span_id = _hex(span.get_span_context())
    return call.with_metadata({"trace_id": trace_id, "span_id": span_id})


def _start(name: str, attributes: dict[str, Any] | None, links: list[Any] | None = None, handle: Any = None) -> tuple[Any, Any]:
    handle = handle or otel()
    span = handle.tracer.start_span(name, kind=handle.trace.SpanKind.INTERNAL, attributes=attributes, links=links)
    return handle, span


def _kind_attributes(kind: str) -> dict[str, Any]:
    """The attributes every decision span of a call kind starts with (built once per kind)."""
    return {
        "gen_ai.operation.name": "apply_guardrail",
        "gen_ai.guardian.name": "chio",
        "gen_ai.security.target.type": _TARGET.get(kind, "tool_call"),
        "chio.call_kind": kind,
    }


_KIND_ATTRIBUTES: dict[str, dict[str, Any]] = {}


def _call_attributes(call: GovernedCall, capability_id: str | None, cost: MonetaryAmount | None) -> dict[str, Any]:
    base = _KIND_ATTRIBUTES.get(call.kind)
    if base is None:
        base = _KIND_ATTRIBUTES.setdefault(call.kind, _kind_attributes(call.kind))
    attributes = {**base, "chio.capability_id": capability_id or "", "chio.tool_server": call.tool_server,
                  "chio.tool_name": call.tool_name}
    if call.wire_parameter_hash is not None:
        attributes["chio.parameter_hash"] = call.wire_parameter_hash
    if cost is not None:
        attributes["chio.cost.units"] = cost.units
        attributes["chio.cost.currency"] = cost.currency
    return attributes


def _verdict(evaluation: Evaluation) -> str:
    if evaluation.pending:
        return PENDING_VERDICT
    return "allow" if evaluation.allowed else "deny"


def _record(
    handle: Any, span: Any, evaluation: Evaluation, started: float, replayed: bool | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    """End ``span`` with the answer: ``attributes`` (the call's) and the verdict's, set in one go."""
    verdict = _verdict(evaluation)
    guard = evaluation.guard
    if span.is_recording():  # a span a sampler dropped takes no attribute work
        attributes = attributes if attributes is not None else {}
        attributes["chio.verdict"] = verdict
        attributes["chio.replayed"] = _replayed(span, evaluation) if replayed is None else replayed
        attributes["gen_ai.security.decision.type"] = "allow" if evaluation.allowed else "deny"
        if evaluation.receipt_id:
            attributes["chio.receipt_id"] = evaluation.receipt_id
        if guard:
            attributes["chio.guard"] = guard
        if evaluation.approval_id:
            attributes["chio.approval_id"] = evaluation.approval_id
        span.set_attributes(attributes)
    span.end()
    handle.tally.decided(verdict, guard)
    handle.decision_duration.record(time.perf_counter() - started, _outcome(verdict, guard))


_OUTCOMES: dict[tuple[str, str | None], dict[str, str]] = {}


def _outcome(verdict: str, guard: str | None) -> dict[str, str]:
    """The attributes of a ``chio.decision.duration`` measurement (one dict per verdict and guard)."""
    found = _OUTCOMES.get((verdict, guard))
    if found is None:
        found = {"chio.verdict": verdict, "chio.guard": guard or ""}
        if len(_OUTCOMES) < 1024:  # guards are a small set; never grow without bound
            _OUTCOMES[(verdict, guard)] = found
    return found


def _failed(handle: Any, span: Any, err: BaseException, started: float, attributes: dict[str, Any] | None = None) -> None:
    if attributes:
        span.set_attributes(attributes)
    span.record_exception(err)
    span.set_status(handle.trace.Status(handle.trace.StatusCode.ERROR, f"no decision: {type(err).__name__}"))
    span.set_attribute("chio.verdict", "error")
    span.end()
    handle.tally.decided("error", None)
    handle.decision_duration.record(time.perf_counter() - started, {"chio.verdict": "error", "chio.guard": ""})


def _pending_link(handle: Any, approval_id: str, lookup: Callable[[str], Mapping[str, Any] | None] | None) -> list[Any]:
    """A span link to the pending decision ``approval_id`` answered (this process's, else the one
    its signed pending receipt names)."""
    ids = _PENDING.get(approval_id)
    if ids is None and lookup is not None:
        try:
            meta = lookup(approval_id) or {}
            ids = (int(str(meta["trace_id"]), 16), int(str(meta["span_id"]), 16))
        except Exception:  # noqa: BLE001 - no trace recorded for it: no link
            ids = None
    if ids is None:
        return []
    trace = handle.trace
    ctx = trace.SpanContext(ids[0], ids[1], is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return [trace.Link(ctx, {"chio.link": "pending_approval", "chio.approval_id": approval_id})]


def _after(handle: Any, span: Any, evaluation: Evaluation, approval_id: str | None, replayed: bool) -> None:
    """Pending approvals: remember the pending span; count the waits opened and answered."""
    if evaluation.pending and evaluation.approval_id and not replayed:
        _PENDING[evaluation.approval_id] = (span.get_span_context().trace_id, span.get_span_context().span_id)
        while len(_PENDING) > _PENDING_MAX:
            _PENDING.popitem(last=False)
        handle.tally.waiting(1)
    elif approval_id is not None and not evaluation.pending and _PENDING.pop(approval_id, None) is not None:
        handle.tally.waiting(-1)


def _replayed(span: Any, evaluation: Evaluation, span_hex: str | None = None) -> bool:
    """Whether the kernel answered from history: the receipt names another decision span."""
    receipt = evaluation.receipt
    signed = receipt.metadata if receipt is not None else None
    if not signed:
        return False
    span_id = signed.get("span_id")
    if not isinstance(span_id, str):
        return False
    return span_id != (span_hex or format(span.get_span_context().span_id, "016x"))


class DecisionTrace:
    """The span of one evaluation in flight: started in the caller's context, ended with the answer."""

    def __init__(
        self, call: GovernedCall, capability_id: str, cost: MonetaryAmount | None, approval_id: str | None,
        lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.started = time.perf_counter()
        attributes = _call_attributes(call, capability_id, cost)
        handle = otel()
        links = None
        if approval_id is not None:
            links = _pending_link(handle, approval_id, lookup)
            attributes["chio.approval_id"] = approval_id
        # The call's attributes are set with the answer's, in one go when the span ends (a sampled-out
        # span takes none): the span carries its ids from the start, which is all the receipt needs.
        self.attributes = attributes
        self.handle, self.span = _start(SPAN_NAME, None, links, handle)
        self.call = with_trace(call, self.span)
        self.span_hex = (self.call.metadata or {}).get("span_id") if self.call is not call else None
        self.approval_id = approval_id

    def done(self, evaluation: Evaluation) -> Evaluation:
        """Record the kernel's answer on the span and in the metrics; end the span."""
        replayed = _replayed(self.span, evaluation, self.span_hex)
        if evaluation.pending or self.approval_id is not None:
            _after(self.handle, self.span, evaluation, self.approval_id, replayed)
        _record(self.handle, self.span, evaluation, self.started, replayed, self.attributes)
        return evaluation

    def failed(self, err: BaseException) -> None:
        """No decision (kernel unavailable or the request refused): an ERROR span."""
        _failed(self.handle, self.span, err, self.started, self.attributes)


def traced_evaluation(
    call: GovernedCall, capability_id: str, cost: MonetaryAmount | None, approval_id: str | None,
    lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> DecisionTrace:
    """Start the span of one evaluation (``trace.call`` is the call to send: it carries the ids)."""
    return DecisionTrace(call, capability_id, cost, approval_id, lookup)


def traced_denial(
    call: GovernedCall, capability_id: str | None, guard: str,
) -> tuple[GovernedCall, Callable[[Evaluation], Evaluation]]:
    """Start the span of a deny a layer decided before evaluation: the call to record, and ``done``."""
    started = time.perf_counter()
    attributes = {**_call_attributes(call, capability_id, None), "chio.pre_evaluation": True}
    handle, span = _start(SPAN_NAME, attributes)

    def done(evaluation: Evaluation) -> Evaluation:
        span.set_attribute("chio.recorded", evaluation.receipt_id is not None)
        _record(handle, span, evaluation, started)
        return evaluation

    return with_trace(call, span), done


def traced_hold(
    op: str, receipt_id: str, amount: MonetaryAmount | None,
    budgets: Callable[[str], list[dict[str, Any]]] | None = None,
) -> Callable[[ChioReceipt | None, BaseException | None], None]:
    """Start the span of a budget ``op`` (``settle`` / ``release``) on the hold of ``receipt_id``;
    returns ``finish(receipt, error)``."""
    started = time.perf_counter()
    attributes: dict[str, Any] = {"chio.operation": op, "chio.hold_receipt_id": receipt_id}
    if amount is not None:
        attributes["chio.cost.units"] = amount.units
        attributes["chio.cost.currency"] = amount.currency
    handle, span = _start(f"chio {op}", attributes)

    def finish(receipt: ChioReceipt | None, error: BaseException | None) -> None:
        if error is not None:
            _failed(handle, span, error, started)
            return
        if receipt is not None:
            span.set_attributes({"chio.receipt_id": receipt.id, "chio.verdict": op,
                                 "chio.capability_id": receipt.capability_id,
                                 "chio.tool_server": receipt.tool_server, "chio.tool_name": receipt.tool_name})
        span.end()
        handle.tally.decided(op, None)
        handle.decision_duration.record(time.perf_counter() - started, {"chio.verdict": op, "chio.guard": ""})
        if receipt is not None and budgets is not None:
            record_budgets(receipt.capability_id, budgets)

    return finish


def record_budgets(capability_id: str, budgets: Callable[[str], list[dict[str, Any]]]) -> None:
    """Set ``chio.budget.remaining`` for each money budget of ``capability_id`` (currency units)."""
    handle = otel()
    try:
        rows = budgets(capability_id)
    except Exception:  # noqa: BLE001 - a metric never fails the call
        return
    for row in rows:
        if row.get("remaining") is None or not row.get("currency"):
            continue
        currency = str(row["currency"])
        handle.tally.budget(
            {"chio.capability_id": str(row["capability_id"]), "chio.grant_index": int(row["grant_index"]),
             "chio.tool_server": str(row.get("server_id")), "chio.tool_name": str(row.get("tool_name")),
             "chio.cost.currency": currency},
            row["remaining"] / 10 ** _digits(currency),
        )


def _digits(currency: str) -> int:
    """The minor-unit digits of ``currency`` (ISO 4217: USD 2, JPY 0, KWD 3)."""
    try:
        from babel.numbers import get_currency_precision
    except ImportError:
        return {"JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3}.get(currency.upper(), 2)
    return int(get_currency_precision(currency.upper()))
