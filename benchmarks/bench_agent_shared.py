"""What the two agent benchmarks share: governance per guarded call, the kernel floor beside it, the goals.

* :func:`time_kernel_calls` wraps the governance layer's transport on the instance, so every kernel
  call the hook (Prefect) or the interceptor (Temporal) makes for a guarded call is timed where it is
  made: the embedded kernel's evaluation (guards, idempotency row, budget row, signature, chained
  insert, commit) plus the transport's mapping of the receipt to a decision.
* :class:`Floor` is ``bench_kernel.floor_bench`` (one Ed25519 sign of a real receipt's signed body +
  one SQLite WAL commit, the kernel's own ``open_store`` pragmas), sampled in small batches between
  the agent runs so background load hits both alike; beside it, the agent's tool call straight on
  ``Kernel.evaluate`` in a hot loop (what the kernel itself needs for the call).
* :func:`attenuated_capability`: the integration shape - a child of a root capability with a
  constrained, budgeted grant per guarded route; every call carries the integration's idempotency key.
* :func:`print_governance`: the per-call table and the goals (``bench_kernel.goal_table``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_kernel import Bench, CallKeys, floor_bench, goal_table, timed_sync, verdict
from rich.console import Console
from rich.table import Table

END_TO_END_GOAL = 1.10  # governed / bare median of whole agent runs
GOVERNANCE_GOAL = 3.0  # governance per guarded call / kernel floor (benchmarks/README.md says why 3)
FLOOR_BATCH = 25  # floor samples taken after each interleaved pair of agent runs


class KernelCalls(list[float]):
    """Durations (seconds) of the governance layer's kernel calls, with the tool server of each."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[str] = []

    def clear(self) -> None:
        super().clear()
        self.servers.clear()

    def by_server(self) -> dict[str, float]:
        """Median ms per tool server (``model``, the tool's server...)."""
        groups: dict[str, list[float]] = {}
        for server, seconds in zip(self.servers, self):
            groups.setdefault(server, []).append(seconds)
        return {server: statistics.median(values) * 1e3 for server, values in groups.items()}


def time_kernel_calls(governance: Any) -> KernelCalls:
    """Time every ``transport.evaluate`` of ``governance`` (a ``ChioGovernance`` or an interceptor).

    Returns the list the durations (seconds) are appended to. Also checks that the call carried an
    idempotency key, as the integrations send one on every guarded call.
    """
    transport = governance.transport
    real = transport.evaluate
    samples = KernelCalls()

    async def timed(call: Any, **kwargs: Any) -> Any:
        if not kwargs.get("idempotency_key"):
            raise RuntimeError(f"guarded call without an idempotency key: {call!r}")
        start = time.perf_counter()
        try:
            return await real(call, **kwargs)
        finally:
            samples.append(time.perf_counter() - start)
            samples.servers.append(call.tool_server)

    transport.evaluate = timed
    return samples


def attenuated_capability(kernel: Any, grants: Sequence[Any], subject: str) -> str:
    """Mint a root with ``grants``, then the child the run uses: each grant budgeted, tool grants constrained.

    A grant whose ``server_id`` is not ``"model"`` gets a ``max_length`` constraint on its string
    arguments (the model grant's parameters are whole message histories); every grant gets a
    ``max_invocations`` budget, so the budget row is on the path of every call.
    """
    from chio_sdk.models import ChioScope, Constraint

    root = kernel.create_capability(subject=subject, scope=ChioScope(grants=list(grants)), ttl_seconds=86400)
    child_grants = [
        grant.model_copy(update={
            "max_invocations": 10**9,
            "constraints": [] if grant.server_id == "model" else [Constraint.max_length(256)],
        })
        for grant in grants
    ]
    child = kernel.attenuate_capability(root, ChioScope(grants=child_grants))
    return str(child.id)


