"""Code written against upstream's published packages runs here (docs/upstream.md).

Every public name of upstream chio-prefect 0.1.0 (PyPI, ``pip download --no-deps chio-prefect==0.1.0``;
the list below is hard-coded from its ``__all__`` s) and every chio-temporal name of seed 001 and
issue 12 is imported AND used, in upstream's shapes, on a real Prefect API and a real Temporal dev
server with the real embedded kernel.
"""

from __future__ import annotations

import importlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():  # the workflow sandbox re-imports this module
    import pytest
    from chio_sdk.models import ChioScope, Operation, ToolGrant
    from temporalio.exceptions import ApplicationError

    from chio_kernel import LocalChioClient
    from chio_temporal.interceptor import DENIED_ERROR_TYPE

UPSTREAM_CHIO_PREFECT_VERSION = "0.1.0"
#: module -> its ``__all__`` in upstream chio-prefect 0.1.0
UPSTREAM_CHIO_PREFECT_NAMES: dict[str, list[str]] = {
    "chio_prefect": ["EVENT_ALLOW", "EVENT_DENY", "ChioPrefectConfigError", "ChioPrefectError", "chio_flow", "chio_task"],
    "chio_prefect.decorators": ["ChioClientLike", "chio_flow", "chio_task"],
    "chio_prefect.errors": ["ChioPrefectConfigError", "ChioPrefectError"],
    "chio_prefect.events": ["EVENT_ALLOW", "EVENT_DENY", "emit_allow_event", "emit_deny_event"],
}
#: seed 001's public surface table plus the names issue 12 lists
UPSTREAM_CHIO_TEMPORAL_NAMES: dict[str, list[str]] = {
    "chio_temporal": [
        "ChioActivityInterceptor", "WorkflowGrant", "WorkflowReceipt", "WorkflowStepReceipt", "build_chio_worker",
        "ActivityGrantOverride", "DENIED_ERROR_TYPE", "ChioTemporalError", "ChioTemporalConfigError",
        "ENVELOPE_VERSION",
    ],
    "chio_temporal.interceptor": ["ChioActivityInterceptor", "ActivityGrantOverride", "DENIED_ERROR_TYPE"],
    "chio_temporal.grants": ["WorkflowGrant"],
    "chio_temporal.receipt": ["WorkflowReceipt", "WorkflowStepReceipt"],
    "chio_temporal.worker": ["build_chio_worker"],
    "chio_temporal.errors": ["ChioTemporalError", "ChioTemporalConfigError"],
}


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


