"""Governed vs bare durable agent on Prefect: what Chio governance adds to an agent run.

Both agents run the same scripted run (offline ``FunctionModel``): model request -> tool call ->
model request, i.e. 3 guarded calls, each a Prefect task. The bare agent is a plain ``Agent`` with
pydantic-ai's ``PrefectDurability``; the governed one is ``ChioPrefectAgent`` over the same agent
with the embedded kernel (``LocalChioClient``): every call evaluated, signed receipt stored, event
emitted. Both run inside one Prefect flow per run, interleaved, in one process, against a local
ephemeral Prefect API (SQLite).

    python benchmarks/bench_prefect_agent.py [--runs 25]

Target: governed / bare median <= 1.10x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any


def _setup_env() -> None:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="chio-bench-prefect-"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here: no telemetry error line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=25, help="measured runs per variant (>= 20)")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    _setup_env()

    from chio_sdk.models import ChioScope, Operation, ToolGrant
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.prefect import PrefectDurability
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from rich.console import Console
    from rich.table import Table

    from chio_kernel import LocalChioClient
    from chio_prefect.agent import ChioPrefectAgent

    def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "chio"})])

    def search(query: str) -> str:
        return f"results for {query}"

    console = Console(width=120)
    with prefect_test_harness(server_startup_timeout=180), tempfile.TemporaryDirectory() as home:
        chio = LocalChioClient(data_dir=home)
        grants = [
            ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE]),
            ToolGrant(server_id="bench", tool_name="search", operations=[Operation.INVOKE]),
        ]
        chio.kernel.create_capability(subject="bench", scope=ChioScope(grants=grants), capability_id="cap-bench")

        bare = Agent(FunctionModel(scripted_model), name="bench", tools=[search], capabilities=[PrefectDurability()])
        governed = ChioPrefectAgent(
            Agent(FunctionModel(scripted_model), name="bench", tools=[search]),
            capability_id="cap-bench",
            chio_client=chio,
        )

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

        async def measure() -> tuple[list[float], list[float], int]:
            for _ in range(args.warmup):
                await timed(bare_run)
                await timed(governed_run)
            bare_t: list[float] = []
            gov_t: list[float] = []
            for i in range(args.runs):  # interleaved, alternating who goes first
                pair = (bare_run, governed_run) if i % 2 == 0 else (governed_run, bare_run)
                for fn in pair:
                    (bare_t if fn is bare_run else gov_t).append(await timed(fn))
            return bare_t, gov_t, len(chio.kernel.list_receipts(capability_id="cap-bench"))

        bare_t, gov_t, receipts = asyncio.run(measure())

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
        f"({1000 * (min(gov_t) - min(bare_t)):.1f} ms best case; {receipts} signed receipts stored); "
        f"ratio of medians {gov_med / bare_med:.3f}x, target <= 1.10x: "
        f"{'met' if gov_med / bare_med <= 1.10 else 'NOT met'}"
    )
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", highlight=False)


if __name__ == "__main__":
    main()
