"""Child process of test_agent_prefect_durable: a governed agent run inside a user flow that CRASHES.

``python crash_agent.py start <chio_home> <marker>``: runs the flow; the tool kills the process
(``os._exit``) on its first call, after its evaluation was recorded. Prints ``FLOW_RUN <id>``.
``python crash_agent.py resume <chio_home> <marker> <flow_run_id>``: runs the SAME flow run again
(as a worker restarting a crashed run does) and prints ``EVALUATIONS <n>`` (the kernel's evaluations
in this process) and ``OUTPUT <text>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.context import FlowRunContext
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent

CAP = "cap-crash"


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
    return ModelResponse(parts=[ToolCallPart("search", {"query": "crash"})])


def build(chio_home: Path, marker: Path) -> tuple[LocalChioClient, Any, list[str]]:
    chio = LocalChioClient(data_dir=chio_home)
    asked: list[str] = []
    real = chio.kernel.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[2])
        return real(*args, **kwargs)

    chio.kernel.evaluate = evaluate  # type: ignore[method-assign]

    def search(query: str) -> str:
        if not marker.exists():
            marker.write_text("crashed once")
            sys.stdout.flush()
            os._exit(17)  # the worker dies mid-run: no Prefect state is reported
        return f"results for {query}"

    agent = Agent(FunctionModel(model), name="crasher", tools=[search])
    governed = ChioPrefectAgent(agent, capability_id=CAP, chio_client=chio)

    @flow(name="crash-agent-flow", persist_result=True)
    async def crash_agent_flow() -> str:
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        print(f"FLOW_RUN {context.flow_run.id}", flush=True)
        result = await governed.run("go")
        return str(result.output)

    return chio, crash_agent_flow, asked


async def resume(flow_obj: Any, flow_run_id: UUID) -> Any:
    from prefect import get_client
    from prefect.flow_engine import run_flow_async
    from prefect.states import Scheduled

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
        flow_run = await client.read_flow_run(flow_run_id)
    return await run_flow_async(flow_obj, flow_run=flow_run)


def main() -> None:
    command, chio_home, marker = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    chio, flow_obj, asked = build(chio_home, marker)
    if command == "start":
        asyncio.run(flow_obj())
        raise SystemExit("the tool should have crashed the process")
    output = asyncio.run(resume(flow_obj, UUID(sys.argv[4])))
    print(f"EVALUATIONS {len(asked)} {','.join(asked)}", flush=True)
    print(f"OUTPUT {output}", flush=True)


if __name__ == "__main__":
    main()
