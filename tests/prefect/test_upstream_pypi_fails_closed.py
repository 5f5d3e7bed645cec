"""The real PyPI ``chio-prefect==0.1.0``, unchanged, and a stock ``chio_sdk.ChioClient``, against our real
sidecar and a real Prefect API: on a grant whose every call needs a person (``require_approval_above``
threshold 0) the task body NEVER runs. Both check only ``receipt.is_denied``; the sidecar answers a
client that did not say it understands ``pending_approval`` with a signed deny, and still records the
approval. Then a person answers, and a re-run through OUR ``@chio_task`` runs the body exactly once.

Upstream is installed with ``pip install --no-deps --target`` into a temporary directory (never into the
shared environment, where our ``chio_prefect`` lives) and run in a subprocess with that directory
first on ``sys.path``. Getting the wheel needs the package index; without it the test skips saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

from chio_kernel import Kernel, SidecarClient
from chio_kernel.testing import SidecarProcess

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

SRC = Path(__file__).resolve().parents[2] / "src"
UPSTREAM = "chio-prefect==0.1.0"

# Upstream's README usage: a standalone governed task on a pre-minted capability, default client.
UPSTREAM_RUN = r'''
import json, sys
target, url, cap, marker = sys.argv[1:5]
import chio_prefect
assert chio_prefect.__file__.startswith(target), chio_prefect.__file__  # upstream's, not ours
from chio_prefect import chio_task
from prefect import flow

@chio_task(capability_id=cap, tool_server="shop", tool_name="refund", sidecar_url=url)
def refund(order: str) -> str:
    with open(marker, "a") as fh:
        fh.write("upstream ran " + order + "\n")
    return "refunded " + order

@flow
def pipeline() -> str:
    try:
        return refund("A-17")
    except PermissionError as exc:
        return "denied: " + str(exc)

print(json.dumps({"result": pipeline()}))
'''


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PyPI's chio-prefect 0.1.0 in a directory of its own (nothing else installed there)."""
    where = tmp_path_factory.mktemp("upstream")
    wheels = where / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", UPSTREAM, "-d", str(wheels)],
                         capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        pytest.skip(f"cannot download {UPSTREAM} from the package index (pip download: {got.stderr.strip()[-300:]})")
    target = where / "site"
    wheel = next(wheels.glob("chio_prefect-0.1.0-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return target


def _scope() -> ChioScope:
    return ChioScope(grants=[ToolGrant(
        server_id="shop", tool_name="refund", operations=[Operation.INVOKE],
        constraints=[Constraint(type="require_approval_above", value=0)],  # every refund needs a person
    )])


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[SidecarProcess, Kernel, str]]:
    data = tmp_path / "kernel"
    kernel = Kernel(data)
    cap = kernel.create_capability(subject="agent:refunds", scope=_scope(), capability_id="cap-refunds").id
    with SidecarProcess(data) as proc:
        yield proc, kernel, cap
    kernel.close()


def _run_upstream(target: Path, url: str, cap: str, marker: Path, prefect_api: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=f"{target}{os.pathsep}{SRC}", PREFECT_API_URL=prefect_api)
    proc = subprocess.run([sys.executable, "-c", UPSTREAM_RUN, str(target), url, cap, str(marker)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _ours_runs_after_an_answer(kernel: Kernel, url: str, cap: str, marker: Path) -> None:
    """A re-run through OUR @chio_task (our layer, over the same sidecar): it pauses on its own pending
    approval; a person approves it in the kernel and resumes; the body runs exactly once."""
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    from chio_prefect import chio_flow, chio_task

    state: dict[str, Any] = {}

    @chio_task(tool_server="shop")
    def refund(order: str) -> str:
        with marker.open("a") as fh:
            fh.write(f"ours ran {order}\n")
        return f"refunded {order}"

    @chio_flow(scope=_scope(), capability_id=cap, chio_client=SidecarClient(url, timeout=30))
    def refund_flow(order: str) -> str:
        from prefect.runtime import flow_run

        state["flow_run_id"] = uuid.UUID(flow_run.id)
        return refund(order)

    def run() -> None:
        try:
            state["result"] = refund_flow("A-17")
        except BaseException as err:  # noqa: BLE001 - asserted below
            state["error"] = err

    before = {a["id"] for a in kernel.list_approvals("pending")}
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not (new := [a for a in kernel.list_approvals("pending") if a["id"] not in before]):
        assert "error" not in state, state
        time.sleep(0.1)
    (approval,) = new
    with get_client(sync_client=True) as client:
        while True:  # paused under the approval's id
            run_id = state.get("flow_run_id")
            flow_state = client.read_flow_run(run_id).state if run_id else None
            if flow_state is not None and flow_state.is_paused():
                break
            time.sleep(0.1)
    assert marker.read_text() == ""  # still nothing ran
    kernel.respond_approval(approval["id"], "approved", "checked the order")
    resume_flow_run(state["flow_run_id"], run_input={"decision": "approve"})
    thread.join(timeout=300)
    assert "error" not in state and state["result"] == "refunded A-17", state
    assert marker.read_text() == "ours ran A-17\n"  # exactly once


def test_pypi_chio_prefect_never_runs_a_call_waiting_for_a_person(
    upstream: Path, sidecar: tuple[SidecarProcess, Kernel, str], prefect_api: str, tmp_path: Path
) -> None:
    proc, kernel, cap = sidecar
    marker = tmp_path / "ran.txt"
    marker.write_text("")
    out = _run_upstream(upstream, proc.url, cap, marker, prefect_api)
    assert marker.read_text() == ""  # the task body never ran
    assert out["result"].startswith("denied: ") and "waits for a person" in out["result"], out
    (approval,) = kernel.list_approvals("pending")  # the approval is listed, for a person to answer
    assert approval["tool_name"] == "refund" and approval["parameters"] == {"args": ["A-17"], "kwargs": {}}
    denies = [r for r in kernel.list_receipts(capability_id=cap) if r.decision.verdict == "deny"]
    assert [d.decision.guard for d in denies] == ["approval"] and kernel.verify_chain().ok
    assert denies[0].metadata["approval_id"] == approval["id"]  # type: ignore[index]

    # the same call again from upstream after a person approved: still never runs (it cannot send
    # the approval id); a re-run through our @chio_task does, once
    kernel.respond_approval(approval["id"], "approved", "ok")
    again = _run_upstream(upstream, proc.url, cap, marker, prefect_api)
    assert again["result"].startswith("denied: ") and marker.read_text() == ""
    _ours_runs_after_an_answer(kernel, proc.url, cap, marker)
    assert kernel.verify_chain().ok


def test_a_stock_chio_client_checking_only_is_denied_never_runs_it(
    sidecar: tuple[SidecarProcess, Kernel, str], tmp_path: Path
) -> None:
    proc, kernel, cap = sidecar
    marker = tmp_path / "ran.txt"
    marker.write_text("")

    async def stock_pipeline() -> None:  # what upstream chio-temporal's interceptor does too
        async with ChioClient(proc.url, timeout=30) as client:
            receipt = await client.evaluate_tool_call(capability_id=cap, tool_server="shop", tool_name="refund",
                                                      parameters={"order": "B-2"})
            if receipt.is_denied:
                return
            marker.write_text("stock ran B-2\n")

    asyncio.run(stock_pipeline())
    assert marker.read_text() == ""
    (approval,) = kernel.list_approvals("pending")
    assert approval["parameters"] == {"order": "B-2"}
    _ours_runs_after_an_answer(kernel, proc.url, cap, marker)
