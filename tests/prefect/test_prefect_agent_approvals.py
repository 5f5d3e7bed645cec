"""ChioPrefectAgent + human approval, on the real Prefect API: a tool call the kernel says
a person must approve pauses the agent's flow run (key = the approval id); a resume only wakes it,
and the tool runs only on the kernel's allow under that approval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent


class Script:
    def __init__(self) -> None:
        self.refunds: list[str] = []

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"]
        if returns:
            return ModelResponse(parts=[TextPart(f"done: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-9"}, tool_call_id="call-refund")])

    def refund(self, order: str) -> str:
        self.refunds.append(order)
        return f"refunded {order}"


def _paused_flow_run(approval_id: str) -> Any:
    """The flow run paused under ``approval_id`` (waits for it; pytest's timeout bounds the test)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        while True:
            for run in client.read_flow_runs(flow_run_filter=paused):
                if run.state is not None and run.state.state_details.pause_key == approval_id:
                    return run.id
            time.sleep(0.1)


def _run_in_thread(governed: ChioPrefectAgent[Any, Any], out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            out["result"] = governed.run_sync("refund order o-9")
        except BaseException as err:  # noqa: BLE001 - read by the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _refund_capability(chio: LocalChioClient) -> str:
    cap: str = chio.kernel.create_capability(subject="agent:support", scope=ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
        ToolGrant(server_id="support", tool_name="refund", operations=[Operation.INVOKE],
                  constraints=[Constraint(type="require_approval_above", value=0)]),
    ])).id
    return cap


def _refund_run_waiting(
    chio: LocalChioClient,
) -> tuple[Script, ChioPrefectAgent[Any, Any], dict[str, Any], threading.Thread, str]:
    """Start the governed support agent (scripted refund) in a thread, until its refund waits for approval.

    Returns ``(script, governed, out, thread, approval_id)``; ``out`` gets the run's result or error.
    """
    cap = _refund_capability(chio)
    script = Script()
    governed = ChioPrefectAgent(
        Agent(FunctionModel(script.model), name="support", tools=[script.refund]), capability_id=cap, chio_client=chio
    )
    out: dict[str, Any] = {}
    thread = _run_in_thread(governed, out)
    while not (pending := chio.kernel.list_approvals("pending")):
        time.sleep(0.1)
    return script, governed, out, thread, str(pending[0]["id"])


@pytest.fixture
def waker() -> Iterator[Callable[[Any], None]]:
    """Install an in-process Prefect waker (it takes precedence over the ``chio.approval_wakers`` entry point)."""
    from chio_kernel._wakers import register_waker, unregister_waker

    yield lambda fn: register_waker("prefect", fn)
    unregister_waker("prefect")


def test_agent_tool_pauses_the_flow_run_forged_resume_runs_nothing_approve_runs_once(
    chio_home: Path, waker: Callable[[Any], None]
) -> None:
    from prefect.flow_runs import resume_flow_run

    waker(lambda wake, outcome: "not woken: this test resumes the flow run by hand")
    chio = LocalChioClient(data_dir=chio_home)
    script, governed, out, thread, approval_id = _refund_run_waiting(chio)
    flow_run_id = _paused_flow_run(approval_id)
    assert script.refunds == []

    resume_flow_run(flow_run_id, run_input={"decision": "approve", "reason": "forged"})  # no kernel resolution
    assert _paused_flow_run(f"{approval_id}-2") == flow_run_id  # asked the kernel again: still pending
    assert script.refunds == []

    chio.kernel.respond_approval(approval_id, "approved", "ok")
    resume_flow_run(flow_run_id, run_input={"decision": "approve"})
    thread.join()
    assert "error" not in out, out.get("error")
    assert out["result"].output == "done: refunded o-9"
    assert script.refunds == ["o-9"]
    (allowed,) = [r for r in governed.receipts_of(out["result"]) if r.call.tool_name == "refund" and r.allowed]
    assert allowed.evaluation.approval_id == approval_id
    chio.kernel.close()


def _counting_evaluations(chio: LocalChioClient) -> list[str]:
    """Count the kernel's evaluations (the real kernel, observed): one entry per call, its tool."""
    seen: list[str] = []
    real = chio.kernel.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[2])
        return real(*args, **kwargs)

    chio.kernel.evaluate = evaluate  # type: ignore[method-assign]
    return seen


