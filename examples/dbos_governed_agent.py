"""A governed, durable Pydantic AI agent on DBOS, in one line: ``ChioDBOSAgent``.

Offline: the model is a *scripted* ``FunctionModel`` (no LLM, no API key) that looks up the weather
of two cities, one allowed by the capability and one not, then answers. DBOS runs on its embedded
SQLite system database in a temporary directory (no server); the Chio kernel is embedded too.

What it shows: every model request and tool call evaluated by the kernel first, as a DBOS step of
the workflow (``<agent>__capability__chio.evaluate``); the denied lookup told to the model; the
receipts of the run as a table; the steps DBOS recorded.

    python examples/dbos_governed_agent.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from dbos import DBOS, SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from rich.console import Console

from chio_dbos import ChioDBOSAgent
from chio_durable.agent import records_table
from chio_kernel import LocalChioClient


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Asks for the weather of Paris and Mordor, then answers with what it was told."""
    returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    if returns:
        return ModelResponse(parts=[TextPart(" | ".join(str(p.content)[:60] for p in returns))])
    return ModelResponse(parts=[
        ToolCallPart("weather", {"city": "Paris"}, tool_call_id="call-paris"),
        ToolCallPart("weather", {"city": "Mordor"}, tool_call_id="call-mordor"),
    ])


def weather(city: str) -> str:
    """The weather of a city (a stand-in for a real API)."""
    return f"{city}: sunny"


async def run(data_dir: Path, console: Console) -> int:
    chio = LocalChioClient(data_dir=data_dir / "kernel")
    cap = chio.kernel.create_capability(subject="agent:forecaster", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="forecaster", tool_name="weather", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="regex_match", value="^(Paris|London)$")]),
    ])).id
    url = f"sqlite:///{data_dir / 'dbos.sqlite'}"
    agent = Agent(FunctionModel(scripted_model), name="forecaster", tools=[weather])
    governed = ChioDBOSAgent(agent, capability_id=cap, chio_client=chio, system_database_url=url)

    DBOS(config={"name": "chio-example", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        with SetWorkflowID("forecast-1"):
            result = await governed.run("Weather in Paris and Mordor?")
        console.print(f"[bold]output:[/bold] {result.output}")
        console.print(records_table(governed.receipts_of(result), title="receipts of workflow forecast-1"))
        steps = await DBOS.list_workflow_steps_async("forecast-1")
        console.print("DBOS steps: " + ", ".join(s["function_name"].split("__", 1)[-1] for s in steps))
        verdicts = [r.allowed for r in governed.receipts_of(result)]
        ok = chio.kernel.verify_chain().ok and True in verdicts and False in verdicts
    finally:
        DBOS.destroy()
        await chio.close()
    console.print("receipt chain verified" if ok else "[red]unexpected result[/red]")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the example in a temporary directory; returns the exit code."""
    logging.getLogger("dbos").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="chio-dbos-example-") as tmp:
        return asyncio.run(run(Path(tmp), console or Console(width=120)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
