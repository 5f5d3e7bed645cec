"""Approvals in a governed DBOS workflow: the workflow waits with a durable ``DBOS.recv``; only the
kernel's allow under the approval runs the tool, exactly once.

* a forged DBOS message (no answer in the kernel) only makes the workflow ask again: still pending;
* the answer in the kernel resumes the workflow at the next poll interval;
* the kernel's waker for ``engine="dbos"`` (``chio_dbos.wake``, DBOS's public client) resumes it at
  once: called directly, through the in-process waker registry, and through the CLI.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import chio_dbos
from chio_dbos import ChioDBOSAgent, approval_topic, wake_fields
from chio_kernel import LocalChioClient

from chio_dbos_kit import step_names


class Script:
    def __init__(self) -> None:
        self.refunds: list[str] = []

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returned:
            return ModelResponse(parts=[TextPart(f"done: {returned[0].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-9"})])

    def refund(self, order: str) -> str:
        self.refunds.append(order)
        return f"refunded {order}"


def setup(chio: LocalChioClient, name: str, poll: float, url: str) -> tuple[ChioDBOSAgent[None, str], Script]:
    cap = chio.kernel.create_capability(subject=f"agent:{name}", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id=name, tool_name="refund", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="require_approval_above", value=0)]),
    ])).id
    script = Script()
    agent = Agent(FunctionModel(script.model), name=name, tools=[script.refund])
    governed = ChioDBOSAgent(agent, capability_id=cap, chio_client=chio, system_database_url=url)
    governed.governance.approval_poll_seconds = poll
    return governed, script


async def pending_approval(chio: LocalChioClient) -> str:
    for _ in range(300):
        pending = chio.kernel.list_approvals("pending")
        if pending:
            return str(pending[0]["id"])
        await asyncio.sleep(0.1)
    raise AssertionError("no approval became pending")


def start(governed: ChioDBOSAgent[None, str], workflow_id: str) -> asyncio.Task[Any]:
    with SetWorkflowID(workflow_id):
        return asyncio.create_task(governed.run("refund o-9"))


async def finished(task: asyncio.Task[Any], within: float) -> Any:
    return await asyncio.wait_for(task, timeout=within)


async def test_forged_message_runs_nothing_kernel_answer_runs_the_tool_once(chio: LocalChioClient, dbos_url: str) -> None:
    governed, script = setup(chio, "support-poll", poll=1.0, url=dbos_url)
    task = start(governed, "wf-approval-poll")
    approval_id = await pending_approval(chio)

    await DBOS.send_async("wf-approval-poll", {"status": "approved"}, approval_topic(approval_id))  # forged
    await asyncio.sleep(2.5)  # the workflow asked the kernel again (twice): still pending
    assert script.refunds == [] and not task.done()

    await asyncio.to_thread(chio.kernel.respond_approval, approval_id, "approved", "ok")
    result = await finished(task, within=30)
    assert result.output == "done: refunded o-9"
    assert script.refunds == ["o-9"]
    (allowed,) = [r for r in governed.receipts_of(result) if r.call.tool_name == "refund" and r.allowed]
    assert allowed.evaluation.approval_id == approval_id
    names = await step_names("wf-approval-poll")
    assert "DBOS.recv" in names and names.count("support-poll__capability__chio.evaluate") >= 4


async def test_kernel_denial_is_told_to_the_model(chio: LocalChioClient, dbos_url: str) -> None:
    governed, script = setup(chio, "support-deny", poll=1.0, url=dbos_url)
    task = start(governed, "wf-approval-deny")
    approval_id = await pending_approval(chio)
    await asyncio.to_thread(chio.kernel.respond_approval, approval_id, "denied", "no")
    result = await finished(task, within=30)
    assert script.refunds == []
    assert result.output.startswith("done: ") and "not run" in result.output


async def test_the_dbos_waker_resumes_the_workflow_at_once(chio: LocalChioClient, dbos_url: str) -> None:
    governed, script = setup(chio, "support-wake", poll=300.0, url=dbos_url)  # only a wake ends the wait in time
    task = start(governed, "wf-approval-wake")
    approval_id = await pending_approval(chio)
    await asyncio.to_thread(chio.kernel.respond_approval, approval_id, "approved", "ok")
    outcome = {"approval_id": approval_id, "status": "approved", "approver": "operator", "reason": "ok",
               "resolution_receipt_id": None}
    said = await asyncio.to_thread(chio_dbos.wake, wake_fields(dbos_url, "wf-approval-wake", approval_id), outcome)
    assert "wf-approval-wake" in said
    result = await finished(task, within=30)
    assert script.refunds == ["o-9"] and result.output == "done: refunded o-9"


async def test_answer_in_the_kernel_alone_wakes_the_workflow(chio: LocalChioClient, dbos_url: str) -> None:
    from chio_kernel._wakers import register_waker, unregister_waker

    register_waker("dbos", chio_dbos.wake)
    try:
        governed, script = setup(chio, "support-kernel", poll=300.0, url=dbos_url)
        task = start(governed, "wf-approval-kernel")
        approval_id = await pending_approval(chio)
        await asyncio.sleep(1.0)  # the wake step registered the wake
        await asyncio.to_thread(chio.kernel.respond_approval, approval_id, "approved", "ok")
        result = await finished(task, within=30)
        assert script.refunds == ["o-9"] and result.output == "done: refunded o-9"
        report = chio.kernel.last_wake_report(approval_id)
        assert report and report[0]["engine"] == "dbos" and report[0]["ok"]
    finally:
        unregister_waker("dbos")


async def test_cli_approve_wakes_the_workflow(chio: LocalChioClient, chio_home: Path, dbos_url: str) -> None:
    paths = list(sys.path)
    if not entry_points(group="chio.approval_wakers", name="dbos"):
        # not installed yet (an editable install made before the entry point was declared): declare
        # pyproject's entry point in a throwaway dist-info the CLI process finds on its path
        info = chio_home.parent / "wakers" / "chio_dbos_wakers-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chio-dbos-wakers\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[chio.approval_wakers]\ndbos = chio_dbos._wake:wake\n")
        paths.insert(0, str(info.parent))
    governed, script = setup(chio, "support-cli", poll=300.0, url=dbos_url)
    task = start(governed, "wf-approval-cli")
    approval_id = await pending_approval(chio)
    await asyncio.sleep(1.0)
    env = {**os.environ, "CHIO_HOME": str(chio_home), "PYTHONPATH": os.pathsep.join(paths)}
    cli = [sys.executable, "-m", "chio_kernel.cli", "approvals", "approve", approval_id, "--data-dir", str(chio_home)]
    done = await asyncio.to_thread(subprocess.run, cli, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wf-approval-cli" in done.stdout  # the CLI says which run it woke
    result = await finished(task, within=30)
    assert script.refunds == ["o-9"] and result.output == "done: refunded o-9"
