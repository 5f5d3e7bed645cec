"""A governed agent asks to refund, waits for a person, and goes on: human approval as a kernel verdict.

Offline: the embedded Chio kernel in a temp dir and a SCRIPTED model (a ``FunctionModel``, not an LLM)
that looks an order up, asks to refund it, then answers. The capability grants the model and
``lookup_order`` freely; ``refund_order`` carries upstream Chio's constraint
``{"type": "require_approval_above", "value": {"threshold_units": 0}}``: every refund (a call that
declares no cost counts as 0 units) needs a person.

    python examples/approval_refund.py                  # plain pydantic-ai agent: deferred approval
    python examples/approval_refund.py --engine prefect # ChioPrefectAgent: the flow run pauses
    python examples/approval_refund.py --wait-for-person --data-dir ./refunds
        # waits for YOU: in another shell run the printed `chio-durable approvals approve ...`

What happens: the kernel answers the refund with a signed ``pending_approval`` receipt (nothing
charged, the tool does not run). The example prints the exact command a person runs, then plays the
person: it approves through the kernel's operator path (what ``chio-durable approvals approve`` does).
With ``--wait-for-person`` it does not: it waits (``--wait-timeout``, default 600 s) until someone
answers in the kernel, e.g. with that command in another shell on the same ``--data-dir``; a deny
there ends the run with the refund denied.
Plain agent: the next run passes ``DeferredToolResults``. Prefect: that one answer also resumes the
paused flow run (the kernel calls the Prefect waker of the wake the run registered). The refund is
evaluated again with the approval id and runs once, under the kernel's allow (docs/approvals.md).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from rich.console import Console

from chio_durable.agent import ChioGovernance, approval_results, records_table
from chio_kernel import LocalChioClient

REFUNDED: list[str] = []


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Look the order up, ask to refund it, then answer with what the tools said (clearly not an LLM)."""
    results = [
        str(p.content) for m in messages for p in getattr(m, "parts", ())
        if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"
    ]
    if not results:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "o-1042"})])
    if len(results) == 1:
        return ModelResponse(parts=[ToolCallPart("refund_order", {"order_id": "o-1042", "amount_usd": 180})])
    return ModelResponse(parts=[TextPart(" / ".join(results))])


def lookup_order(order_id: str) -> str:
    """Look up an order."""
    return f"order {order_id}: delivered damaged, paid 180 USD"


def refund_order(order_id: str, amount_usd: int) -> str:
    """Refund an order (money leaves: a person must approve)."""
    REFUNDED.append(order_id)
    return f"refunded {amount_usd} USD on {order_id}"