def test_an_approval_answered_in_the_kernel_alone_resumes_the_paused_run_which_calls_the_tool_once(
    chio_home: Path, waker: Callable[[Any], None]
) -> None:
    from chio_prefect._wake import wake

    waker(wake)  # what the chio.approval_wakers entry point "prefect" provides, installed in-process
    chio = LocalChioClient(data_dir=chio_home)
    asked = _counting_evaluations(chio)
    script, governed, out, thread, approval_id = _refund_run_waiting(chio)
    flow_run_id = _paused_flow_run(approval_id)

    chio.kernel.respond_approval(approval_id, "approved", "ok")  # the person's one action
    thread.join(timeout=60)

    assert not thread.is_alive(), "the kernel's answer did not resume the paused flow run"
    assert "error" not in out, out.get("error")
    assert out["result"].output == "done: refunded o-9"
    assert script.refunds == ["o-9"]
    (report,) = chio.kernel.last_wake_report(approval_id) or [None]
    assert report is not None and report["ok"] and str(flow_run_id) in report["message"], report
    # model, refund (pending), refund under the approval (allow), model: each asked once
    assert asked == ["function:model:", "refund", "refund", "function:model:"]
    (allowed,) = [r for r in governed.receipts_of(out["result"]) if r.call.tool_name == "refund" and r.allowed]
    assert allowed.evaluation.approval_id == approval_id
    chio.kernel.close()


def test_an_approval_denied_in_the_kernel_alone_resumes_the_run_and_the_tool_never_runs(
    chio_home: Path, waker: Callable[[Any], None]
) -> None:
    from chio_prefect._wake import wake

    waker(wake)
    chio = LocalChioClient(data_dir=chio_home)
    script, governed, out, thread, approval_id = _refund_run_waiting(chio)
    _paused_flow_run(approval_id)

    chio.kernel.respond_approval(approval_id, "denied", "not this one")
    thread.join(timeout=60)

    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    assert script.refunds == []  # the form said "approve" (wake up); the kernel's deny decided
    assert out["result"].output.startswith("done: ")
    refunds = [r for r in governed.receipts_of(out["result"]) if r.call.tool_name == "refund"]
    assert [r.evaluation.pending for r in refunds] == [True, False] and not refunds[-1].allowed
    chio.kernel.close()


def _prefect_waker_site(root: Path) -> Path:
    """A distribution declaring the ``chio.approval_wakers`` entry points of pyproject.toml (as an
    install of chio-durable does), for a CLI process of a venv installed before they existed."""
    from approval_wakers_site import approval_wakers_site, declared_wakers

    assert declared_wakers()["prefect"] == "chio_prefect._wake:wake"
    return approval_wakers_site(root)


def test_the_cli_of_another_process_answers_and_its_waker_resumes_the_run_through_the_prefect_server(
    chio_home: Path, prefect_api: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys
    from importlib.metadata import entry_points

    chio = LocalChioClient(data_dir=chio_home)
    script, governed, out, thread, approval_id = _refund_run_waiting(chio)
    flow_run_id = _paused_flow_run(approval_id)

    src = str(Path(__file__).resolve().parents[2] / "src")
    paths = [src, os.environ.get("PYTHONPATH", "")]
    if not any(ep.name == "prefect" for ep in entry_points(group="chio.approval_wakers")):
        paths.insert(1, str(_prefect_waker_site(tmp_path / "site")))
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE", "PREFECT_API_URL"}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["COLUMNS"] = "250"  # one line per wake, unwrapped
    done = subprocess.run(
        [sys.executable, "-m", "chio_kernel.cli", "approvals", "approve", approval_id, "--reason", "ok",
         "--data-dir", str(chio_home)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed Prefect flow run {flow_run_id} at {prefect_api}" in done.stdout, done.stdout
    thread.join(timeout=60)
    assert not thread.is_alive(), "the CLI's answer did not resume the paused flow run"
    assert "error" not in out, out.get("error")
    assert script.refunds == ["o-9"]  # exactly once, under the approval
    chio.kernel.close()


async def test_an_approval_answered_before_the_wake_is_registered_does_not_leave_the_run_paused(
    chio_home: Path,
) -> None:
    # The person may answer before the run registers its wake: that answer wakes nobody, so the run
    # must see it before pausing and ask the kernel again at once (here outside a flow run, where a
    # pause would fail: the old waiter returned the pending answer unchanged).
    from chio_durable import GovernedCall, as_transport
    from chio_prefect._approvals import approval_answered, wait_for_approval

    chio = LocalChioClient(data_dir=chio_home)
    cap = _refund_capability(chio)
    transport = as_transport(chio)
    call = GovernedCall("tool", "support", "refund", {"order": "o-1"})
    pending = await transport.evaluate(call, capability_id=cap, idempotency_key="k-early")
    assert pending.pending and pending.approval_id
    assert not await approval_answered(chio, pending.approval_id)
    await chio.respond_approval(pending.approval_id, "approved", "answered early")
    assert await approval_answered(chio, pending.approval_id)

    async def reevaluate(approval_id: str) -> Any:
        return await transport.evaluate(call, capability_id=cap, idempotency_key="k-early", approval_id=approval_id)

    async def answered_already(p: Any) -> bool:
        return await approval_answered(chio, p.approval_id)

    final = await wait_for_approval(pending, label="support/refund", reevaluate=reevaluate,
                                    observe=lambda _: None, before_pause=answered_already)
    assert final.allowed and final.approval_id == pending.approval_id
