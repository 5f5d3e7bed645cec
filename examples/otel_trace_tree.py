"""Every Chio decision in the trace: run a governed agent and print its OpenTelemetry trace tree.

    pip install 'chio-durable[otel]'
    python examples/otel_trace_tree.py

No API key, no server: a scripted model (pydantic-ai's ``FunctionModel``) on the embedded kernel,
spans kept in memory by the OpenTelemetry SDK (with ``logfire.configure()`` or an OTLP exporter
instead, the same spans go to Logfire or any OTel backend). The run covers an allow, a deny, a
call waiting for a person's approval (approved, then allowed), and a budget settle; each decision is
an ``apply_guardrail chio`` span under the operation it governs, its receipt signs the span's ids.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from chio_sdk.models import ChioScope, Constraint, MonetaryAmount, Operation, ToolGrant
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent, DeferredToolRequests, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_durable.agent import COST_METADATA_KEY, ChioGovernance, approval_results
from chio_kernel import LocalChioClient


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted model (not an LLM): three tool calls, then a summary."""
    if any(isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt" for p in messages[-1].parts):
        return ModelResponse(parts=[TextPart("done")])
    return ModelResponse(parts=[
        ToolCallPart("lookup", {"order": "o-1"}, tool_call_id="c-lookup"),
        ToolCallPart("delete", {"order": "o-1"}, tool_call_id="c-delete"),
        ToolCallPart("refund", {"order": "o-1", "amount": 120}, tool_call_id="c-refund"),
    ])


def lookup(order: str) -> str:
    return f"{order}: shipped"


def delete(order: str) -> str:
    return "deleted"


def refund(order: str, amount: int) -> str:
    return f"refunded {amount}"


def print_tree(spans: list[ReadableSpan]) -> None:
    """One line per span, children indented; decisions with verdict, guard and receipt id."""
    ids = {s.context.span_id for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        children.setdefault(parent, []).append(s)

    def walk(parent: int | None, depth: int) -> None:
        for s in children.get(parent, []):
            a: Any = s.attributes or {}
            line = "  " * depth + s.name
            if "chio.verdict" in a:
                guard = f" ({a['chio.guard']})" if a.get("chio.guard") else ""
                line += f"  -> {a['chio.verdict']}{guard}  receipt {a.get('chio.receipt_id')}"
            if s.links:
                line += f"  [linked to {len(s.links)} earlier span]"
            print(line)
            walk(s.context.span_id, depth + 1)

    walk(None, 0)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # what logfire.configure() does for you

    chio = LocalChioClient(data_dir=tempfile.mkdtemp(prefix="chio-otel-"))
    cap = chio.kernel.create_capability(subject="agent:support", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="support", tool_name="lookup", operations=[Operation.INVOKE],
                  max_total_cost=MonetaryAmount(units=500, currency="USD")),
        ToolGrant(server_id="support", tool_name="refund", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="require_approval_above", value=0)]),
    ])).id
    priced = Tool(lookup, metadata={COST_METADATA_KEY: MonetaryAmount(units=25, currency="USD")})
    agent = Agent(
        FunctionModel(model), name="support", tools=[priced, delete, refund], output_type=[str, DeferredToolRequests],
        capabilities=[ChioGovernance(capability_id=cap, chio_client=chio, instrument=True)],
    )
    agent.instrument = True  # pydantic-ai's own spans: the agent run, chat, execute_tool

    first = await agent.run("look after order o-1")
    assert isinstance(first.output, DeferredToolRequests)
    approval_id = first.output.metadata["c-refund"]["chio_approval"]["approval_id"]
    chio.kernel.respond_approval(approval_id, "approved", "refund ok")  # a person answers
    await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(first.output))

    print_tree(list(exporter.get_finished_spans()))
    span = next(s for s in exporter.get_finished_spans() if s.attributes and s.attributes.get("chio.verdict") == "deny")
    receipt = chio.kernel.get_receipt(str(span.attributes["chio.receipt_id"]))  # type: ignore[index]
    assert receipt is not None and receipt.metadata is not None
    print(f"\nthe deny's receipt signs its trace: trace_id {receipt.metadata['trace_id']}, "
          f"span_id {receipt.metadata['span_id']}; verifies: {chio.kernel.verify_receipt(receipt)}")
    await chio.close()


if __name__ == "__main__":
    asyncio.run(main())
