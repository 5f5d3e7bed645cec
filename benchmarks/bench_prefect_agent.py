"""Governed vs bare durable agent on Prefect: what Chio governance adds to an agent run.

Both agents run the same scripted run (offline ``FunctionModel``): model request -> tool call ->
model request, i.e. 3 guarded calls, each a Prefect task. The bare agent is a plain ``Agent`` with
pydantic-ai's ``PrefectDurability``; the governed one is ``ChioPrefectAgent`` over the same agent
with the embedded kernel (``LocalChioClient``): every call evaluated, signed receipt stored, event
emitted. Both run inside one Prefect flow per run, interleaved, in one process, against a local
ephemeral Prefect API (SQLite). The governed agent runs under what the integration uses: an
attenuated child capability (budgeted grants, a ``max_length`` constraint on the tool's arguments)
and the idempotency key ``ChioGovernance`` makes for every call.

Governance per guarded call is measured directly (``bench_agent_shared``): every kernel call of the
hook is timed, and so is the governance body of ``ChioGovernance.evaluate_call`` (key, kernel call,
record, Prefect event), i.e. ``evaluate_call`` minus the Prefect task the evaluation runs in; both
are printed beside the kernel floor (Ed25519 sign + one SQLite WAL commit) sampled between the runs
in the same process, with their goals. The Prefect task of the durable evaluation (each kernel
evaluation is a cached task of the flow run, so a retried run gets the decision back without asking
again: ``chio_prefect._governance``) is reported separately: its wall time minus the kernel call.

    python benchmarks/bench_prefect_agent.py [--runs 25]
    python benchmarks/bench_prefect_agent.py --quick      # 8 runs, 1 warm-up

Goals: governed / bare median <= 1.10x; governance per guarded call <= 3x the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _setup_env() -> None:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="chio-bench-prefect-"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here: no telemetry error line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="measured runs per variant (default 25; 8 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a busy machine")
    args = parser.parse_args()
    args.runs = args.runs or (8 if args.quick else 25)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    _setup_env()

    from chio_sdk.models import Operation, ToolGrant
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.prefect import PrefectDurability
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from rich.console import Console
    from rich.table import Table

    from chio_kernel import LocalChioClient
    from chio_prefect import ChioPrefectAgent

    from bench_agent_shared import Floor, attenuated_capability, print_governance, time_kernel_calls

    def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "chio"})])

    def search(query: str) -> str:
        return f"results for {query}"

    console = Console(width=150)
    with prefect_test_harness(server_startup_timeout=180), tempfile.TemporaryDirectory() as home:
        chio = LocalChioClient(data_dir=home)
        grants = [
            ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
            ToolGrant(server_id="bench", tool_name="search", operations=[Operation.INVOKE]),
        ]
        cap_id = attenuated_capability(chio.kernel, grants, subject="bench")
        twin_id = attenuated_capability(chio.kernel, grants, subject="bench")  # the floor's hot-loop row

        bare = Agent(FunctionModel(scripted_model), name="bench", tools=[search], capabilities=[PrefectDurability()])
        governed = ChioPrefectAgent(
            Agent(FunctionModel(scripted_model), name="bench", tools=[search]),
            capability_id=cap_id,
            chio_client=chio,
        )
        kernel_calls = time_kernel_calls(governed.governance)
        path_calls: list[float] = []
        real_evaluate_call = governed.governance.evaluate_call

        async def timed_evaluate_call(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return await real_evaluate_call(*a, **kw)
            finally:
                path_calls.append(time.perf_counter() - start)

        governed.governance.evaluate_call = timed_evaluate_call  # type: ignore[method-assign]
        # The durable op: each evaluation is a Prefect task of the flow run (chio_prefect._governance).
        # Its wall time minus the kernel call inside it is the Prefect task overhead, reported apart.
        op_calls: list[float] = []
        real_evaluate_op = governed.governance.evaluate_in_kernel

        async def timed_evaluate_op(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return await real_evaluate_op(*a, **kw)
            finally:
                op_calls.append(time.perf_counter() - start)

        governed.governance.evaluate_in_kernel = timed_evaluate_op  # type: ignore[method-assign]

        @flow(name="bench-bare")
        async def bare_run() -> Any:
            return await bare.run("go")

        @flow(name="bench-governed")
        async def governed_run() -> Any:
            return await governed.run("go")

        async def timed(fn: Any) -> float:
            start = time.perf_counter()
            result = await fn()
            elapsed = time.perf_counter() - start
            assert result.output == "done"
            return elapsed

        async def measure() -> tuple[list[float], list[float], int, Floor]:
            for _ in range(args.warmup):
                await timed(bare_run)
                await timed(governed_run)
            floor = Floor(Path(home), chio.kernel, cap_id, (twin_id, "bench", "search", {"query": "chio"}))
            kernel_calls.clear()
            path_calls.clear()
            op_calls.clear()
            before = len(chio.kernel.list_receipts(capability_id=cap_id))
            bare_t: list[float] = []
            gov_t: list[float] = []
            for i in range(args.runs):  # interleaved, alternating who goes first
                pair = (bare_run, governed_run) if i % 2 == 0 else (governed_run, bare_run)
                for fn in pair:
                    (bare_t if fn is bare_run else gov_t).append(await timed(fn))
                floor.sample()
            return bare_t, gov_t, len(chio.kernel.list_receipts(capability_id=cap_id)) - before, floor

        bare_t, gov_t, receipts, floor = asyncio.run(measure())

    bare_med, gov_med = statistics.median(bare_t), statistics.median(gov_t)
    table = Table(title=f"Governed vs bare durable agent on Prefect ({args.runs} runs each, interleaved, 3 guarded calls)")
    table.add_column("variant")
    table.add_column("median ms", justify="right")
    table.add_column("min ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("ratio", justify="right")
    for label, times, med in (("bare PrefectDurability", bare_t, bare_med), ("ChioPrefectAgent", gov_t, gov_med)):
        p90 = statistics.quantiles(times, n=10)[-1]
        table.add_row(
            label, f"{med * 1000:.1f}", f"{min(times) * 1000:.1f}", f"{p90 * 1000:.1f}", f"{med / bare_med:.3f}x"
        )
    console.print(table)
    console.print(
        f"governed adds {1000 * (gov_med - bare_med):.1f} ms per run at the median "
        f"({1000 * (min(gov_t) - min(bare_t)):.1f} ms best case; {receipts} signed receipts stored by the "
        f"measured runs, {receipts / args.runs:.1f} per run, expected 3)"
    )
    # The governance body of a guarded call: evaluate_call minus the Prefect task around the kernel
    # call (key, kernel call, record, Prefect event); the task overhead: the durable op's wall time
    # minus the kernel call it ran. Medians of per-call differences, paired call by call.
    task_overhead = [op - k for op, k in zip(op_calls, kernel_calls, strict=True)]
    body_calls = [path - over for path, over in zip(path_calls, task_overhead, strict=True)]
    met = print_governance(
        console, engine="Prefect", calls_per_run=3, kernel_calls=kernel_calls, path_calls=body_calls,
        path_label="direct: ChioGovernance.evaluate_call minus the Prefect task around the kernel call "
        "(key, kernel call, record, Prefect event)",
        bare=bare_t, governed=gov_t, floor=floor,
    )
    console.print(
        f"Prefect task of the durable evaluation (chio__evaluate), per guarded call: median "
        f"{statistics.median(task_overhead) * 1e3:.3f} ms overhead beyond the kernel call "
        f"({statistics.median(op_calls) * 1e3:.3f} ms wall; whole evaluate_call with it "
        f"{statistics.median(path_calls) * 1e3:.3f} ms; {len(op_calls)} calls). Not a governance cost: the "
        "price of recording the decision in the flow run, so a retry does not ask again.",
        highlight=False,
    )
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", highlight=False)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
