"""ChioPrefectAgent's kernel evaluations are durable per flow run, on the real Prefect API and kernel.

Each evaluation is a cached Prefect task of the flow run (``chio_prefect._governance``): a retried
or crashed-and-restarted flow run gets its recorded decisions back without asking the kernel again
(counted on the real kernel), a new flow run asks afresh, a kernel that gives no answer fails the
call closed, and each decision is mirrored as exactly one Prefect event.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent
from chio_prefect.events import ReceiptEvent

pytestmark = pytest.mark.prefect

CRASH_SCRIPT = Path(__file__).parent / "_crash" / "crash_agent.py"


def grant(server: str, tool: str = "*", **kw: Any) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE], **kw)


def issue(chio: LocalChioClient, cap_id: str, *grants: ToolGrant) -> str:
    chio.kernel.create_capability(subject="agent-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id)
    return cap_id


class Script:
    """Model: call ``search`` once, then answer. The tool fails its first call."""

    def __init__(self) -> None:
        self.model_calls = 0
        self.tool_calls = 0

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.model_calls += 1
        returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
        if returns:
            return ModelResponse(parts=[TextPart(f"answer: {returns[0].content}")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "durable"})])

    def search(self, query: str) -> str:
        self.tool_calls += 1
        if self.tool_calls == 1:
            raise RuntimeError("search backend hiccup")
        return f"results for {query}"


def counting(chio: LocalChioClient) -> list[str]:
    """The real kernel's evaluations, observed: the tool name of each, in order."""
    asked: list[str] = []
    real = chio.kernel.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[2])
        return real(*args, **kwargs)

    chio.kernel.evaluate = evaluate  # type: ignore[method-assign]
    return asked


@pytest.fixture
def chio(chio_home: Path) -> LocalChioClient:
    return LocalChioClient(data_dir=chio_home)


def test_a_retried_flow_run_reuses_its_receipts_without_asking_the_kernel_again(
    chio: LocalChioClient, captured_events: Any
) -> None:
    # max_invocations=1 on the tool: a second charge for it would be a deny.
    cap = issue(chio, "cap-durable-retry", grant("model"), grant("researcher", "search", max_invocations=1))
    asked = counting(chio)
    script = Script()
    governed = ChioPrefectAgent(
        Agent(FunctionModel(script.model), name="researcher", tools=[script.search]),
        capability_id=cap, chio_client=chio, flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    result = governed.run_sync("find it")

    assert result.output == "answer: results for durable"
    assert script.tool_calls == 2 and script.model_calls == 2  # the first model response came from the cache
    # Attempt 1 asked about the model request and the tool call; attempt 2 got both decisions back
    # from its evaluation tasks and asked only about the NEW call (the second model request).
    assert asked == ["function:model:", "search", "function:model:"]
    stored = [r.id for r in chio.kernel.list_receipts(capability_id=cap)]
    assert governed.receipt_ids_of(result) == stored and len(stored) == 3
    # One event per decision, although attempt 2 observed the first two decisions again.
    events = captured_events.chio()
    assert sorted(e.payload["receipt_id"] for e in events) == sorted(stored)
    assert {str(e.id) for e in events} == {
        str(ReceiptEvent(allowed=True, receipt_id=rid, capability_id=cap, tool_server="", tool_name="",
                         task_name="", timestamp="", stable_id=True).event_id()) for rid in stored
    }


def test_two_flow_runs_each_ask_the_kernel(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-durable-two", grant("model"), grant("researcher", "search"))
    asked = counting(chio)
    governed = ChioPrefectAgent(
        Agent(FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("hi")])), name="researcher"),
        capability_id=cap, chio_client=chio,
    )
    first = governed.run_sync("same")
    chio.kernel.revoke_capability(cap)
    with pytest.raises(PermissionError):
        governed.run_sync("same")  # a new flow run: asked afresh, the revocation is seen
    assert len(asked) == 2 and all(name.startswith("function:") for name in asked)
    assert len(governed.receipt_ids_of(first)) == 1


def test_kernel_down_fails_the_evaluation_task_and_the_call_never_runs(chio: LocalChioClient) -> None:
    cap = issue(chio, "cap-durable-down", grant("model"), grant("researcher", "search"))
    script = Script()

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk I/O error")  # the kernel cannot decide

    chio.kernel.evaluate = down  # type: ignore[method-assign]
    governed = ChioPrefectAgent(
        Agent(FunctionModel(script.model), name="researcher", tools=[script.search]),
        capability_id=cap, chio_client=chio,
    )
    from chio_durable import KernelUnavailable

    with pytest.raises(KernelUnavailable):
        governed.run_sync("find it")
    assert script.model_calls == 0 and script.tool_calls == 0


def test_a_crashed_flow_run_restarted_in_a_new_process_does_not_ask_again_for_decided_calls(
    chio_home: Path, prefect_api: str, tmp_path: Path
) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    cap = issue(chio, "cap-crash", grant("model"), grant("crasher", "search", max_invocations=1))
    chio.kernel.close()
    marker = tmp_path / "crashed"
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),  # both processes read the recorded results
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "",
    }
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")

    def child(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(CRASH_SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)

    crashed = child("start", str(chio_home), str(marker))
    assert crashed.returncode == 17, crashed.stdout + crashed.stderr
    flow_run_id = next(line.split()[1] for line in crashed.stdout.splitlines() if line.startswith("FLOW_RUN "))
    chio = LocalChioClient(data_dir=chio_home)
    before = [r.id for r in chio.kernel.list_receipts(capability_id=cap)]
    assert len(before) == 2  # the model request and the tool call were decided before the crash

    resumed = child("resume", str(chio_home), str(marker), flow_run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = dict(line.split(" ", 1) for line in resumed.stdout.splitlines() if line.split(" ", 1)[0] in
                 {"EVALUATIONS", "OUTPUT"})
    assert lines["OUTPUT"] == "answer: results for crash"
    # Only the second model request (a call not decided before the crash) was asked of the kernel.
    assert lines["EVALUATIONS"] == "1 function:model:"
    after = [r.id for r in chio.kernel.list_receipts(capability_id=cap)]
    assert after[:2] == before and len(after) == 3  # the tool (max_invocations=1) was not charged twice
    chio.kernel.close()
