"""OpenTelemetry for the kernel: the one on/off switch, the lazy OTel handle, the sidecar's request metrics.

Off by default, and then nothing here imports OpenTelemetry: :func:`enabled` is one attribute read.
The layers' switch (``chio_durable.instrument_all``) lives in ``chio_durable._telemetry`` and turns this one on too.
Spans and metrics go to the *global* tracer and meter providers (what ``logfire.configure()`` or the
OTel SDK set), so configuring them is the application's business; ``chio-durable sidecar --otel``
configures an OTLP exporter from the standard ``OTEL_EXPORTER_OTLP_*`` variables (docs/observability.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")

__all__ = [
    "OTEL_MISSING",
    "TRACER_NAME",
    "Otel",
    "Tally",
    "TelemetryMissing",
    "configure_otlp",
    "enabled",
    "instrument_kernel",
    "otel",
    "request_telemetry",
    "traced_answer",
]

TRACER_NAME = "chio"
"""The instrumentation scope of every Chio span and metric."""

OTEL_MISSING = "chio: OpenTelemetry is not installed; pip install 'chio-durable[otel]'"
"""The one-line message when the ``otel`` extra is missing."""


class TelemetryMissing(ImportError):
    """The OpenTelemetry packages the requested instrumentation needs are not installed."""


class _Switch:
    on = False


_SWITCH = _Switch()


def instrument_kernel(on: bool = True) -> None:
    """Trace the kernel's own decisions made in this process (a person's answer to an approval).

    Args:
        on: True to switch it on, False to switch it off again.

    Raises:
        TelemetryMissing: ``on`` and the OpenTelemetry API is not installed (the ``otel`` extra).
    """
    if on:
        otel()  # say now, in one line, if the extra is missing
    _SWITCH.on = bool(on)


def enabled() -> bool:
    """Whether the kernel traces its own decisions (:func:`instrument_kernel`)."""
    return _SWITCH.on


class Tally:
    """The counts and levels behind the observable instruments: kept here (a dict update under a
    lock, ~1 us) and read by OpenTelemetry only when it collects, instead of a synchronous
    instrument call per decision (~10 us each in the SDK)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.decisions: dict[tuple[str, str], int] = {}
        self.pending = 0
        self.budgets: dict[tuple[tuple[str, Any], ...], float] = {}

    def decided(self, verdict: str, guard: str | None) -> None:
        """Count one decision (``chio.decisions``)."""
        key = (verdict, guard or "")
        with self._lock:
            self.decisions[key] = self.decisions.get(key, 0) + 1

    def waiting(self, delta: int) -> None:
        """One more (+1) or one fewer (-1) call waiting for a person (``chio.approvals.pending``)."""
        with self._lock:
            self.pending += delta

    def budget(self, attributes: dict[str, Any], remaining: float) -> None:
        """The budget left on one grant (``chio.budget.remaining``), in currency units."""
        with self._lock:
            self.budgets[tuple(sorted(attributes.items()))] = remaining

    def observe_decisions(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            items = list(self.decisions.items())
        return [Observation(n, {"chio.verdict": v, "chio.guard": g}) for (v, g), n in items]

    def observe_pending(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(self.pending)]

    def observe_budgets(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            items = list(self.budgets.items())
        return [Observation(value, dict(key)) for key, value in items]


@dataclass(frozen=True)
class Otel:
    """The OpenTelemetry handles, built once on first use (the API only; the SDK is the app's)."""

    trace: Any
    tracer: Any
    meter: Any
    tally: Tally
    decision_duration: Any
    request_duration: Any


_HANDLE: list[Otel] = []


def otel() -> Otel:
    """The OpenTelemetry handles; :class:`TelemetryMissing` (one line) without the API."""
    if _HANDLE:
        return _HANDLE[0]
    try:
        from opentelemetry import metrics, trace
    except ImportError as err:
        raise TelemetryMissing(OTEL_MISSING) from err
    meter = metrics.get_meter(TRACER_NAME)
    tally = Tally()
    meter.create_observable_counter(
        "chio.decisions", [tally.observe_decisions], unit="{decision}", description="Chio decisions by verdict and guard"
    )
    meter.create_observable_up_down_counter(
        "chio.approvals.pending", [tally.observe_pending], unit="{approval}",
        description="Calls of this process waiting for a person's approval",
    )
    meter.create_observable_gauge(
        "chio.budget.remaining", [tally.observe_budgets],
        description="Budget left per grant, in currency units (USD 5.00 -> 5.0)",
    )
    handle = Otel(
        trace=trace,
        tracer=trace.get_tracer(TRACER_NAME),
        meter=meter,
        tally=tally,
        decision_duration=meter.create_histogram(
            "chio.decision.duration", unit="s", description="Time to a Chio decision, as the layer waited"
        ),
        request_duration=meter.create_histogram(
            "chio.sidecar.request.duration", unit="s", description="Sidecar request latency"
        ),
    )
    _HANDLE.append(handle)
    return handle


def traced_answer(kernel: Any, approval_id: str, answer: Callable[[], R]) -> R:
    """``answer()`` (a person's answer to ``approval_id``) in a ``chio approval answer`` span, linked
    to the span of the pending decision its signed pending receipt names."""
    handle = otel()
    trace = handle.trace
    links = []
    try:
        pending = kernel.get_receipt(str((kernel.get_approval(approval_id) or {}).get("pending_receipt_id")))
        meta = (pending.metadata or {}) if pending is not None else {}
        ctx = trace.SpanContext(int(meta["trace_id"], 16), int(meta["span_id"], 16), is_remote=True,
                                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
        links.append(trace.Link(ctx, {"chio.link": "pending_approval", "chio.approval_id": approval_id}))
    except Exception:  # noqa: BLE001 - no trace recorded for the pending call: no link
        pass
    with handle.tracer.start_as_current_span(
        "chio approval answer", links=links, attributes={"chio.approval_id": approval_id},
    ) as span:
        result = answer()
        receipt: Any = result
        span.set_attributes({"chio.receipt_id": receipt.id, "chio.verdict": receipt.decision.verdict,
                             "chio.capability_id": receipt.capability_id})
    handle.tally.decided(f"approval_{receipt.decision.verdict}", None)
    return result


def configure_otlp(service_name: str = "chio-sidecar") -> None:
    """Install an SDK tracer and meter provider exporting over OTLP (``OTEL_EXPORTER_OTLP_*``), unless
    one is installed already (``logfire.configure()``, the application's own).

    Raises:
        TelemetryMissing: the OpenTelemetry SDK or the OTLP exporter is not installed.
    """
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise TelemetryMissing(f"{OTEL_MISSING} (the sidecar's --otel exports over OTLP)") from err
    resource = Resource.create({"service.name": service_name})
    if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":  # nothing installed yet
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    if type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def request_telemetry(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """ASGI middleware: one server span per sidecar request, joined to the caller's trace
    (``traceparent``), and its latency in ``chio.sidecar.request.duration``."""
    handle = otel()
    from opentelemetry.propagate import extract

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        method, path = scope.get("method", "GET"), scope.get("path", "")
        status: list[int] = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 500))
            await send(message)

        start = time.perf_counter()
        with handle.tracer.start_as_current_span(
            f"{method} {_route(path)}", context=extract(headers), kind=handle.trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            try:
                await app(scope, receive, send_status)
            finally:
                span.set_attribute("http.response.status_code", status[0])
                handle.request_duration.record(
                    time.perf_counter() - start,
                    {"http.request.method": method, "http.route": _route(path), "http.response.status_code": status[0]},
                )

    return middleware


def _route(path: str) -> str:
    """The low-cardinality route of a path: ids (anything after a known collection) become ``{id}``."""
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts):
        if i >= 2 and parts[i - 1] in ("receipts", "capabilities", "approvals", "holds", "budgets") and part not in (
            "verify-chain", "denials", "verify", "revoke",
        ):
            parts[i] = "{id}"
    return "/" + "/".join(parts)
