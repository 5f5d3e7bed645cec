"""Decision spans over HTTP: the layers' HttpTransport (``SidecarClient``) opens the span in the
caller's context and sends its ids as run context; the real sidecar signs them into the receipt."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from opentelemetry import trace

import chio_durable
from chio_durable import GovernedCall, as_transport
from chio_kernel import SidecarClient
from chio_sidecar_harness import Sidecar
from independent_verifier import assert_receipt_verifies
from otel_kit import decision_spans, pipeline

EXPORTER, _ = pipeline()


@pytest.fixture(autouse=True)
def _traced() -> Iterator[None]:
    EXPORTER.clear()
    chio_durable.instrument_all()
    yield
    chio_durable.instrument_all(False)


async def test_http_decisions_are_spans_and_the_sidecar_signs_their_ids(sidecar: Sidecar) -> None:
    sc = SidecarClient(sidecar.url, timeout=30)
    transport = as_transport(sc)  # as the layers drive it (on the kernel loop)
    try:
        scope = ChioScope(grants=[ToolGrant(server_id="docs", tool_name="read", operations=[Operation.INVOKE])])
        cap = await transport.run(lambda: sc.create_capability(subject="agent:otel", scope=scope))
        with trace.get_tracer("test").start_as_current_span("governed operation") as outer:
            allow = await transport.evaluate(GovernedCall("tool", "docs", "read", {"p": 1}), capability_id=cap.id,
                                             idempotency_key="idem-otel-http-1")
            deny = await transport.evaluate(GovernedCall("tool", "docs", "write", {"p": 1}), capability_id=cap.id)
    finally:
        await transport.run(sc.close)
    spans = decision_spans(EXPORTER.get_finished_spans())
    assert [(s.attributes["chio.verdict"], s.attributes["chio.receipt_id"]) for s in spans] == [
        ("allow", allow.receipt_id), ("deny", deny.receipt_id),
    ]
    for span in spans:
        assert span.parent.span_id == outer.get_span_context().span_id
        served = httpx.get(f"{sidecar.url}/v1/receipts/{span.attributes['chio.receipt_id']}", timeout=30).json()
        assert served["metadata"] == {"trace_id": format(span.context.trace_id, "032x"),
                                      "span_id": format(span.context.span_id, "016x")}
        assert_receipt_verifies(served)  # the trace ids are signed
