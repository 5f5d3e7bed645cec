"""Chio search attributes on governed workflows, on the real dev server (registered by the session fixture)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.worker import Replayer, Worker
from google.protobuf.duration_pb2 import Duration

import workflows
from chio_kernel import LocalChioClient
from chio_temporal import ChioActivityInterceptor, ChioTemporalConfigError, WorkflowGrant, build_chio_worker
from chio_temporal._search_attributes import (
    CAPABILITY_ID,
    DENY_COUNT,
    PENDING_APPROVAL,
    ChioSearchAttributes,
    create_commands,
    missing_search_attributes,
    set_pending_approval,
)
from chio_temporal_kit import ALL_WORKFLOWS, EXECUTOR, SANDBOX, outcome, running, scope, start_plan, plan, tool

pytestmark = pytest.mark.temporal


@workflow.defn(sandboxed=False)
class AwaitingApproval:
    """Marks itself pending an approval, then clears it (what the approval flow will do)."""

    @workflow.run
    async def run(self, clear: bool) -> str:
        set_pending_approval(True)
        if clear:
            await workflow.sleep(timedelta(milliseconds=1))
            set_pending_approval(False)
        return "ok"


async def attributes(client: Client, workflow_id: str) -> Any:
    return (await client.get_workflow_handle(workflow_id).describe()).typed_search_attributes


async def test_capability_id_and_deny_count_are_upserted_and_replay(client: Client, chio: LocalChioClient, uid: Any) -> None:
    assert await missing_search_attributes(client) == []
    tq, saga_id, plan_id = uid("tq"), uid("sa-saga"), uid("sa-plan")
    # the saga's credit is denied (no grant), and so is its compensating credit: ChioDenyCount 2;
    # the plan runs clean: 0
    the_scope = scope(tool("bank", "debit_account"))
    worker, ic, grant = await build_chio_worker(
        client, task_queue=tq, workflows=ALL_WORKFLOWS, activities=workflows.ALL_ACTIVITIES, chio_client=chio,
        workflow_id=saga_id, scope=the_scope, subject="agent:sa", default_tool_server="bank",
        search_attributes=True, activity_executor=EXECUTOR,
    )
    ic.register_workflow_grant(WorkflowGrant(workflow_id=plan_id, token=grant.token, tool_server="bank"))
    async with running(worker):
        saga = await client.start_workflow(
            workflows.TransferWorkflow.run, workflows.Transfer("a", "b", 3), id=saga_id, task_queue=tq
        )
        denied = await outcome(saga)
        clean = await start_plan(client, tq, plan_id, plan(("debit_account", ["a", 1])))
        await outcome(clean)
    assert denied.type == "ChioCapabilityDenied"

    saga_attrs = await attributes(client, saga_id)
    assert saga_attrs.get(CAPABILITY_ID) == grant.capability_id
    assert saga_attrs.get(DENY_COUNT) == 2
    assert saga_attrs.get(PENDING_APPROVAL) is None
    plan_attrs = await attributes(client, plan_id)
    assert plan_attrs.get(CAPABILITY_ID) == grant.capability_id and plan_attrs.get(DENY_COUNT) == 0

    # the upserts are commands in the history, and the history replays with the interceptor
    history = await saga.fetch_history()
    upserts = [e for e in history.events if e.HasField("upsert_workflow_search_attributes_event_attributes")]
    assert len(upserts) == 3  # at start, then once per deny
    replayer = Replayer(workflows=ALL_WORKFLOWS, workflow_runner=SANDBOX, interceptors=[ChioSearchAttributes(ic), ic])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, repr(result.replay_failure)
    # (the check has teeth: the same history on a worker without the interceptor is nondeterministic)
    bare = await Replayer(workflows=ALL_WORKFLOWS, workflow_runner=SANDBOX, interceptors=[ic]).replay_workflow(history, raise_on_replay_failure=False)
    assert bare.replay_failure is not None


async def test_without_the_flag_nothing_is_upserted(client: Client, chio: LocalChioClient, uid: Any) -> None:
    tq, wid = uid("tq"), uid("sa-off")
    worker, _, _ = await build_chio_worker(
        client, task_queue=tq, workflows=ALL_WORKFLOWS, activities=workflows.ALL_ACTIVITIES, chio_client=chio,
        workflow_id=wid, scope=scope(tool("bank", "debit_account")), subject="agent:sa", default_tool_server="bank",
        activity_executor=EXECUTOR,
    )
    async with running(worker):
        await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["a", 1]))))
    assert (await attributes(client, wid)).get(DENY_COUNT) is None


async def test_pending_approval_is_set_and_cleared(client: Client, chio: LocalChioClient, uid: Any) -> None:
    tq = uid("tq")
    async with running(Worker(client, task_queue=tq, workflows=[AwaitingApproval])):
        for clear in (False, True):
            wid = uid(f"sa-pending-{clear}")
            await client.execute_workflow(AwaitingApproval.run, clear, id=wid, task_queue=tq)
            assert (await attributes(client, wid)).get(PENDING_APPROVAL) is (not clear)


async def test_worker_refused_on_a_namespace_without_them(client: Client, chio: LocalChioClient, uid: Any) -> None:
    namespace = f"chio-bare-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400))
    )
    bare = await Client.connect(client.service_client.config.target_host, namespace=namespace)
    assert {k.name for k in await missing_search_attributes(bare)} == {"ChioCapabilityId", "ChioDenyCount", "ChioPendingApproval"}
    with pytest.raises(ChioTemporalConfigError) as refused:
        await build_chio_worker(
            bare, task_queue=uid("tq"), workflows=ALL_WORKFLOWS, chio_client=chio, workflow_id=uid("w"),
            scope=scope(tool("bank", "debit_account")), subject="agent:sa", search_attributes=True,
        )
    message = str(refused.value)
    for command in create_commands(namespace):
        assert command in message
    assert "--name ChioDenyCount --type Int" in message


def test_agent_flag_adds_the_interceptor_with_the_agents_capability(chio_home: Path) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from chio_temporal import ChioTemporalAgent

    kernel = LocalChioClient(data_dir=chio_home)
    off = ChioTemporalAgent(Agent(TestModel(), name="sa-off"), capability_id="cap-a", chio_client=kernel)
    assert not any(isinstance(i, ChioSearchAttributes) for i in off.plugin.interceptors)  # type: ignore[attr-defined]
    on = ChioTemporalAgent(
        Agent(TestModel(), name="sa-on"), capability_id="cap-a", chio_client=kernel, search_attributes=True
    )
    [sa] = [i for i in on.plugin.interceptors if isinstance(i, ChioSearchAttributes)]  # type: ignore[attr-defined]
    assert sa.governing is on.interceptor and sa.capability_of("any-workflow", "any-run") == "cap-a"
