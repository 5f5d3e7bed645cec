"""ChioTemporalAgent's kernel checks are durable operations: fail closed when the kernel is down or
when a worker lacks the governance activities (real dev server, real embedded kernel)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.worker import Worker

    import test_agent_app as app
    from chio_kernel import SidecarClient
    from chio_temporal._seams import registered_activity_name
    from test_agent import MODEL, DOCS_LIST, SupportWorkflow, grant, issue

pytestmark = pytest.mark.temporal


@pytest.fixture
async def chio(chio_home):
    from chio_kernel import LocalChioClient

    async with LocalChioClient(data_dir=chio_home) as client:
        app.use_kernel(client)
        yield client


@pytest.fixture(scope="module")
async def client(temporal_env) -> Client:
    target = temporal_env.client.service_client.config.target_host
    return await Client.connect(target, namespace=temporal_env.client.namespace, plugins=[PydanticAIPlugin()])


async def test_kernel_down_the_evaluate_activity_retries_and_nothing_runs(client: Client, chio: Any) -> None:
    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    before = dict(app.CALLS)
    app.governed_support.transport.use(SidecarClient("http://127.0.0.1:9"))  # nothing listens there
    task_queue = f"down-{uuid.uuid4().hex[:8]}"
    try:
        async with Worker(client, task_queue=task_queue, workflows=[SupportWorkflow], plugins=[app.governed_support.plugin]):
            handle = await client.start_workflow(SupportWorkflow.run, "lookup:K", id=f"down-{uuid.uuid4().hex[:8]}", task_queue=task_queue)
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 30)
    finally:
        app.use_kernel(chio)
    cause = failure.value.cause
    assert getattr(cause, "activity_type", "") == "agent__support__capability__chio__evaluate", cause
    assert getattr(cause, "retry_state", None) is not None and "ChioSidecarError" in repr(cause.__cause__)
    assert app.CALLS.get("model", 0) == before.get("model", 0)  # the governed call never ran
    assert app.CALLS.get("lookup", 0) == before.get("lookup", 0)


async def test_worker_without_the_governance_activities_fails_the_workflow(client: Client, chio: Any) -> None:
    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    before = dict(app.CALLS)
    without = [
        fn for fn in app.governed_support.temporal_activities
        if "__capability__chio__" not in (registered_activity_name(fn) or "")
    ]
    assert len(without) < len(app.governed_support.temporal_activities)
    task_queue = f"nogov-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[SupportWorkflow], activities=without):
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(
                client.execute_workflow(SupportWorkflow.run, "lookup:N", id=f"nogov-{uuid.uuid4().hex[:8]}", task_queue=task_queue),
                60,
            )
    cause = failure.value.cause
    assert getattr(cause, "activity_type", "") == "agent__support__capability__chio__evaluate", cause
    assert "not registered" in repr(cause.__cause__), repr(cause.__cause__)
    assert app.CALLS.get("model", 0) == before.get("model", 0)  # nothing ran ungoverned
    assert app.CALLS.get("lookup", 0) == before.get("lookup", 0)
