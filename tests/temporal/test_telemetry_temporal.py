"""Chio decisions in the trace on a real Temporal dev server: each one span under its ``RunActivity``
span (temporalio.contrib.opentelemetry's TracingInterceptor); a worker restart mid-run and a replay of
the history add no decision span."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Replayer

import workflows
from chio_kernel import LocalChioClient
from chio_temporal import ChioActivityInterceptor, WorkflowGrant
from chio_temporal_kit import SANDBOX, make_worker, running, scope, tool
from otel_kit import by_id, decision_spans, instrumented, pipeline, tree  # noqa: F401 - the fixture
from otel_workflows import GatedWorkflow

pytestmark = [pytest.mark.temporal, pytest.mark.usefixtures("instrumented")]

EXPORTER, _ = pipeline()



async def _wait_for_activity(handle: Any, count: int) -> None:
    for _ in range(200):
        history = await handle.fetch_history()
        done = [e for e in history.events if e.HasField("activity_task_completed_event_attributes")]
        if len(done) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the first activity never completed")


async def test_decisions_under_run_activity_once_across_a_worker_restart_and_a_replay(
    client: Client, chio_home: Path, uid: Any
) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    tq, wid = uid("tq-otel"), uid("otel-gated")
    token = await chio.create_capability(subject="agent:otel", scope=scope(tool("bank", "checkpoint")), ttl_seconds=600)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(WorkflowGrant(workflow_id=wid, token=token))
    tracing = TracingInterceptor()
    worker_workflows = [GatedWorkflow]

    async with running(make_worker(client, tq, [tracing, ic], workflows=worker_workflows)):
        handle = await client.start_workflow(GatedWorkflow.run, id=wid, task_queue=tq)
        await _wait_for_activity(handle, 1)
    # a new worker: no cached workflow, so the signal's task replays the history first
    async with running(make_worker(client, tq, [tracing, ic], workflows=worker_workflows)):
        await handle.signal(GatedWorkflow.proceed)
        assert await handle.result() == ["before", "after", "debit denied"]

    spans = EXPORTER.get_finished_spans()
    print(tree(spans))
    everything = by_id(spans)
    decisions = decision_spans(spans)
    assert [(s.attributes["chio.tool_name"], s.attributes["chio.verdict"]) for s in decisions] == [
        ("checkpoint", "allow"), ("checkpoint", "allow"), ("debit_account", "deny"),
    ]
    for span in decisions:
        parent = everything[span.parent.span_id]
        assert parent.name == f"RunActivity:{span.attributes['chio.tool_name']}"
        receipt = chio.kernel.get_receipt(span.attributes["chio.receipt_id"])
        assert chio.kernel.verify_receipt(receipt)
        assert receipt.metadata["trace_id"] == format(span.context.trace_id, "032x")
        assert receipt.metadata["workflow_id"] == wid  # the run context is kept beside the trace ids
    assert [r.id for r in chio.kernel.list_receipts(capability_id=token.id)] == [
        s.attributes["chio.receipt_id"] for s in decisions
    ]

    EXPORTER.clear()
    replayer = Replayer(workflows=worker_workflows, workflow_runner=SANDBOX, interceptors=[tracing, ic])
    result = await replayer.replay_workflow(await handle.fetch_history(), raise_on_replay_failure=False)
    assert result.replay_failure is None
    assert decision_spans(EXPORTER.get_finished_spans()) == []
    await chio.close()


async def test_a_temporal_agent_s_decisions_are_under_its_evaluate_activities(temporal_env: Any, chio: Any) -> None:
    import test_agent
    import test_agent_app as app
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from temporalio.worker import Worker

    app.use_kernel(chio)
    target = temporal_env.client.service_client.config.target_host
    client = await Client.connect(target, namespace=temporal_env.client.namespace, plugins=[PydanticAIPlugin()])

    await test_agent.issue(chio, test_agent.MODEL, test_agent.grant("support", "lookup"), test_agent.DOCS_LIST)
    tq, workflow_id = uid_of("otel-agent"), uid_of("otel-agent-wf")
    async with Worker(
        client, task_queue=tq, workflows=[test_agent.SupportWorkflow], activities=[app.audit_note],
        plugins=[g.plugin for g in app.ALL_GOVERNED], interceptors=[TracingInterceptor()],
    ):
        out = await client.execute_workflow(test_agent.SupportWorkflow.run, "lookup:A,refund:A", id=workflow_id, task_queue=tq)
    assert out["output"].startswith("order A: shipped | Permission denied")
    spans = EXPORTER.get_finished_spans()
    print(tree(spans))
    everything = by_id(spans)
    decisions = [s for s in decision_spans(spans) if s.attributes["chio.call_kind"] != "mcp_list"]
    assert [(s.attributes["chio.tool_name"], s.attributes["chio.verdict"]) for s in decisions] == [
        ("function:scripted_support_model:", "allow"), ("lookup", "allow"),
        ("function:scripted_support_model:", "allow"), ("refund", "deny"),
        ("function:scripted_support_model:", "allow"),
    ]
    own_spans = {format(s.context.span_id, "016x") for s in decision_spans(spans)}
    for span in decision_spans(spans):
        assert everything[span.parent.span_id].name == "RunActivity:agent__support__capability__chio__evaluate"
        receipt = await chio.get_receipt(span.attributes["chio.receipt_id"])
        assert receipt.metadata["workflow_id"] == workflow_id
        if span.attributes["chio.replayed"]:  # the MCP listing, re-checked each step: its first receipt back
            assert span.attributes["chio.call_kind"] == "mcp_list" and receipt.metadata["span_id"] in own_spans
        else:
            assert receipt.metadata["trace_id"] == format(span.context.trace_id, "032x")
            assert receipt.metadata["span_id"] == format(span.context.span_id, "016x")
    assert sum(1 for s in decision_spans(spans) if s.attributes["chio.replayed"]) == 2  # steps 2 and 3


def uid_of(name: str) -> str:
    import uuid

    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_an_engine_agent_s_governance_instrument_reaches_the_real_transport(chio_home: Path, tmp_path: Path) -> None:
    from chio_temporal._governance import TemporalTransport

    transport = TemporalTransport(LocalChioClient(data_dir=chio_home))
    transport.instrument = False  # e.g. governed.governance.instrument = False
    assert transport.inner.instrument is False
    transport.use(LocalChioClient(data_dir=tmp_path / "other"))  # a client chosen later keeps the choice
    assert transport.inner.instrument is False
