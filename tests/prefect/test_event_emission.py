"""Receipts mirrored as Prefect events: names, payloads, and links to the actual task and flow runs."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect.context import get_run_context

from chio_kernel import LocalChioClient
from chio_prefect import chio_flow, chio_task

ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

SCOPE = ChioScope(
    grants=[
        ToolGrant(server_id="search-srv", tool_name="search_documents", operations=[Operation.INVOKE]),
        ToolGrant(server_id="search-srv", tool_name="analyze_results", operations=[Operation.INVOKE]),
    ]
)


def build_pipeline(client: Any, runs: dict[str, tuple[str, str]]) -> Any:
    """The quickstart, recording each task run's (task_run_id, flow_run_id) from inside the body."""

    def record(name: str) -> None:
        ctx = get_run_context()
        runs[name] = (str(ctx.task_run.id), str(ctx.task_run.flow_run_id))

    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> list[dict]:
        record("search_documents")
        return [{"q": query}]

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[dict]) -> dict:
        record("analyze_results")
        return {"n": len(documents)}

    @chio_flow(scope=SCOPE, capability_id="cap-research-pipeline", tool_server="search-srv", chio_client=client)
    def research_pipeline(query: str) -> dict:
        return analyze_results(search_documents(query))

    return research_pipeline


@pytest.fixture
def local(chio_home: Path) -> LocalChioClient:
    client = LocalChioClient(chio_home)
    client.kernel.create_capability(subject="agent", scope=SCOPE, capability_id="cap-research-pipeline")
    return client


def related_flow_runs(event: Any) -> list[str]:
    return [r.id for r in event.related if r.role == "flow-run"]


def test_allow_events_carry_the_receipt_and_link_the_actual_runs(local: LocalChioClient, captured_events: Any) -> None:
    runs: dict[str, tuple[str, str]] = {}
    state = build_pipeline(local, runs)("capability-based security", return_state=True)
    assert state.is_completed()
    flow_run_id = str(state.state_details.flow_run_id)

    events = captured_events.chio()
    assert [e.event for e in events] == ["chio.receipt.allow", "chio.receipt.allow"]
    receipts = {r.tool_name: r for r in local.kernel.list_receipts()}
    for event in events:
        payload = event.payload
        name = payload["tool_name"]
        task_run_id, body_flow_run_id = runs[name]
        assert body_flow_run_id == flow_run_id
        assert set(payload) == {
            "receipt_id", "verdict", "capability_id", "tool_server", "tool_name", "task_name", "timestamp",
        }
        assert payload["receipt_id"] == receipts[name].id
        assert payload["verdict"] == "allow"
        assert payload["capability_id"] == "cap-research-pipeline"
        assert payload["tool_server"] == "search-srv"
        assert payload["task_name"] == name
        assert ISO_MS_UTC.match(payload["timestamp"])
        assert event.resource.id == f"prefect.task-run.{task_run_id}"
        assert event.resource["prefect.resource.name"].startswith(name)
        assert event.resource["prefect.flow-run.id"] == flow_run_id
        assert related_flow_runs(event) == [f"prefect.flow-run.{flow_run_id}"]


def test_deny_event_carries_guard_reason_and_decision(local: LocalChioClient, captured_events: Any) -> None:
    runs: dict[str, tuple[str, str]] = {}
    local.kernel.revoke_capability("cap-research-pipeline")
    state = build_pipeline(local, runs)("q", return_state=True)
    assert state.is_failed() and runs == {}
    flow_run_id = str(state.state_details.flow_run_id)

    [event] = captured_events.chio()
    assert event.event == "chio.receipt.deny"
    payload = event.payload
    [receipt] = local.kernel.list_receipts()
    assert payload["receipt_id"] == receipt.id
    assert payload["verdict"] == "deny"
    assert payload["guard"] == "revocation" == receipt.decision.guard
    assert payload["reason"] == receipt.decision.reason
    assert payload["decision"] == receipt.decision.model_dump(exclude_none=True)
    assert payload["tool_name"] == "search_documents"
    assert event.resource.id.startswith("prefect.task-run.")
    assert related_flow_runs(event) == [f"prefect.flow-run.{flow_run_id}"]


def test_envelope_deny_is_signed_by_the_kernel_and_in_the_chain(local: LocalChioClient, captured_events: Any) -> None:
    # Issue 12 §2: a deny decided before evaluation (the flow envelope) is a kernel receipt too.
    @chio_task(tool_server="fs-srv")
    def write_file(path: str) -> None:
        raise AssertionError("must not run")

    @chio_flow(scope=SCOPE, capability_id="cap-research-pipeline", chio_client=local)
    def pipeline() -> None:
        write_file("/etc/passwd")

    state = pipeline(return_state=True)
    assert state.is_failed()
    [event] = captured_events.chio()
    assert event.event == "chio.receipt.deny"
    [receipt] = local.kernel.list_receipts()  # the denied attempt is in the kernel's chain
    assert event.payload["receipt_id"] == receipt.id
    assert event.payload["guard"] == "flow-scope" == receipt.decision.guard
    assert receipt.decision.is_denied and receipt.action.parameters == {"path": "/etc/passwd"}
    assert (receipt.capability_id, receipt.tool_server, receipt.tool_name) == (
        "cap-research-pipeline", "fs-srv", "write_file")
    assert local.kernel.verify_receipt(receipt) and local.kernel.verify_chain().ok
    cause = state.result(raise_on_failure=False).__cause__
    from chio_prefect import ChioPrefectError

    assert isinstance(cause, ChioPrefectError) and cause.receipt_id == receipt.id


