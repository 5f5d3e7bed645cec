"""Chio decisions in the trace on a real Prefect server: each one span under its Prefect task run span."""

from __future__ import annotations

from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import LocalChioClient
from chio_prefect import chio_flow, chio_task
from otel_kit import by_id, decision_spans, instrumented, pipeline, tree  # noqa: F401 - the fixture

EXPORTER, _ = pipeline()
pytestmark = pytest.mark.usefixtures("instrumented")
SCOPE = ChioScope(grants=[ToolGrant(server_id="search-srv", tool_name="search_documents", operations=[Operation.INVOKE])])



def test_task_decisions_are_spans_under_their_task_runs(chio_home: Path) -> None:
    local = LocalChioClient(chio_home)
    local.kernel.create_capability(subject="agent", scope=SCOPE, capability_id="cap-otel")

    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> list[str]:
        return [query]

    @chio_task(tool_server="fs-srv")
    def write_file(path: str) -> None:
        raise AssertionError("must not run")

    @chio_flow(scope=SCOPE, capability_id="cap-otel", tool_server="search-srv", chio_client=local)
    def research(query: str) -> None:
        search_documents(query)
        write_file("/etc/passwd")  # outside the flow's envelope: denied before evaluation

    state = research("otel", return_state=True)
    assert state.is_failed()
    spans = EXPORTER.get_finished_spans()
    print(tree(spans))
    everything = by_id(spans)
    decisions = decision_spans(spans)
    assert [(s.attributes["chio.tool_name"], s.attributes["chio.verdict"]) for s in decisions] == [
        ("search_documents", "allow"), ("write_file", "deny"),
    ]
    assert decisions[1].attributes["chio.pre_evaluation"] is True and decisions[1].attributes["chio.guard"] == "flow-scope"
    receipts = {r.id: r for r in local.kernel.list_receipts()}
    assert sorted(receipts) == sorted(s.attributes["chio.receipt_id"] for s in decisions)
    for span in decisions:
        parent = everything[span.parent.span_id]
        assert parent.name.startswith(span.attributes["chio.tool_name"]), parent.name  # the task run span
        assert parent.attributes["prefect.run.type"] == "task"
        receipt = receipts[span.attributes["chio.receipt_id"]]
        assert local.kernel.verify_receipt(receipt)
        assert receipt.metadata["trace_id"] == format(span.context.trace_id, "032x")
        assert receipt.metadata["span_id"] == format(span.context.span_id, "016x")
        assert "/etc/passwd" not in str(dict(span.attributes))
