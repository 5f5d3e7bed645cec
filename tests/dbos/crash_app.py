"""A governed DBOS agent whose tool can hang, for the crash-recovery test.

``python crash_app.py <kernel dir> <dbos url> <workdir>`` starts workflow ``wf-crash``; the tool
writes ``<workdir>/tool-started`` and hangs, and the test kills this process there. The test process
then builds the same agent (:func:`build`) and launches DBOS on the same system database, which
recovers ``wf-crash``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_dbos import ChioDBOSAgent

APP_VERSION = "chio-crash-test"
CAPABILITY = "cap-dbos-crash"


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("refunded")])
    return ModelResponse(parts=[ToolCallPart("refund", {"order": "A-1"})])


def build(chio_client: Any, workdir: Path) -> ChioDBOSAgent[None, str]:
    async def refund(order: str) -> str:
        with (workdir / "tool-runs").open("a") as f:
            f.write(order + "\n")
        if os.environ.get("CHIO_CRASH_HANG") == "1":
            (workdir / "tool-started").write_text("1")
            await asyncio.sleep(3600)  # killed here
        return f"refunded {order}"

    agent = Agent(FunctionModel(model), name="crash-agent", tools=[refund])
    return ChioDBOSAgent(agent, capability_id=CAPABILITY, chio_client=chio_client)


def dbos_config(url: str) -> dict[str, Any]:
    return {"name": "chio-test", "system_database_url": url, "application_version": APP_VERSION, "log_level": "WARNING"}


async def main(kernel_dir: str, url: str, workdir: str) -> None:
    from dbos import DBOS, SetWorkflowID

    from chio_kernel import LocalChioClient

    governed = build(LocalChioClient(data_dir=kernel_dir), Path(workdir))
    DBOS(config=dbos_config(url))  # type: ignore[arg-type]
    DBOS.launch()
    with SetWorkflowID("wf-crash"):
        await governed.run("refund A-1")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