def test_envelope_deny_with_a_mock_stays_local_and_says_so(captured_events: Any) -> None:
    from chio_sdk.testing import allow_all

    @chio_task(tool_server="fs-srv")
    def write_file(path: str) -> None:
        raise AssertionError("must not run")

    @chio_flow(scope=SCOPE, capability_id="cap-research-pipeline", chio_client=allow_all())
    def pipeline() -> None:
        write_file("/etc/passwd")

    assert pipeline(return_state=True).is_failed()
    [event] = captured_events.chio()
    assert event.payload["receipt_id"] is None and event.payload["guard"] == "flow-scope"
    assert event.payload["decision"]["recorded"] is False  # a mock has no chain to record it in


@pytest.mark.parametrize("failure", ["raises", "returns None"])
def test_undeliverable_event_is_logged_with_its_full_payload(
    local: LocalChioClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    import prefect.events

    def broken_emit(**_kwargs: Any) -> None:
        if failure == "raises":
            raise ConnectionError("events backend down")
        return None

    monkeypatch.setattr(prefect.events, "emit_event", broken_emit)
    runs: dict[str, tuple[str, str]] = {}
    with caplog.at_level(logging.WARNING, logger="chio_prefect.events"):
        result = build_pipeline(local, runs)("q")
    assert result == {"n": 1}  # the mirror failing never fails the governed call
    records = [r for r in caplog.records if r.name == "chio_prefect.events"]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    receipt_ids = {r.id for r in local.kernel.list_receipts()}
    for record in records:
        message = record.getMessage()
        logged = json.loads(message[message.index("receipt: ") + len("receipt: "):])
        assert logged["event"] == "chio.receipt.allow"
        assert logged["payload"]["receipt_id"] in receipt_ids
        assert logged["resource"]["prefect.resource.id"].startswith("prefect.task-run.")
        if failure == "raises":
            assert "events backend down" in message


def test_events_reach_the_prefect_api(local: LocalChioClient) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    runs: dict[str, tuple[str, str]] = {}
    state = build_pipeline(local, runs)("read back", return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    wanted = EventFilter(
        event=EventNameFilter(prefix=["chio.receipt."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + 30
    events: list[Any] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            events = client.read_events(filter=wanted, limit=50).events
            if len(events) >= 2:
                break
            time.sleep(0.25)
    assert sorted(e.payload["tool_name"] for e in events) == ["analyze_results", "search_documents"]
    assert {e.resource.id for e in events} == {f"prefect.task-run.{tid}" for tid, _ in runs.values()}
    assert {e.payload["receipt_id"] for e in events} == {r.id for r in local.kernel.list_receipts()}


def test_renamed_task_keeps_its_tool_name(local: LocalChioClient, captured_events: Any) -> None:
    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> str:
        return query

    renamed = search_documents.with_options(name="search (nightly)", tags=["nightly"])

    @chio_flow(scope=SCOPE, capability_id="cap-research-pipeline", chio_client=local)
    def pipeline() -> str:
        return renamed("q")

    assert pipeline() == "q"
    [event] = captured_events.chio()
    # authorization follows the tool (fixed at decoration); the event names the running task
    assert (event.payload["tool_name"], event.payload["task_name"]) == ("search_documents", "search (nightly)")


def test_call_outside_a_task_run_uses_the_tool_as_resource(local: LocalChioClient, captured_events: Any) -> None:
    @chio_task(tool_server="search-srv", capability_id="cap-research-pipeline", chio_client=local)
    def search_documents(query: str) -> str:
        return query

    assert search_documents.fn("direct") == "direct"
    [event] = captured_events.chio()
    assert event.resource.id == "chio.tool.search-srv.search_documents"
    assert event.payload["receipt_id"] == local.kernel.list_receipts()[0].id
    assert related_flow_runs(event) == []


def test_outside_prefect_without_an_api_the_receipt_is_logged_not_emitted(
    local: LocalChioClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import prefect.events
    from prefect.settings import PREFECT_API_URL, temporary_settings

    emitted: list[Any] = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: emitted.append(kw))

    @chio_task(tool_server="search-srv", capability_id="cap-research-pipeline", chio_client=local)
    def search_documents(query: str) -> str:
        return query

    with temporary_settings(updates={PREFECT_API_URL: None}), caplog.at_level(logging.INFO, "chio_prefect.events"):
        assert search_documents.fn("plain script") == "plain script"
    assert emitted == []  # no temporary Prefect server was started for it
    [record] = [r for r in caplog.records if r.name == "chio_prefect.events"]
    assert record.levelno == logging.INFO
    assert local.kernel.list_receipts()[0].id in record.getMessage()
