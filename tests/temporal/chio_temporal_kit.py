"""Helpers shared by the chio_temporal tests (scopes, running a plan, reading failures)."""

from __future__ import annotations

import atexit
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import workflows
from chio_kernel import LocalChioClient
from chio_temporal._sandbox import with_chio_passed_through

EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="activity")
"""For the sync activity (``send_email``)."""

SANDBOX = with_chio_passed_through(SandboxedWorkflowRunner())
"""Temporal's sandbox as ``build_chio_worker`` sets it up (chio's packages and beartype passed through:
the test process imports fastmcp, whose beartype import hook would otherwise make every workflow run
import beartype afresh)."""

ALL_WORKFLOWS = [workflows.TransferWorkflow, workflows.PlanWorkflow, workflows.CancelWorkflow]


def placeholder_client(prefix: str) -> LocalChioClient:
    """The kernel client a module's agents are built with, until each test points them at its own
    kernel; its directory goes when the process ends (the kernel closed first)."""
    directory = tempfile.TemporaryDirectory(prefix=prefix)
    client = LocalChioClient(data_dir=directory.name)
    atexit.register(directory.cleanup)
    atexit.register(client.kernel.close)  # atexit runs the last registered first
    return client


def make_worker(client: Client, task_queue: str, interceptors: list[Any], **kwargs: Any) -> Worker:
    """A worker with every test workflow and activity and the given interceptors."""
    kwargs.setdefault("workflows", ALL_WORKFLOWS)
    kwargs.setdefault("activities", workflows.ALL_ACTIVITIES)
    kwargs.setdefault("workflow_runner", SANDBOX)
    return Worker(client, task_queue=task_queue, interceptors=interceptors, activity_executor=EXECUTOR, **kwargs)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` for the duration of the block."""
    async with worker:
        yield worker


def tool(server: str, name: str, **kwargs: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=name, operations=[Operation.INVOKE], **kwargs)


def scope(*grants: ToolGrant) -> ChioScope:
    return ChioScope(grants=list(grants))


def plan(*steps: tuple[str, list[Any]], max_attempts: int = 1, children: list[workflows.Plan] | None = None) -> workflows.Plan:
    return workflows.Plan(
        steps=[workflows.Step(activity=name, args=list(args)) for name, args in steps],
        max_attempts=max_attempts,
        children=children or [],
    )


async def start_plan(client: Client, task_queue: str, workflow_id: str, the_plan: workflows.Plan) -> WorkflowHandle:
    return await client.start_workflow(workflows.PlanWorkflow.run, the_plan, id=workflow_id, task_queue=task_queue)


async def outcome(handle: WorkflowHandle) -> Any:
    """The workflow's result, or the ``ApplicationError`` its failure is rooted in."""
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        cause: BaseException | None = err.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = getattr(cause, "cause", None)
        assert cause is not None, f"workflow failed without an ApplicationError: {err!r}"
        return cause
