"""Helpers shared by the chio_temporal tests (scopes, running a plan, reading failures)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from chio_sdk.models import ChioScope, Operation, ToolGrant
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

import workflows

EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="activity")
"""For the sync activity (``send_email``)."""

ALL_WORKFLOWS = [workflows.TransferWorkflow, workflows.PlanWorkflow, workflows.CancelWorkflow]


def make_worker(client: Client, task_queue: str, interceptors: list[Any], **kwargs: Any) -> Worker:
    """A worker with every test workflow and activity and the given interceptors."""
    kwargs.setdefault("workflows", ALL_WORKFLOWS)
    kwargs.setdefault("activities", workflows.ALL_ACTIVITIES)
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


# --- the real sidecar as a subprocess ----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """``python -m chio_kernel.cli sidecar`` on a loopback port over ``data_dir``; async start/stop."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"sidecar-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> SidecarProcess:
        env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME"}}
        args = [sys.executable, "-m", "chio_kernel.cli", "sidecar", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.log.read_text()}")
                try:
                    if (await http.get(self.url + "/chio/health")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sidecar did not become healthy in {timeout}s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
