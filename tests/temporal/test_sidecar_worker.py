"""The interceptor against the real sidecar (subprocess, HTTP) driven by chio_kernel.SidecarClient (a chio_sdk.ChioClient),
and build_chio_worker in both modes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_kernel import SidecarClient
from chio_sdk.testing import allow_all
from temporalio.client import Client

import workflows
from chio_kernel import LocalChioClient
from chio_temporal import (
    SIDECAR_ERROR_TYPE,
    ChioActivityInterceptor,
    ChioTemporalConfigError,
    WorkflowGrant,
    build_chio_worker,
)
from chio_temporal.grants import mint_capability
from chio_kernel.testing import SidecarProcess
from chio_temporal_kit import EXECUTOR, make_worker, outcome, plan, running, scope, start_plan, tool

pytestmark = pytest.mark.temporal


@pytest.fixture
async def sidecar(chio_home: Path) -> Any:
    process = await asyncio.to_thread(SidecarProcess(chio_home).start)
    try:
        yield process
    finally:
        process.stop()


async def pending_attempt(handle: Any) -> tuple[int, str | None]:
    """(attempt, last failure's ApplicationError type) of the workflow's pending activity."""
    description = await handle.describe()
    pending = description.raw_description.pending_activities
    if not pending:
        return 0, None
    activity = pending[0]
    failure = activity.last_failure
    kind = failure.cause.application_failure_info.type if failure.HasField("cause") else failure.application_failure_info.type
    return activity.attempt, kind or None


async def test_sidecar_down_then_up_activity_retries_and_succeeds_with_one_receipt(
    client: Client, sidecar: SidecarProcess, uid: Any
) -> None:
    wid, tq = uid("sidecar-down"), uid("tq")
    chio = SidecarClient(sidecar.url)
    worker, interceptor, grant = await build_chio_worker(
        client,
        task_queue=tq,
        activities=workflows.ALL_ACTIVITIES,
        workflows=[workflows.PlanWorkflow],
        chio_client=chio,
        workflow_id=wid,
        scope=scope(tool("bank", "debit_account", max_invocations=1)),
        subject="agent:my-pipeline",
        ttl_seconds=600,
        default_tool_server="bank",
        activity_executor=EXECUTOR,
    )
    assert interceptor.sidecar_url == sidecar.url and grant.token.subject == "agent:my-pipeline"
    sidecar.stop()
    async with running(worker):
        handle = await start_plan(client, tq, wid, plan(("debit_account", ["acct", 3]), max_attempts=200))
        # the activity is retried with the retryable sidecar error while the sidecar is down
        deadline = time.monotonic() + 30
        attempt, kind = 0, None
        while time.monotonic() < deadline and attempt < 3:
            attempt, kind = await pending_attempt(handle)
            await asyncio.sleep(0.1)
        assert attempt >= 3 and kind == SIDECAR_ERROR_TYPE
        assert workflows.CALLS == []  # fail closed: the body never ran
        await asyncio.to_thread(sidecar.start)  # off the loop: the worker keeps running
        result = await asyncio.wait_for(handle.result(), 30)
    assert result == ["debited 3 from acct"]
    assert len(workflows.CALLS) == 1
    async with httpx.AsyncClient(base_url=sidecar.url) as http:
        listed = (await http.get("/v1/receipts", params={"capability_id": grant.capability_id})).json()
    receipts = listed["receipts"] if isinstance(listed, dict) else listed
    assert [r["decision"]["verdict"] for r in receipts] == ["allow"]
    assert receipts[0]["id"] == workflows.CALLS[0][2]
    env = interceptor.get_workflow_receipt(wid).to_envelope()
    assert env["step_count"] == 1 and env["allow_count"] == 1
    assert env["steps"][0]["attempts"][0] >= 3  # the attempt that reached the kernel


async def test_sidecar_error_message_names_the_url(client: Client, chio_home: Path, uid: Any) -> None:
    wid, tq = uid("sidecar-none"), uid("tq")
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    local = LocalChioClient(data_dir=chio_home)
    token = await local.create_capability(subject="agent:x", scope=scope(tool("bank", "debit_account")), ttl_seconds=60)
    ic = ChioActivityInterceptor(chio_client=SidecarClient(url), sidecar_url=url, default_tool_server="bank")
    ic.register_workflow_grant(WorkflowGrant(workflow_id=wid, token=token, tool_server="bank"))
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["a", 1]), max_attempts=2)))
    assert err.type == SIDECAR_ERROR_TYPE and err.non_retryable is False
    assert url in str(err) and err.details[0]["sidecar_url"] == url
    assert workflows.CALLS == []
    await local.close()


async def test_build_chio_worker_with_a_minted_capability_id_over_the_sidecar(
    client: Client, sidecar: SidecarProcess, uid: Any
) -> None:
    wid, tq = uid("build-capid"), uid("tq")
    chio = SidecarClient(sidecar.url)
    token = await mint_capability(
        chio, subject="agent:my-pipeline", scope=scope(tool("agent-tools", "read_file")), ttl_seconds=600
    )
    worker, interceptor, grant = await build_chio_worker(
        client,
        task_queue=tq,
        activities=workflows.ALL_ACTIVITIES,
        workflows=[workflows.PlanWorkflow],
        chio_client=chio,
        workflow_id=wid,
        capability_id=token.id,
        default_tool_server="agent-tools",
        activity_tool_server_map={"send_email": "email-outbound"},
        activity_executor=EXECUTOR,
    )
    assert grant.token == token and grant.workflow_id == wid and grant.tool_server == "agent-tools"
    assert interceptor.grant_for(wid) is grant
    async with running(worker):
        err = await outcome(
            await start_plan(client, tq, wid, plan(("read_file", ["/r"]), ("send_email", ["a@b.c", "x"])))
        )
    # read_file allowed; send_email evaluated against email-outbound, which the scope does not grant
    assert [name for name, _, _ in workflows.CALLS] == ["read_file"]
    assert err.details[0]["tool_server"] == "email-outbound" and err.details[0]["guard"] == "scope"
    with pytest.raises(ChioTemporalConfigError, match="not known"):
        await build_chio_worker(
            client, task_queue=tq, activities=[workflows.debit_account], chio_client=chio,
            workflow_id=wid, capability_id="cap-does-not-exist",
        )


async def test_build_chio_worker_mints_with_the_embedded_kernel(client: Client, chio_home: Path, uid: Any) -> None:
    wid, tq = uid("build-mint"), uid("tq")
    chio = LocalChioClient(data_dir=chio_home)
    worker, interceptor, grant = await build_chio_worker(
        client,
        task_queue=tq,
        activities=workflows.ALL_ACTIVITIES,
        workflows=[workflows.PlanWorkflow],
        chio_client=chio,
        workflow_id=wid,
        scope=scope(tool("agent-tools", "debit_account")),
        subject="agent:my-pipeline",
        ttl_seconds=120,
        default_tool_server="agent-tools",
        activity_executor=EXECUTOR,
    )
    stored = chio.kernel.get_capability(grant.capability_id)
    assert stored is not None and stored.subject == "agent:my-pipeline"
    assert stored.expires_at - stored.issued_at == 120
    async with running(worker):
        assert await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["a", 2])))) == ["debited 2 from a"]
    # the same capability id reused (mode 1, embedded kernel)
    _, _, again = await build_chio_worker(
        client, task_queue=tq, activities=[workflows.debit_account], chio_client=chio,
        workflow_id=wid + "-2", capability_id=grant.capability_id,
    )
    assert again.token == grant.token
    await chio.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capability_id": "cap-1", "scope": scope(tool("s", "t")), "subject": "agent:x"}, "either capability_id"),
        ({}, "missing scope= and subject="),
        ({"scope": scope(tool("s", "t"))}, "missing subject="),
        ({"subject": "agent:x"}, "missing scope="),
        ({"scope": {"grants": []}, "subject": "agent:x"}, "ChioScope"),
        ({"scope": scope(tool("s", "t")), "subject": "agent:x", "ttl_seconds": 0}, "ttl_seconds"),
        ({"capability_id": "cap-1", "workflow_id": ""}, "workflow_id="),
        ({"capability_id": "cap-1", "task_queue": ""}, "task_queue="),
        ({"capability_id": "cap-1", "chio_client": None}, "chio_client="),
        ({"capability_id": "cap-1", "activities": []}, "activities="),
        ({"capability_id": "cap-1"}, "cannot look up"),  # mocks cannot fetch tokens by id
    ],
)
async def test_build_chio_worker_bad_arguments_say_what_to_pass(client: Client, kwargs: dict[str, Any], message: str) -> None:
    mock = allow_all()
    call: dict[str, Any] = {
        "task_queue": "tq",
        "activities": [workflows.debit_account],
        "chio_client": mock,
        "workflow_id": "wf",
        **kwargs,
    }
    with pytest.raises(ChioTemporalConfigError, match=message):
        await build_chio_worker(client, **call)
    assert [c.method for c in mock.calls] == []  # nothing minted on bad input