def refund_scope() -> dict[str, Any]:
    """The model and lookup freely; every refund waits for a person (upstream's constraint shape)."""
    return {"grants": [
        {"server_id": "model", "tool_name": "*", "operations": ["Invoke"]},
        {"server_id": "support", "tool_name": "lookup_order", "operations": ["Invoke"]},
        {"server_id": "support", "tool_name": "refund_order", "operations": ["Invoke"],
         "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}]},
    ]}


def build_agent() -> Agent[None, str]:
    """The plain agent (the durable wrappers add governance themselves)."""
    return Agent(FunctionModel(scripted_model), name="support", tools=[lookup_order, refund_order])


WAIT_FOR_PERSON: float | None = None
"""Seconds to wait for a real person's answer (``--wait-for-person``); None: the example answers itself."""


def _person_approves(chio: LocalChioClient, data_dir: Path, console: Console) -> str:
    (approval,) = chio.kernel.list_approvals("pending")
    console.print(f"[bold yellow]waiting for a person[/]: {approval['summary']}")
    console.print("a person runs:", highlight=False)
    console.print(f"  chio-durable approvals approve {approval['id']} --data-dir {data_dir} --reason 'damaged parcel'",
                  highlight=False, markup=False, soft_wrap=True)
    if WAIT_FOR_PERSON is not None:
        status = _wait_for_answer(chio, str(approval["id"]), WAIT_FOR_PERSON)
        console.print(f"a person answered in the kernel: {status}", highlight=False)
        return str(approval["id"])
    # ... and here the example plays that person, through the same operator path:
    receipt = chio.kernel.respond_approval(approval["id"], "approved", "damaged parcel")
    console.print(f"approved in the kernel (resolution receipt {receipt.id})", highlight=False)
    return str(approval["id"])


def _wait_for_answer(chio: LocalChioClient, approval_id: str, timeout: float) -> str:
    """Poll the kernel's store until the approval is answered (by another process: the CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        approval = chio.kernel.get_approval(approval_id)
        if approval is not None and approval["status"] != "pending":
            return str(approval["status"])
        time.sleep(0.5)
    raise SystemExit(f"nobody answered approval {approval_id} within {timeout:.0f} s; run the command above")


async def run_plain(chio: LocalChioClient, capability_id: str, data_dir: Path, console: Console) -> str:
    governance = ChioGovernance(capability_id=capability_id, chio_client=chio)
    agent = Agent(FunctionModel(scripted_model), name="support", tools=[lookup_order, refund_order],
                  output_type=[str, DeferredToolRequests], capabilities=[governance])
    first = await agent.run("Customer says order o-1042 arrived broken.")
    assert isinstance(first.output, DeferredToolRequests), first.output
    console.print(f"the run deferred {len(first.output.approvals)} tool call(s) for approval; refunded so far: {REFUNDED}")
    _person_approves(chio, data_dir, console)
    # ToolApproved only wakes the call: it runs on the kernel's allow under the approval id
    done = await agent.run(message_history=first.all_messages(), deferred_tool_results=approval_results(first.output))
    console.print(records_table(governance.receipts_of(first) + governance.receipts_of(done)))
    return str(done.output)


def run_prefect(chio: LocalChioClient, capability_id: str, data_dir: Path, console: Console) -> str:
    from chio_prefect import ChioPrefectAgent, quiet_expected_denials, use_local_prefect_defaults

    use_local_prefect_defaults()
    quiet_expected_denials()  # a deny below is expected: one line, not a traceback
    governed = ChioPrefectAgent(build_agent(), capability_id=capability_id, chio_client=chio)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = governed.run_sync("Customer says order o-1042 arrived broken.")
        except BaseException as err:  # noqa: BLE001 - reported below
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not chio.kernel.list_approvals("pending"):  # the flow run is about to pause
        if not thread.is_alive():
            raise RuntimeError(f"the run ended without waiting: {out}")
        time.sleep(0.2)
    approval_id = _person_approves(chio, data_dir, console)
    # One action for the person: the kernel's answer also resumes the paused flow run (the run
    # registered a wake on its approval; the kernel called the Prefect waker after the commit).
    console.print(f"the kernel's answer to {approval_id} resumes the paused flow run; it asks the kernel again",
                  highlight=False)
    if WAIT_FOR_PERSON is not None:  # answered in another process, which may not reach this Prefect API
        _resume_if_paused(approval_id)
    thread.join(timeout=180)
    if thread.is_alive():
        raise RuntimeError("the flow run did not resume within 180 s of the kernel's answer")
    if "error" in out:
        raise out["error"]
    console.print(records_table(governed.receipts_of(out["result"])))
    return str(out["result"].output)


def _resume_if_paused(approval_id: str) -> None:
    """Resume the flow run paused on ``approval_id`` (a wake-up only: the kernel's answer decides)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=paused):
            if run.state is not None and str(run.state.state_details.pause_key or "").startswith(approval_id):
                try:
                    resume_flow_run(run.id, run_input={"decision": "approve"})
                except Exception:  # noqa: BLE001 - resumed meanwhile by the kernel's waker
                    pass


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["plain", "prefect"], default="plain")
    parser.add_argument("--data-dir", type=Path, default=None, help="kernel data directory (default: a temp dir)")
    parser.add_argument("--wait-for-person", action="store_true",
                        help="wait for a real answer (chio-durable approvals approve/deny in another shell)")
    parser.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for that answer")
    args = parser.parse_args(argv)
    global WAIT_FOR_PERSON
    WAIT_FOR_PERSON = args.wait_timeout if args.wait_for_person else None
    console = console or Console()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="chio-approval-"))
    chio = LocalChioClient(data_dir=data_dir)
    capability_id = chio.kernel.create_capability("agent:support", refund_scope()).id
    REFUNDED.clear()
    if args.engine == "plain":
        answer = asyncio.run(run_plain(chio, capability_id, data_dir, console))
    else:
        answer = run_prefect(chio, capability_id, data_dir, console)
    console.print(f"[bold]answer[/]: {answer}", highlight=False)
    verdicts = [r.decision.verdict for r in chio.kernel.list_receipts(capability_id=capability_id)]
    console.print(f"verdicts in the chain: {verdicts}; chain verifies: {chio.kernel.verify_chain().ok}", highlight=False)
    chio.kernel.close()
    denied_by_person = WAIT_FOR_PERSON is not None and not REFUNDED  # a real person may say no: not a failure
    return 0 if REFUNDED == ["o-1042"] or denied_by_person else 1


if __name__ == "__main__":
    raise SystemExit(main())
