"""Telemetry benchmark: the added p50 cost of OpenTelemetry per governed call, off vs on, in one run.

    python benchmarks/bench_telemetry.py           # --n 2000 calls per row, 5 interleaved rounds
    python benchmarks/bench_telemetry.py --quick   # --n 400

Rows (p50 / p99 of ONE governed call's kernel check: ``EmbeddedTransport.evaluate_sync`` on the
embedded kernel, integration shape: an idempotency key per call, run context metadata):

* ``off`` — instrumentation off (the default): no OpenTelemetry import on this path;
* ``on (SDK, batch export)`` — ``chio_durable.instrument_all()`` with an OTel SDK ``TracerProvider``
  and ``MeterProvider`` as an application configures them (a ``BatchSpanProcessor`` to an exporter
  that drops the spans: export happens off the calling thread, as with OTLP);
* ``off + SDK floor`` — the governed call off, inside one bare span, plus one histogram measurement,
  with the same providers: what the SDK itself costs for what each call needs (nothing of ours),
  measured in place;
* ``on - off`` — the added cost per call (target <= 50 us), and ``on - off - floor``: our own share
  (attributes, the trace ids in the run context, the kernel signing them, the tallies).

Rows are measured in interleaved rounds (off, on, off, on, ...) after a warm-up, so background load
hits them alike; the switch is flipped between rounds (one process, one kernel).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant

TARGET_US = 50.0


def _providers() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider())


def _round(transport: Any, cap: str, n: int, start: int) -> list[float]:
    from chio_durable import GovernedCall

    out: list[float] = []
    for i in range(start, start + n):
        call = GovernedCall("tool", "files", "read_file", {"path": f"/data/{i}.txt"}, metadata={"run_id": "bench"})
        t0 = time.perf_counter()
        transport.evaluate_sync(call, capability_id=cap, idempotency_key=f"idem-{i}")
        out.append(time.perf_counter() - t0)
    return out


def _floor_round(transport: Any, cap: str, n: int, start: int) -> list[float]:
    """The governed call off, inside one bare span and with one histogram measurement: what the SDK
    costs for what each call needs, measured in place (the same cache and allocator state)."""
    from opentelemetry import metrics, trace

    from chio_durable import GovernedCall

    tracer = trace.get_tracer("bench-floor")
    histogram = metrics.get_meter("bench-floor").create_histogram("bench.floor.duration", unit="s")
    out: list[float] = []
    for i in range(start, start + n):
        call = GovernedCall("tool", "files", "read_file", {"path": f"/data/{i}.txt"}, metadata={"run_id": "bench"})
        t0 = time.perf_counter()
        span = tracer.start_span("floor")
        transport.evaluate_sync(call, capability_id=cap, idempotency_key=f"idem-{i}")
        span.end()
        histogram.record(0.0001)
        out.append(time.perf_counter() - t0)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="governed calls per row")
    parser.add_argument("--quick", action="store_true", help="--n 400")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    n = 400 if args.quick else args.n
    import chio_durable
    from chio_kernel import Kernel

    kernel = Kernel(data_dir=tempfile.mkdtemp(prefix="chio-bench-otel-"))
    scope = ChioScope(grants=[ToolGrant(server_id="files", tool_name="read_file", operations=[Operation.INVOKE])])
    cap = kernel.create_capability(subject="bench", scope=scope, ttl_seconds=3600).id
    transport = chio_durable.as_transport(kernel)
    _round(transport, cap, 200, 0)  # warm-up, off
    from chio_kernel import _telemetry

    off_touched = bool(_telemetry._HANDLE)  # Chio built no OpenTelemetry handle while off
    _providers()
    chio_durable.instrument_all()
    _round(transport, cap, 200, 10_000_000)  # warm-up, on
    chio_durable.instrument_all(False)
    _floor_round(transport, cap, 200, 20_000_000)
    rows: dict[str, list[float]] = {"off": [], "on (SDK, batch export)": [], "off + SDK floor": []}
    per = max(1, n // args.rounds)
    offset = 1
    for _ in range(args.rounds):
        for label, on in (("off", False), ("on (SDK, batch export)", True)):
            chio_durable.instrument_all(on)
            rows[label] += _round(transport, cap, per, offset * 100_000)
            offset += 1
        chio_durable.instrument_all(False)
        rows["off + SDK floor"] += _floor_round(transport, cap, per, offset * 100_000)
        offset += 1
    chio_durable.instrument_all(False)
    off, on = rows["off"], rows["on (SDK, batch export)"]
    added = statistics.median(on) * 1e6 - statistics.median(off) * 1e6
    floor = statistics.median(rows["off + SDK floor"]) * 1e6 - statistics.median(off) * 1e6
    print(f"governed call (EmbeddedTransport.evaluate_sync, integration shape), n={len(off)} per row, {args.rounds} interleaved rounds")
    print(f"{'row':<28} {'p50 us':>9} {'p99 us':>9}")
    for label, values in rows.items():
        print(f"{label:<28} {_pct(values, 0.5):>9.1f} {_pct(values, 0.99):>9.1f}")
    verdict = "ok" if added <= TARGET_US else "OVER TARGET"
    print(f"{'on - off (added p50)':<28} {added:>9.1f} {'':>9}  target <= {TARGET_US:.0f} us: {verdict}")
    print(f"{'SDK floor (floor row - off)':<28} {floor:>9.1f}")
    print(f"{'on - off - SDK floor (ours)':<28} {added - floor:>9.1f}")
    print(f"Chio touched OpenTelemetry before switching on: {off_touched}")
    kernel.close()
    return 0 if added <= TARGET_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