@pytest.mark.parametrize(
    "module,name",
    [(m, n) for table in (UPSTREAM_CHIO_PREFECT_NAMES, UPSTREAM_CHIO_TEMPORAL_NAMES) for m, ns in table.items() for n in ns],
)
def test_every_upstream_name_imports_from_upstreams_module(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_same_objects_under_upstream_and_project_names() -> None:
    import chio_prefect
    import chio_temporal
    from chio_prefect.events import ALLOW_EVENT, DENY_EVENT, EVENT_ALLOW, EVENT_DENY
    from chio_temporal.interceptor import DENIED_ERROR_TYPE

    assert (EVENT_ALLOW, EVENT_DENY) == (ALLOW_EVENT, DENY_EVENT) == ("chio.receipt.allow", "chio.receipt.deny")
    assert (chio_prefect.EVENT_ALLOW, chio_prefect.EVENT_DENY) == (EVENT_ALLOW, EVENT_DENY)
    assert DENIED_ERROR_TYPE == chio_temporal.DENIED_ERROR_TYPE == "ChioCapabilityDenied"
    assert chio_temporal.ENVELOPE_VERSION == "chio-temporal/v1"


# --- chio-prefect 0.1.0, used as upstream's README does, on a real Prefect API -------------------


@pytest.mark.prefect
def test_upstream_prefect_usage(prefect_api: str, chio_home: Path) -> None:
    from chio_prefect import EVENT_ALLOW, EVENT_DENY, ChioPrefectConfigError, ChioPrefectError, chio_flow, chio_task
    from chio_prefect.decorators import ChioClientLike
    from chio_prefect.errors import ChioPrefectError as ErrorsChioPrefectError
    from chio_prefect.events import emit_allow_event, emit_deny_event

    assert ErrorsChioPrefectError is ChioPrefectError
    chio: ChioClientLike = LocalChioClient(data_dir=chio_home)
    chio.kernel.create_capability(
        subject="pipeline", scope=ChioScope(grants=[grant("search-srv", "search_documents")]), capability_id="cap-up"
    )

    @chio_task(scope=ChioScope(grants=[grant("search-srv", "search_documents")]), tool_name="search_documents")
    def search(query: str) -> str:
        return f"results for {query}"

    @chio_task(tool_name="delete_documents")  # inside the flow envelope, but not in the capability
    def delete(query: str) -> str:
        raise AssertionError("a denied task body never runs")

    @chio_flow(scope=ChioScope(grants=[grant("search-srv")]), capability_id="cap-up", tool_server="search-srv",
               chio_client=chio)
    def pipeline(query: str) -> dict[str, Any]:
        found = search(query)
        try:
            delete(query)
        except PermissionError as exc:  # upstream: a deny is a PermissionError with .chio_error
            return {"found": found, "message": str(exc), "error": exc.chio_error}  # type: ignore[attr-defined]
        raise AssertionError("delete was not denied")

    out = pipeline("durable agents")
    assert out["found"] == "results for durable agents"
    assert out["message"].startswith("Chio capability denied: ")
    err = out["error"]
    assert isinstance(err, ChioPrefectError) and err.code == "TASK_DENIED"
    assert err.guard == "scope" and err.receipt_id and err.task_name == "delete_documents"
    assert out["message"] == f"Chio capability denied: {err.reason}" + out["message"][len(f"Chio capability denied: {err.reason}"):]
    assert err.to_dict()["receipt_id"] == err.receipt_id and err.to_dict()["code"] == "TASK_DENIED"
    deny_receipt = chio.kernel.get_receipt(err.receipt_id)
    assert deny_receipt is not None and deny_receipt.decision.is_denied and chio.kernel.verify_receipt(deny_receipt)

    # upstream's error constructors (message first, keyword fields)
    built = ChioPrefectError("budget exhausted", guard="budget", reason="budget exhausted", receipt_id="r-1",
                             task_name="t", flow_run_id="f", task_run_id="tr", capability_id="c", tool_server="s")
    assert (built.message, built.receipt_id, built.task_name, built.code) == ("budget exhausted", "r-1", "t", "TASK_DENIED")
    config = ChioPrefectConfigError("chio_flow requires both 'scope' and 'capability_id'")
    assert config.code == "PREFECT_CONFIG_ERROR" and "capability_id" in str(config)

    # upstream's event emitters, with a real signed receipt
    allow_receipt = chio.kernel.evaluate("cap-up", "search-srv", "search_documents", {"query": "x"})
    allowed = emit_allow_event(receipt=allow_receipt, task_name="search_documents", flow_run_id=None,
                               task_run_id=None, extra={"note": "upstream"})
    assert allowed is not None and allowed.event == EVENT_ALLOW
    assert allowed.payload["receipt_id"] == allow_receipt.id and allowed.payload["note"] == "upstream"
    denied = emit_deny_event(receipt=None, task_name="delete_documents", reason="not granted", guard="scope",
                             receipt_id=err.receipt_id, capability_id="cap-up", tool_server="search-srv")
    assert denied is not None and denied.event == EVENT_DENY
    assert (denied.payload["receipt_id"], denied.payload["guard"], denied.payload["reason"]) == (
        err.receipt_id, "scope", "not granted")
    from_receipt = emit_deny_event(receipt=deny_receipt, task_name="delete_documents", reason=err.reason or "")
    assert from_receipt is not None and from_receipt.payload["receipt_id"] == deny_receipt.id


# --- chio-temporal (seed 001 + issue 12), on a real Temporal dev server ---------------------------


@activity.defn
async def read_database(table: str) -> str:
    return f"rows of {table}"


@activity.defn
async def send_email(to: str) -> str:
    raise AssertionError("a denied activity body never runs")


@workflow.defn
class UpstreamSagaWorkflow:
    @workflow.run
    async def run(self, table: str) -> dict[str, Any]:
        rows = await workflow.execute_activity(read_database, table, start_to_close_timeout=timedelta(seconds=30))
        try:
            await workflow.execute_activity(send_email, "ops@example.com", start_to_close_timeout=timedelta(seconds=30))
        except ApplicationError as exc:  # seed 001's saga style
            if exc.type == DENIED_ERROR_TYPE:
                return {"rows": rows, "denied": exc.message}
            raise
        return {"rows": rows, "denied": None}


@pytest.mark.temporal
async def test_upstream_temporal_usage(temporal_env: Any, chio_home: Path) -> None:
    from chio_temporal import (
        ENVELOPE_VERSION,
        ActivityGrantOverride,
        ChioActivityInterceptor,
        ChioTemporalConfigError,
        ChioTemporalError,
        WorkflowGrant,
        WorkflowReceipt,
        WorkflowStepReceipt,
        build_chio_worker,
    )

    chio = LocalChioClient(data_dir=chio_home)
    workflow_id = f"upstream-{uuid.uuid4().hex[:8]}"
    task_queue = f"upstream-{uuid.uuid4().hex[:8]}"
    worker, interceptor, wf_grant = await build_chio_worker(
        temporal_env.client, task_queue=task_queue, activities=[read_database, send_email],
        workflows=[UpstreamSagaWorkflow], chio_client=chio, workflow_id=workflow_id,
        scope=ChioScope(grants=[grant("agent-tools", "read_database")]), subject="agent:upstream",
        default_tool_server="agent-tools",
    )
    assert isinstance(interceptor, ChioActivityInterceptor) and isinstance(wf_grant, WorkflowGrant)
    no_override: ActivityGrantOverride = lambda info: None  # noqa: E731 - upstream's hook shape
    interceptor.register_activity_grant_override("read_database", no_override)
    async with worker:
        handle = await temporal_env.client.start_workflow(
            UpstreamSagaWorkflow.run, "orders", id=workflow_id, task_queue=task_queue
        )
        out = await handle.result()
    assert out["rows"] == "rows of orders"
    assert out["denied"].startswith("Chio capability denied: ")

    # upstream's accessor and finalize(completed_at=...) in Unix seconds
    receipt = interceptor.workflow_receipt(workflow_id, handle.result_run_id)
    assert isinstance(receipt, WorkflowReceipt) and (receipt.allow_count, receipt.deny_count) == (1, 1)
    done = 1_800_000_000.5
    interceptor.finalize_workflow(workflow_id=workflow_id, run_id=handle.result_run_id, outcome="success",
                                  completed_at=done)
    receipt.finalize("success", completed_at=done + 60)  # same outcome again: idempotent, time kept
    with pytest.raises(ChioTemporalConfigError, match="already finalised with outcome 'success'"):
        receipt.finalize("failure")
    assert isinstance(ChioTemporalConfigError("x"), ChioTemporalError)
    upstream = json.loads(receipt.to_json())
    assert upstream["version"] == ENVELOPE_VERSION and upstream["completed_at"] == int(done)  # upstream: int seconds
    assert isinstance(upstream["started_at"], int) and isinstance(upstream["steps"][0]["evaluated_at"], int)
    ours = receipt.to_envelope()
    assert ours["completed_at"] == datetime.fromtimestamp(done, timezone.utc).isoformat().replace("+00:00", "Z")
    # the signed receipts the envelope names verify
    for step in upstream["steps"]:
        signed = await chio.get_receipt(step["receipt_id"])
        assert signed is not None and await chio.verify_receipt(signed)

    # upstream's constructors: no run_id, record_step(), a step from a signed receipt, Unix/RFC 3339 times
    signed = await chio.get_receipt(upstream["steps"][1]["receipt_id"])
    assert signed is not None
    manual = WorkflowReceipt(workflow_id="manual", started_at=1_700_000_000)
    assert manual.run_id is None
    step = manual.record_step(WorkflowStepReceipt(activity_id="1", activity_type="send_email", attempt=1, receipt=signed))
    assert (step.verdict, step.receipt_id, step.tool_name, step.guard) == ("deny", signed.id, "send_email", "scope")
    manual.finalize(outcome="failure", completed_at="2023-11-14T22:13:30Z")
    again = json.loads(manual.to_json())
    assert (again["started_at"], again["completed_at"], again["deny_count"]) == (1_700_000_000, 1_700_000_010, 1)
    with pytest.raises(ChioTemporalConfigError, match="RFC 3339"):
        WorkflowReceipt(workflow_id="bad", started_at="yesterday")
    await chio.close()


# --- upstream chio-temporal's WorkflowReceipt behaviours (its tests/test_workflow_receipt.py) -------


def _upstream_receipt(receipt_id: str, tool_name: str, allow: bool = True, timestamp: int = 100) -> Any:
    from chio_sdk.models import ChioReceipt, Decision, ToolCallAction

    decision = Decision.allow() if allow else Decision.deny(reason="denied in test", guard="TestGuard")
    return ChioReceipt(id=receipt_id, timestamp=timestamp, capability_id="cap-1", tool_server="srv",
                       tool_name=tool_name, action=ToolCallAction(parameters={}, parameter_hash="0" * 64),
                       decision=decision, content_hash="content-hash", policy_hash="policy-hash", evidence=[],
                       kernel_key="kernel-key", signature="sig")


def _upstream_workflow_receipt() -> Any:
    from chio_temporal import WorkflowReceipt

    receipt = WorkflowReceipt(workflow_id="wf-1", run_id="run-1", started_at=10)
    for i, name in enumerate(["first", "second", "third"]):
        receipt.record_step(activity_type=name, activity_id=f"act-{i}", attempt=1,
                            receipt=_upstream_receipt(f"r-{i}", name, allow=i != 1, timestamp=10 + i))
    return receipt


def test_record_step_takes_upstreams_keywords() -> None:
    receipt = _upstream_workflow_receipt()
    assert [s.activity_type for s in receipt.steps] == ["first", "second", "third"]
    assert [s.activity_id for s in receipt.steps] == ["act-0", "act-1", "act-2"]
    assert (receipt.step_count, receipt.allow_count, receipt.deny_count) == (3, 2, 1)
    assert [s.receipt.id for s in receipt.steps] == ["r-0", "r-1", "r-2"]


def test_workflow_receipt_refuses_what_upstream_refuses() -> None:
    from chio_temporal import ChioTemporalConfigError, WorkflowReceipt

    with pytest.raises(ChioTemporalConfigError):
        WorkflowReceipt(workflow_id="")
    with pytest.raises(ChioTemporalConfigError):
        WorkflowReceipt(workflow_id="wf", outcome="exploded")
    assert WorkflowReceipt(workflow_id="wf", outcome="in_progress").outcome is None
    with pytest.raises(ChioTemporalConfigError):
        WorkflowReceipt(workflow_id="wf").record_step(activity_type="", activity_id="a", attempt=1,
                                                      receipt=_upstream_receipt("r", "t"))


def test_to_json_is_byte_stable_in_upstreams_schema() -> None:
    first, second = _upstream_workflow_receipt().to_json(), _upstream_workflow_receipt().to_json()
    assert first == second  # byte-stable across runs
    envelope = json.loads(first)
    assert envelope["completed_at"] is None and envelope["outcome"] == "in_progress"  # in progress
    assert envelope["started_at"] == 10 and isinstance(envelope["started_at"], int)
    assert ", " not in first and first.isascii()  # compact, ASCII, sorted (json.dumps sort_keys)
    assert list(envelope) == sorted(envelope)
    step = envelope["steps"][0]
    assert step["activity_type"] == "first" and step["attempt"] == 1 and step["receipt"]["id"] == "r-0"
    done = _upstream_workflow_receipt()
    done.finalize(outcome="failure", completed_at=1000)
    finished = json.loads(done.to_json())
    assert finished["completed_at"] == 1000 and isinstance(finished["completed_at"], int)
    assert finished["outcome"] == "failure"


def test_step_to_dict_round_trips_with_the_receipt_key() -> None:
    from chio_temporal import WorkflowStepReceipt

    step = WorkflowStepReceipt(activity_id="act-1", activity_type="search", attempt=2,
                               receipt=_upstream_receipt("r-9", "search"))
    data = step.to_dict()
    assert data["receipt"]["id"] == "r-9"
    again = WorkflowStepReceipt(**data)
    assert again.to_dict() == data
    assert json.loads(json.dumps(data)) == data


def test_upstreams_inbound_interceptor_name_is_importable() -> None:
    from chio_temporal.interceptor import _ChioActivityInbound, _ChioInboundInterceptor

    assert _ChioInboundInterceptor is _ChioActivityInbound


def test_the_deny_event_names_the_task_run_and_the_flow_run_as_related() -> None:
    from chio_prefect.events import ReceiptEvent

    event = ReceiptEvent(allowed=False, receipt_id="rcpt-1", capability_id="cap-1", tool_server="s", tool_name="t",
                         task_name="t", timestamp="2026-12-07T00:00:00.000Z", guard="scope", reason="no",
                         task_run_id="task-1", flow_run_id="flow-1")
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event.related()}
    assert roles == {"flow-run": "prefect.flow-run.flow-1", "task-run": "prefect.task-run.task-1"}
