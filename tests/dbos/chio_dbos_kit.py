"""Helpers of the DBOS tests: grants, capabilities, the recorded steps of a workflow."""

from __future__ import annotations

from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import LocalChioClient


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


def issue(chio: LocalChioClient, cap: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="dbos-test", scope=ChioScope(grants=list(grants)), capability_id=cap)
    return cap


async def step_names(workflow_id: str) -> list[str]:
    from dbos import DBOS

    return [step["function_name"] for step in await DBOS.list_workflow_steps_async(workflow_id)]


async def recorded_evaluations(workflow_id: str) -> list[Any]:
    """The ``Evaluation`` each recorded ``chio.evaluate`` step returned, in step order."""
    from dbos import DBOS

    out = []
    for step in await DBOS.list_workflow_steps_async(workflow_id):
        if step["function_name"].endswith("__capability__chio.evaluate"):
            out.append(step["output"].value)
    return out
