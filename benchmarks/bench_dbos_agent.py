"""Governed vs bare durable agent on DBOS (SQLite system database): what Chio governance adds.

Both agents run the same scripted run (offline ``FunctionModel``): model request -> tool call ->
model request, i.e. 3 guarded calls, each its own DBOS workflow per run. The bare agent is a plain
``Agent`` with pydantic-ai's ``DBOSDurability`` (2 model-request steps per run); the governed one is
``ChioDBOSAgent`` over the same agent with the embedded kernel: every call evaluated in a DBOS step
of its own (``chio.evaluate``: 3 more steps per run), the signed receipt stored by the kernel.
Interleaved, in one process, DBOS on one SQLite file in a temp directory.

Measured separately:
* governance per guarded call: the kernel call of the evaluate step's body (``transport.evaluate``,
  the op body minus a few dict builds) and the whole ``ChioGovernance.evaluate_call`` (key, the DBOS
  step with the kernel call inside, record), beside the kernel floor (Ed25519 sign + one SQLite WAL
  commit) sampled between the runs in the same process (``bench_agent_shared``);
* the DBOS step overhead: an empty ``DBOS.run_step_async`` inside a workflow (one checkpoint write
  to the SQLite system database), which every kernel check pays on top of the kernel call.

    python benchmarks/bench_dbos_agent.py [--runs 25]
    python benchmarks/bench_dbos_agent.py --quick      # 8 runs, 1 warm-up (well under 2 minutes)

Goals (those of the other engines, printed met / MISSED): governed / bare median <= 1.10x;
governance per guarded call <= 3x the floor. On DBOS each check is a recorded step by design, so the
whole path carries one DBOS checkpoint: compare it with the step overhead row.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="measured runs per variant (default 25; 8 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a busy machine")
    args = parser.parse_args()
    args.runs = args.runs or (8 if args.quick else 25)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    logging.getLogger("dbos").setLevel(logging.WARNING)

    from chio_sdk.models import Operation, ToolGrant
    from dbos import DBOS, SetWorkflowID
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.dbos import DBOSDurability
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from rich.console import Console
    from rich.table import Table

    from chio_dbos import ChioDBOSAgent
    from chio_kernel import LocalChioClient

    from bench_agent_shared import Floor, attenuated_capability, print_governance, time_kernel_calls

    def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "chio"})])

    def search(query: str) -> str:
        return f"results for {query}"

    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="chio-bench-dbos-") as home:
        chio = LocalChioClient(data_dir=Path(home) / "kernel")
        grants = [
            ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
            ToolGrant(server_id="bench", tool_name="search", operations=[Operation.INVOKE]),
        ]
        cap_id = attenuated_capability(chio.kernel, grants, subject="bench")
        twin_id = attenuated_capability(chio.kernel, grants, subject="bench")  # the floor's hot-loop row

        bare = Agent(FunctionModel(scripted_model), name="bench-bare", tools=[search], capabilities=[DBOSDurability()])
        governed = ChioDBOSAgent(
            Agent(FunctionModel(scripted_model), name="bench", tools=[search]), capability_id=cap_id, chio_client=chio
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

        @DBOS.workflow(name="bench-bare-run")
        async def bare_run() -> Any:
            return await bare.run("go")

        async def governed_run() -> Any:
            return await governed.run("go")  # its own workflow, <name>.chio_run

        step_times: list[float] = []

        async def noop() -> None:
            return None

        @DBOS.workflow(name="bench-empty-steps")
        async def empty_steps(n: int) -> None:
            for _ in range(n):
                start = time.perf_counter()
                await DBOS.run_step_async({"name": "noop"}, noop)
                step_times.append(time.perf_counter() - start)

        DBOS(config={"name": "chio-bench", "system_database_url": f"sqlite:///{home}/dbos.sqlite", "log_level": "WARNING"})
        DBOS.launch()

        async def timed(fn: Any) -> float:
            with SetWorkflowID(f"bench-{uuid.uuid4()}"):
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
            before = len(chio.kernel.list_receipts(capability_id=cap_id))
            bare_t: list[float] = []
            gov_t: list[float] = []
            for i in range(args.runs):  # interleaved, alternating who goes first
                pair = (bare_run, governed_run) if i % 2 == 0 else (governed_run, bare_run)
                for fn in pair:
                    (bare_t if fn is bare_run else gov_t).append(await timed(fn))
                floor.sample()
                with SetWorkflowID(f"bench-steps-{uuid.uuid4()}"):
                    await empty_steps(3)
            return bare_t, gov_t, len(chio.kernel.list_receipts(capability_id=cap_id)) - before, floor

        try:
            bare_t, gov_t, receipts, floor = asyncio.run(measure())
        finally:
            DBOS.destroy()

    bare_med, gov_med = statistics.median(bare_t), statistics.median(gov_t)
    table = Table(title=f"Governed vs bare durable agent on DBOS/SQLite ({args.runs} runs each, interleaved, 3 guarded calls)")
    for column, justify in (("variant", "left"), ("median ms", "right"), ("min ms", "right"), ("p90 ms", "right"),
                            ("ratio", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, times, med in (("bare DBOSDurability", bare_t, bare_med), ("ChioDBOSAgent", gov_t, gov_med)):
        p90 = statistics.quantiles(times, n=10)[-1]
        table.add_row(label, f"{med * 1000:.1f}", f"{min(times) * 1000:.1f}", f"{p90 * 1000:.1f}", f"{med / bare_med:.3f}x")
    console.print(table)
    console.print(
        f"governed adds {1000 * (gov_med - bare_med):.1f} ms per run at the median "
        f"({1000 * (min(gov_t) - min(bare_t)):.1f} ms best case; {receipts} signed receipts stored by the "
        f"measured runs, {receipts / args.runs:.1f} per run, expected 3)"
    )
    step_ms = statistics.median(step_times) * 1e3
    console.print(
        f"DBOS step overhead (empty DBOS.run_step_async in a workflow, SQLite): median {step_ms:.3f} ms over "
        f"{len(step_times)} steps = {step_ms / floor.p50_ms:.2f}x the kernel floor; every kernel check pays one",
        highlight=False,
    )
    print_governance(
        console, engine="DBOS", calls_per_run=3, kernel_calls=kernel_calls, path_calls=path_calls,
        path_label="direct: ChioGovernance.evaluate_call (key, the chio.evaluate DBOS step with the kernel call, record)",
        bare=bare_t, governed=gov_t, floor=floor,
    )
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
