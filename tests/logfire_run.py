"""Run by tests/test_telemetry.py in its own process (logfire.configure() sets the global providers,
which a process sets once): a governed agent under Logfire, with only Agent.instrument_all()."""

from __future__ import annotations

import asyncio
import json
import tempfile

import logfire
from chio_sdk.models import ChioScope, Operation, ToolGrant
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_durable.agent import ChioGovernance
from chio_kernel import LocalChioClient


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if any(isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt" for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("done")])
    return ModelResponse(parts=[ToolCallPart("lookup", {"order": "o-1"}), ToolCallPart("delete", {"order": "o-1"})])


def lookup(order: str) -> str:
    return "shipped"


def delete(order: str) -> str:
    return "deleted"


async def main() -> None:
    exporter = InMemorySpanExporter()
    logfire.configure(send_to_logfire=False, console=False, additional_span_processors=[SimpleSpanProcessor(exporter)])
    Agent.instrument_all()  # the one line: pydantic-ai's spans, and the Chio decisions with them
    chio = LocalChioClient(data_dir=tempfile.mkdtemp(prefix="chio-logfire-"))
    cap = chio.kernel.create_capability(subject="agent", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="shop", tool_name="lookup", operations=[Operation.INVOKE]),
    ])).id
    agent = Agent(FunctionModel(model), name="shop", tools=[lookup, delete],
                  capabilities=[ChioGovernance(capability_id=cap, chio_client=chio)])
    await agent.run("check o-1")
    spans = exporter.get_finished_spans()
    names = {s.context.span_id: s.name for s in spans}
    decisions = [
        {"tool": s.attributes["chio.tool_name"], "verdict": s.attributes["chio.verdict"],
         "parent": names.get(s.parent.span_id) if s.parent else None,
         "signed_trace": chio.kernel.get_receipt(s.attributes["chio.receipt_id"]).metadata["trace_id"]
         == format(s.context.trace_id, "032x")}
        for s in spans if s.name == "apply_guardrail chio"
    ]
    print(json.dumps(decisions))
    await chio.close()


asyncio.run(main())
