"""One in-memory OpenTelemetry pipeline for the tests (the global providers can be set once per process)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_STATE: dict[str, Any] = {}


def pipeline() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """The process's in-memory span exporter and metric reader (installed as the global providers once)."""
    if not _STATE:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _STATE.update(exporter=exporter, reader=reader, provider=provider)
    return _STATE["exporter"], _STATE["reader"]


@pytest.fixture
def instrumented() -> Iterator[InMemorySpanExporter]:
    """Every layer traced (``chio_durable.instrument_all()``) for one test, its spans from a clean slate."""
    import chio_durable

    exporter = pipeline()[0]
    exporter.clear()
    chio_durable.instrument_all()
    yield exporter
    chio_durable.instrument_all(False)


def decision_spans(spans: Iterable[ReadableSpan]) -> list[ReadableSpan]:
    """The Chio decision spans (evaluations and pre-evaluation denies), in end order."""
    return [s for s in spans if s.name == "apply_guardrail chio"]


def by_id(spans: Iterable[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def tree(spans: Iterable[ReadableSpan]) -> str:
    """The trace tree, one span per line, decisions with their verdict and receipt."""
    spans = list(spans)
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in children.get(parent, []):
            a = s.attributes or {}
            extra = ""
            if "chio.verdict" in a:
                extra = f"  [{a['chio.verdict']}{' ' + str(a['chio.guard']) if a.get('chio.guard') else ''}]"
                extra += f" {a.get('chio.tool_server', '')}/{a.get('chio.tool_name', '')} receipt={a.get('chio.receipt_id')}"
            lines.append("  " * depth + s.name + extra)
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    out: list[Any] = []
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend(m.data.data_points)
    return out