class Floor:
    """The kernel floor, measured in the agent benchmark's own process between its runs.

    Beside it, the agent's tool call straight on ``Kernel.evaluate`` in the same batches (a twin
    child capability, fresh idempotency keys): the kernel's own cost of the call when hot, so the
    table separates the kernel's work from what a single call costs inside an engine's run.
    """

    def __init__(self, workdir: Path, kernel: Any, capability_id: str, call: tuple[str, str, str, dict[str, Any]]) -> None:
        from chio_kernel import receipt_signing_bytes

        receipt = kernel.list_receipts(capability_id=capability_id)[-1]  # a receipt this run's calls made
        self.bench: Bench = floor_bench(workdir, receipt_signing_bytes(receipt))
        twin, server, tool, params = call
        keys = CallKeys("bench-hot")

        def hot_call() -> None:
            if not kernel.evaluate(twin, server, tool, params, idempotency_key=keys()).decision.is_allowed:
                raise RuntimeError("benchmark call denied")

        self.hot: Bench = Bench("same call, Kernel.evaluate in a hot loop", timed_sync(hot_call))
        self.bench.run(FLOOR_BATCH)  # warm-up
        self.hot.run(FLOOR_BATCH)

    def sample(self) -> None:
        self.bench.samples.extend(self.bench.run(FLOOR_BATCH))
        self.hot.samples.extend(self.hot.run(FLOOR_BATCH))

    @property
    def p50_ms(self) -> float:
        return self.bench.p50 / 1e3


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def print_governance(
    console: Console,
    *,
    engine: str,
    calls_per_run: int,
    kernel_calls: KernelCalls,
    path_calls: list[float],
    path_label: str,
    bare: list[float],
    governed: list[float],
    floor: Floor,
) -> bool:
    """Print governance ms per guarded call beside the floor, and every goal with met / MISSED."""
    floor_ms = floor.p50_ms
    kernel_ms = statistics.median(kernel_calls) * 1e3
    path_ms = statistics.median(path_calls) * 1e3
    bare_med, gov_med = statistics.median(bare), statistics.median(governed)
    diff_ms = (gov_med - bare_med) / calls_per_run * 1e3
    table = Table(title=f"governance per guarded call ({engine}; medians)", title_justify="left")
    table.add_column("what")
    table.add_column("calls", justify="right")
    table.add_column("ms / call", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("/ floor", justify="right")
    table.add_column("how measured")

    def p90(values: list[float]) -> str:
        return _ms(statistics.quantiles(values, n=10)[-1]) if len(values) >= 2 else ""

    table.add_row(
        "governance kernel call per guarded call", str(len(kernel_calls)), f"{kernel_ms:.3f}", p90(kernel_calls),
        f"{kernel_ms / floor_ms:.2f}x",
        "direct: each transport.evaluate of the hook/interceptor (embedded Kernel.evaluate -> decision); "
        "idempotency key, attenuated constrained budgeted capability",
    )
    table.add_row(
        "whole governance path per guarded call", str(len(path_calls)), f"{path_ms:.3f}", p90(path_calls),
        f"{path_ms / floor_ms:.2f}x", path_label,
    )
    table.add_row(
        "(governed - bare) / guarded calls", f"{len(governed)} runs", f"{diff_ms:.3f}", "",
        f"{diff_ms / floor_ms:.2f}x",
        f"run medians' difference / {calls_per_run}: end to end, in {engine}'s noise",
    )
    hot_ms = floor.hot.p50 / 1e3
    table.add_row(
        "the tool call on Kernel.evaluate, hot loop", str(len(floor.hot.samples)), f"{hot_ms:.3f}",
        _ms(statistics.quantiles(floor.hot.samples, n=10)[-1] / 1e9), f"{hot_ms / floor_ms:.2f}x",
        "same shape (twin child capability, keys), batches beside the floor: the kernel's own work",
    )
    table.add_row(
        "kernel floor: Ed25519 sign + 1 SQLite WAL commit", str(len(floor.bench.samples)), f"{floor_ms:.3f}",
        _ms(statistics.quantiles(floor.bench.samples, n=10)[-1] / 1e9), "1.00x",
        f"bench_kernel.floor_bench, batches of {FLOOR_BATCH} after each pair of runs, same process",
    )
    console.print(table)
    split = ", ".join(f"{server} {ms:.3f} ms ({ms / floor_ms:.1f}x)" for server, ms in kernel_calls.by_server().items())
    console.print(f"kernel call median by tool server: {split}", highlight=False)

    goals = goal_table("goals")
    r_end = gov_med / bare_med
    r_kernel = kernel_ms / floor_ms
    r_path = path_ms / floor_ms
    goals.add_row(f"end to end: governed / bare run median ({engine})", f"{r_end:.3f}x",
                  f"≤ {END_TO_END_GOAL:.2f}x", verdict(r_end <= END_TO_END_GOAL))
    goals.add_row("governance kernel call per guarded call / floor", f"{r_kernel:.2f}x",
                  f"≤ {GOVERNANCE_GOAL:.2f}x", verdict(r_kernel <= GOVERNANCE_GOAL))
    goals.add_row("whole governance path per guarded call / floor", f"{r_path:.2f}x",
                  f"≤ {GOVERNANCE_GOAL:.2f}x", verdict(r_path <= GOVERNANCE_GOAL))
    console.print(goals)
    return r_end <= END_TO_END_GOAL and r_kernel <= GOVERNANCE_GOAL and r_path <= GOVERNANCE_GOAL
