"""Every Chio decision in the trace (plain agent, embedded kernel): one span per decision, a child of
the operation it governs, its ids signed into the receipt; metrics; off when not switched on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Constraint, MonetaryAmount, Operation, ToolGrant
from pydantic_ai import Agent, DeferredToolRequests, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

import chio_durable
from chio_durable import GovernedCall, as_transport
from chio_durable._engine import deny_before_evaluation
from chio_durable.agent import COST_METADATA_KEY, ChioGovernance, approval_results
from chio_kernel import LocalChioClient
from otel_kit import by_id, decision_spans, metric_points, pipeline, tree

EXPORTER, READER = pipeline()
_SPEC = importlib.util.spec_from_file_location("otel_trace_tree", Path(__file__).parent.parent / "examples" / "otel_trace_tree.py")
assert _SPEC is not None and _SPEC.loader is not None
EXAMPLE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(EXAMPLE)


@pytest.fixture(autouse=True)
def _fresh_spans() -> Iterator[None]:
    EXPORTER.clear()
    yield
    chio_durable.instrument_all(False)
    Agent.instrument_all(False)


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


@dataclass
class Script:
    """One response calling three tools (a priced lookup, an ungranted delete, a refund needing approval)."""

    ran: list[str] = field(default_factory=list)

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return EXAMPLE.model(messages, info)  # the example's scripted model (examples/otel_trace_tree.py)

    def lookup(self, order: str) -> str:
        self.ran.append("lookup")
        return f"{order}: shipped"

    def delete(self, order: str) -> str:
        self.ran.append("delete")
        return "deleted"

    def refund(self, order: str, amount: int) -> str:
        self.ran.append("refund")
        return f"refunded {amount}"


def _agent(chio: LocalChioClient, script: Script, **kwargs: Any) -> tuple[Agent[None, Any], ChioGovernance]:
    cap = chio.kernel.create_capability(subject="agent:support", scope=ChioScope(grants=[
        grant("model"),
        grant("support", "lookup", max_total_cost=MonetaryAmount(units=500, currency="USD")),
        grant("support", "refund", constraints=[Constraint(type="require_approval_above", value=0)]),
    ])).id
    governance = ChioGovernance(capability_id=cap, chio_client=chio, **kwargs)
    lookup = Tool(script.lookup, metadata={COST_METADATA_KEY: MonetaryAmount(units=25, currency="USD")})
    agent = Agent(
        FunctionModel(script.model), name="support", tools=[lookup, script.delete, script.refund],
        capabilities=[governance], output_type=[str, DeferredToolRequests],
    )
    agent.instrument = True  # pydantic-ai's own spans (execute_tool, chat), the decisions' parents
    return agent, governance


async def test_every_decision_is_one_span_under_the_operation_it_governs(chio: LocalChioClient) -> None:
    script = Script()
    agent, governance = _agent(chio, script, instrument=True)
    first = await agent.run("look after order o-1")
    assert isinstance(first.output, DeferredToolRequests)
    (approval_id,) = [r.evaluation.approval_id for r in governance.receipts_of(first) if r.evaluation.pending]
    chio.kernel.respond_approval(approval_id, "approved", "ok")
    done = await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(first.output))
    assert done.output == "done" and sorted(script.ran) == ["lookup", "refund"]

    spans = EXPORTER.get_finished_spans()
    print(tree(spans))
    everything = by_id(spans)
    decisions = decision_spans(spans)
    records = governance.receipts_of(first) + governance.receipts_of(done)
    # exactly one span per decision of the two runs, each naming its receipt once
    assert sorted(s.attributes["chio.receipt_id"] for s in decisions) == sorted(r.receipt_id for r in records)
    verdicts = {(s.attributes["chio.tool_name"], s.attributes["chio.verdict"]) for s in decisions}
    assert {("lookup", "allow"), ("delete", "deny"), ("refund", "pending_approval"), ("refund", "allow")} <= verdicts
    for span in decisions:
        parent = everything[span.parent.span_id]
        kind = span.attributes["chio.call_kind"]
        expected = "chat" if kind == "model" else f"execute_tool {span.attributes['chio.tool_name']}"
        assert parent.name.startswith(expected), (span.attributes, parent.name)
        assert span.status.is_ok  # a deny is governance working, not an error
        assert "order" not in str(dict(span.attributes)) or "o-1" not in str(dict(span.attributes))  # never parameters
        assert span.attributes["chio.parameter_hash"]
        # the receipt verifies and signs this span's trace
        receipt = chio.kernel.get_receipt(span.attributes["chio.receipt_id"])
        assert receipt is not None and chio.kernel.verify_receipt(receipt)
        assert receipt.metadata["trace_id"] == format(span.context.trace_id, "032x")
        assert receipt.metadata["span_id"] == format(span.context.span_id, "016x")
        assert "parent_span_id" not in receipt.metadata  # the span's parent is in the trace
        assert span.attributes["chio.replayed"] is False
    (deny,) = [s for s in decisions if s.attributes["chio.verdict"] == "deny"]
    assert deny.attributes["chio.guard"] == "scope" and deny.attributes["gen_ai.security.decision.type"] == "deny"
    # the approved allow links back to the pending decision's span
    (pending,) = [s for s in decisions if s.attributes["chio.verdict"] == "pending_approval"]
    (approved,) = [s for s in decisions if s.attributes.get("chio.approval_id") == approval_id and s.attributes["chio.verdict"] == "allow"]
    assert [link.context.span_id for link in approved.links] == [pending.context.span_id]
    # the priced lookup was settled: a settle span under the same tool span
    (settle,) = [s for s in spans if s.name == "chio settle"]
    (lookup_allow,) = [s for s in decisions if s.attributes["chio.tool_name"] == "lookup"]
    assert settle.attributes["chio.hold_receipt_id"] == lookup_allow.attributes["chio.receipt_id"]
    assert everything[settle.parent.span_id].name == "execute_tool lookup"
    assert chio.kernel.get_receipt(settle.attributes["chio.receipt_id"]) is not None

    # metrics: decisions by verdict and guard, latency, the pending wait opened and answered, budget left
    counted = {(p.attributes["chio.verdict"], p.attributes["chio.guard"]): p.value for p in metric_points(READER, "chio.decisions")}
    assert counted[("deny", "scope")] >= 1 and counted[("pending_approval", "approval")] >= 1
    assert counted[("settle", "")] >= 1
    assert sum(p.count for p in metric_points(READER, "chio.decision.duration")) >= len(decisions)
    assert sum(p.value for p in metric_points(READER, "chio.approvals.pending")) == 0
    (budget,) = [p for p in metric_points(READER, "chio.budget.remaining") if p.attributes["chio.tool_name"] == "lookup"]
    assert budget.value == pytest.approx(4.75) and budget.attributes["chio.cost.currency"] == "USD"  # USD 5.00 - 0.25


async def test_off_by_default_no_span_no_trace_in_the_receipt(chio: LocalChioClient) -> None:
    script = Script()
    agent, governance = _agent(chio, script)
    result = await agent.run("look after order o-1")
    assert decision_spans(EXPORTER.get_finished_spans()) == []
    for record in governance.receipts_of(result):
        assert "trace_id" not in (chio.kernel.get_receipt(record.receipt_id).metadata or {})


async def test_agent_instrument_all_is_followed_and_instrument_false_wins(chio: LocalChioClient) -> None:
    Agent.instrument_all()
    agent, governance = _agent(chio, Script())
    await agent.run("look after order o-1")
    assert len(decision_spans(EXPORTER.get_finished_spans())) >= 4
    EXPORTER.clear()
    agent, governance = _agent(chio, Script(), instrument=False)
    await agent.run("look after order o-1")
    assert decision_spans(EXPORTER.get_finished_spans()) == []


def test_a_pre_evaluation_deny_is_a_span_and_a_signed_receipt(chio: LocalChioClient) -> None:
    chio_durable.instrument_all()
    transport = as_transport(chio)
    tracer = pipeline()[0] and __import__("opentelemetry.trace").trace.get_tracer("test")
    with tracer.start_as_current_span("task run") as outer:
        evaluation = deny_before_evaluation(
            transport, GovernedCall("task", "flow", "charge", {"card": "4111"}), "cap-none",
            guard="no-capability", reason="no capability for this task",
        )
    (span,) = decision_spans(EXPORTER.get_finished_spans())
    assert span.parent.span_id == outer.get_span_context().span_id
    assert span.attributes["chio.pre_evaluation"] is True and span.attributes["chio.verdict"] == "deny"
    assert span.attributes["chio.receipt_id"] == evaluation.receipt_id and span.attributes["chio.recorded"] is True
    assert "4111" not in str(dict(span.attributes))
    receipt = chio.kernel.get_receipt(evaluation.receipt_id)
    assert receipt.metadata["span_id"] == format(span.context.span_id, "016x") and chio.kernel.verify_receipt(receipt)


def test_a_retried_call_is_marked_replayed(chio: LocalChioClient) -> None:
    chio_durable.instrument_all()
    cap = chio.kernel.create_capability(subject="s", scope=ChioScope(grants=[grant("srv")])).id
    transport = as_transport(chio)
    call = GovernedCall("tool", "srv", "t", {"a": 1})
    first = transport.evaluate_sync(call, capability_id=cap, idempotency_key="idem-same")
    again = transport.evaluate_sync(call, capability_id=cap, idempotency_key="idem-same")
    assert first.receipt_id == again.receipt_id
    spans = decision_spans(EXPORTER.get_finished_spans())
    assert [s.attributes["chio.replayed"] for s in spans] == [False, True]


def test_no_opentelemetry_import_when_off(tmp_path: Path) -> None:
    # the core and the kernel, deciding a call with instrumentation off: OpenTelemetry is never imported
    # by Chio, and its handles are never built. (Pydantic plugins are off here: logfire's pydantic
    # plugin, loaded by `import pydantic` when logfire is installed, imports OpenTelemetry itself.)
    code = (
        "import sys, chio_durable, chio_kernel\n"
        "from chio_durable import GovernedCall, as_transport\n"
        "from chio_sdk.models import ChioScope, Operation, ToolGrant\n"
        f"k = chio_kernel.Kernel(data_dir={str(tmp_path)!r})\n"
        "cap = k.create_capability(subject='s', scope=ChioScope(grants=[ToolGrant(server_id='s', tool_name='t', "
        "operations=[Operation.INVOKE])])).id\n"
        "assert as_transport(k).evaluate_sync(GovernedCall('tool', 's', 't', {}), capability_id=cap).allowed\n"
        "import chio_kernel._telemetry as t\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')), t._HANDLE)"
    )
    env = {**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[] []"


def test_instrument_must_be_a_bool(chio: LocalChioClient) -> None:
    with pytest.raises(TypeError, match="instrument must be True, False or None"):
        ChioGovernance(capability_id="c", chio_client=chio, instrument="yes")  # type: ignore[arg-type]


async def test_a_person_s_answer_is_a_span_linked_to_the_pending_decision(chio: LocalChioClient) -> None:
    chio_durable.instrument_all()  # the layers' and the in-process kernel's
    agent, governance = _agent(chio, Script())
    first = await agent.run("look after order o-1")
    (record,) = [r for r in governance.receipts_of(first) if r.evaluation.pending]
    resolution = chio.kernel.respond_approval(record.evaluation.approval_id, "approved", "ok")
    spans = EXPORTER.get_finished_spans()
    (pending,) = [s for s in decision_spans(spans) if s.attributes["chio.verdict"] == "pending_approval"]
    (answer,) = [s for s in spans if s.name == "chio approval answer"]
    assert answer.attributes["chio.receipt_id"] == resolution.id
    assert [link.context.span_id for link in answer.links] == [pending.context.span_id]


async def test_sidecar_request_spans_join_the_caller_s_trace_and_time_the_request(chio: LocalChioClient) -> None:
    import httpx
    from opentelemetry import trace
    from opentelemetry.propagate import inject

    from chio_kernel._telemetry import request_telemetry
    from chio_kernel.sidecar import create_app

    app = request_telemetry(create_app(chio.kernel))
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        headers: dict[str, str] = {}
        inject(headers)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sidecar") as http:
        assert (await http.get("/chio/health", headers=headers)).status_code == 200
        assert (await http.get("/v1/receipts/rcpt-nope")).status_code == 404
    spans = [s for s in EXPORTER.get_finished_spans() if s.name.startswith("GET ")]
    assert [s.name for s in spans] == ["GET /chio/health", "GET /v1/receipts/{id}"]
    assert spans[0].parent.span_id == caller.get_span_context().span_id
    assert spans[1].attributes["http.response.status_code"] == 404
    routes = {p.attributes["http.route"]: p.count for p in metric_points(READER, "chio.sidecar.request.duration")}
    assert routes["/chio/health"] >= 1 and routes["/v1/receipts/{id}"] >= 1


def test_sidecar_otel_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch, chio_home: Path) -> None:
    import builtins

    from chio_kernel._telemetry import TelemetryMissing, configure_otlp

    real_import = builtins.__import__

    def no_exporter(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry.exporter"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_exporter)
    with pytest.raises(TelemetryMissing, match=r"pip install 'chio-durable\[otel\]'"):
        configure_otlp()
    from cli_inprocess import run_cli_in_process

    result = run_cli_in_process(["sidecar", "--otel", "--port", "1"], env={**os.environ, "CHIO_HOME": str(chio_home)})
    assert result.returncode == 1 and "pip install 'chio-durable[otel]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_example_prints_the_trace_tree_with_its_decisions() -> None:
    example = Path(__file__).parent.parent / "examples" / "otel_trace_tree.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "execute_tool delete\n    apply_guardrail chio  -> deny (scope)" in out
    assert "apply_guardrail chio  -> pending_approval (approval)" in out and "[linked to 1 earlier span]" in out
    assert "chio settle  -> settle" in out and "verifies: True" in out


def test_logfire_configure_works_as_is() -> None:
    script = Path(__file__).parent / "logfire_run.py"
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}  # logfire whole, as installed
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    decisions = json.loads(out.stdout.strip().splitlines()[-1])
    by_tool = {(d["tool"], d["verdict"], d["parent"], d["signed_trace"]) for d in decisions}
    assert {("lookup", "allow", "execute_tool lookup", True), ("delete", "deny", "execute_tool delete", True),
            ("function:model:", "allow", "chat function:model:", True)} == by_tool, decisions


def test_a_full_run_context_is_sent_as_is(chio: LocalChioClient) -> None:
    from chio_durable._telemetry import RUN_CONTEXT_MAX_KEYS
    from chio_kernel._run_context import MAX_KEYS

    assert RUN_CONTEXT_MAX_KEYS == MAX_KEYS
    chio_durable.instrument_all()
    cap = chio.kernel.create_capability(subject="s", scope=ChioScope(grants=[grant("srv")])).id
    full = {f"k{i}": "v" for i in range(MAX_KEYS - 1)}  # no room for two more keys
    evaluation = as_transport(chio).evaluate_sync(GovernedCall("tool", "srv", "t", {}, metadata=full), capability_id=cap)
    assert evaluation.allowed and evaluation.receipt.metadata == full  # allowed as without telemetry
    (span,) = decision_spans(EXPORTER.get_finished_spans())
    assert span.attributes["chio.receipt_id"] == evaluation.receipt_id
