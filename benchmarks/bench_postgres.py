"""The PostgreSQL rows of ``bench_kernel.py`` (also runnable alone: ``python benchmarks/bench_postgres.py``).

Every call has the integration shape (``bench_kernel.integration_scope``): an idempotency key per
call and an attenuated capability whose grant carries a ``path_prefix`` constraint and a
``max_invocations`` budget, so each allow also charges the budget row.

* **p50 of one sequential evaluation**, PostgreSQL store vs. the SQLite store, interleaved in one
  run;
* **evaluations/s with 16 callers across 4 processes**: 4 worker processes, each a
  ``LocalChioClient`` with 4 asyncio callers (group commit batches the callers of one process),
  each on its own data dir (its own key) and all on ONE store; the same for SQLite (4 processes
  sharing one data dir) side by side;
* both again on a twin database with ``synchronous_commit=off``, to show what the flush costs;
* **1 -> 4 kernel scaling**: 1 kernel process, then 4 side by side, each on its own capability
  (its own budget) with 4 asyncio callers: evaluations/s and their ratio, with the database reached
  directly and through a proxy adding 1 ms each way (``tests/postgres/delay_proxy.py``: a
  database on another machine). Each kernel keeps its own receipt chain, so kernels on different
  capabilities share no lock.

The server: ``$CHIO_BENCH_PG_DSN`` (your own PostgreSQL; a fresh database is created in it), else a
throwaway PostgreSQL 15 cluster started like the tests' (``tests/postgres/pg_cluster.py``) but with
``fsync=on`` and ``synchronous_commit=on`` (PostgreSQL's defaults: a commit is flushed to disk
before it returns). The PostgreSQL row is skipped, with the reason printed, when neither is
available (no ``postgresql-15`` binaries, or no ``psycopg``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "postgres"))
PARAMS = {"path": "/data/reports/2026/q3-summary.txt", "max_bytes": 65536}
PROCESSES, CALLERS = 4, 4


def _scope() -> Any:
    from chio_sdk.models import ChioScope, Operation, ToolGrant

    return ChioScope(grants=[ToolGrant(server_id="files", tool_name="read_file", operations=[Operation.INVOKE])])


def _child(kernel: Any) -> str:
    """A root capability and its integration-shaped child (constrained, budgeted); the child's id."""
    from bench_kernel import integration_scope

    root = kernel.create_capability("agent:bench", _scope(), 86400)
    return str(kernel.attenuate_capability(root.id, integration_scope()).id)


@contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """``(dsn of a fresh database, where it runs)``; ``(None, why)`` if no server can be had."""
    import psycopg

    own = os.environ.get("CHIO_BENCH_PG_DSN")
    if own:
        name = "chio_bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(own, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield own.rsplit("/", 1)[0] + "/" + name, "your server ($CHIO_BENCH_PG_DSN)"
        finally:
            with psycopg.connect(own, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    import pg_cluster

    why = pg_cluster.missing()
    if why is not None:
        yield None, why
        return
    with pg_cluster.throwaway_cluster(durable=True) as cluster:
        yield cluster.create_database("chio_bench"), "a throwaway local PostgreSQL 15 (fsync=on, synchronous_commit=on)"


def _p50_rows(stores: dict[str, str], work: Path, n: int) -> dict[str, float]:
    """p50 (µs) of one sequential evaluation per store (name -> store), interleaved in 5 rounds."""
    from chio_kernel import Kernel

    kernels = {name: Kernel(work / f"p50-{i}", store=store) for i, (name, store) in enumerate(stores.items())}
    samples: dict[str, list[int]] = {name: [] for name in kernels}
    caps = {name: _child(k) for name, k in kernels.items()}
    calls = iter(range(10**9))
    for name, k in kernels.items():  # warm up
        for _ in range(50):
            k.evaluate(caps[name], "files", "read_file", PARAMS, idempotency_key=f"run-p50/step-{next(calls)}")
    per = max(1, n // 5)
    for _ in range(5):
        for name, k in kernels.items():
            for _ in range(per):
                key = f"run-p50/step-{next(calls)}"
                t0 = time.perf_counter_ns()
                r = k.evaluate(caps[name], "files", "read_file", PARAMS, idempotency_key=key)
                samples[name].append(time.perf_counter_ns() - t0)
                if r.decision.verdict != "allow":
                    raise RuntimeError(f"benchmark call denied: {r.decision}")
    for k in kernels.values():
        k.close()
    return {name: statistics.median(v) / 1e3 for name, v in samples.items()}


def _no_flush_twin(dsn: str) -> str:
    """A second database on the same server with ``synchronous_commit=off`` (commits return before
    the WAL flush): shows what the flush costs. Not a recommended setting for the fleet's store."""
    import psycopg

    base, name = dsn.rsplit("/", 1)
    twin = name + "_no_flush"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{twin}"')
        conn.execute(f'ALTER DATABASE "{twin}" SET synchronous_commit = off')
    return f"{base}/{twin}"


def _fleet_rate(store: str, work: Path, label: str, calls_per_caller: int, shared_dir: bool) -> tuple[float, float]:
    """(evaluations/s, commits per evaluation) of PROCESSES x CALLERS callers on one store."""
    from chio_kernel import Kernel

    setup = Kernel(work / f"{label}-0", store=store)
    cap = _child(setup)
    before = setup.receipt_count()
    setup.close()
    dirs = [work / f"{label}-0" if shared_dir else work / f"{label}-{i}" for i in range(PROCESSES)]
    elapsed, commits = _run_workers(store, list(zip(dirs, [cap] * PROCESSES)), calls_per_caller, label)
    check = Kernel(work / f"{label}-0", store=store)
    total = check.receipt_count() - before
    check.close()
    expected = PROCESSES * CALLERS * calls_per_caller
    if total != expected:
        raise RuntimeError(f"{label}: {total} receipts stored, expected {expected}")
    return total / elapsed, commits / total


def _run_workers(store: str, dirs_caps: list[tuple[Path, str]], calls_per_caller: int, label: str
                 ) -> tuple[float, int]:
    """One worker process per ``(data dir, capability)``, started at once: ``(seconds, commits)``."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", store, str(data_dir), cap, str(calls_per_caller), f"{label}-p{i}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i, (data_dir, cap) in enumerate(dirs_caps)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    commits = 0
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"benchmark worker failed ({p.returncode})")
        commits += int(out.split()[-1])
    return time.perf_counter() - t0, commits


def _rate(store: str, work: Path, label: str, caps: list[str], calls_per_caller: int) -> float:
    """evaluations/s of one worker process per capability (own data dir, own key)."""
    dirs_caps = [(work / f"{label}-{i}", cap) for i, cap in enumerate(caps)]
    elapsed, _ = _run_workers(store, dirs_caps, calls_per_caller, label)
    return len(caps) * CALLERS * calls_per_caller / elapsed


def _via_proxy(dsn: str, port: int) -> str:
    """``dsn`` with its host and port replaced by the delay proxy's (127.0.0.1:port)."""
    parts = urlsplit(dsn)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def _scaling_rows(dsn: str, work: Path, calls: int) -> list[tuple[str, float, float]]:
    """``(link, 1 kernel /s, 4 kernels /s)`` directly and through a 1 ms (each way) delay proxy."""
    from chio_kernel import Kernel
    from delay_proxy import DelayProxy

    setup = Kernel(work / "scaling-issuer", store=dsn)
    caps = [_child(setup) for _ in range(PROCESSES)]
    setup.close()
    parts = urlsplit(dsn)
    rows = []
    for link, delay in (("direct", 0.0), ("1 ms each way (delay proxy)", 0.001)):
        with DelayProxy(parts.hostname or "127.0.0.1", parts.port or 5432, delay) as proxy:
            store = dsn if delay == 0.0 else _via_proxy(dsn, proxy.port)
            tag = "direct" if delay == 0.0 else "proxy"
            one = _rate(store, work, f"scale-{tag}-1", caps[:1], calls)
            four = _rate(store, work, f"scale-{tag}-4", caps, calls)
        rows.append((link, one, four))
    return rows


def _worker(store: str, data_dir: str, cap: str, calls: int, tag: str) -> None:
    from chio_kernel import LocalChioClient

    client = LocalChioClient(data_dir, store=store)

    async def caller(c: int) -> None:
        for i in range(calls):
            r = await client.evaluate_tool_call(capability_id=cap, tool_server="files", tool_name="read_file",
                                                parameters=PARAMS, idempotency_key=f"{tag}-c{c}/step-{i}")
            if r.decision.verdict != "allow":
                raise RuntimeError(f"benchmark call denied: {r.decision}")

    async def run() -> None:
        await asyncio.gather(*(caller(c) for c in range(CALLERS)))

    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(run())
    print("commits", client.kernel._store.commits, flush=True)


def postgres_rows(console: Console, work: Path, n: int) -> None:
    """Print the PostgreSQL table (or why it is skipped)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        console.print("[yellow]PostgreSQL rows skipped[/]: no psycopg — `pip install 'psycopg[binary]'`")
        return
    calls = max(25, n // 8)
    with postgres_server() as (dsn, where):
        if dsn is None:
            console.print(f"[yellow]PostgreSQL rows skipped[/]: {where}")
            return
        console.print(f"PostgreSQL store: {where}")
        no_flush = _no_flush_twin(dsn)
        p50 = _p50_rows({"pg": dsn, "pg-no-flush": no_flush, "sqlite": "sqlite"}, work, n)
        pg_p50, nf_p50, lite_p50 = p50["pg"], p50["pg-no-flush"], p50["sqlite"]
        pg_rate, pg_cpe = _fleet_rate(dsn, work, "fleet-pg", calls, shared_dir=False)
        nf_rate, nf_cpe = _fleet_rate(no_flush, work, "fleet-pg-no-flush", calls, shared_dir=False)
        lite_rate, lite_cpe = _fleet_rate("sqlite", work, "fleet-sqlite", calls, shared_dir=True)
        scaling = _scaling_rows(dsn, work, calls)
    table = Table(title=f"PostgreSQL store vs SQLite, integration shape ({PROCESSES} processes x {CALLERS} "
                        f"asyncio callers, {calls} calls each; p50 of one sequential call, n={n})")
    for col in ("store", "p50 µs (1 caller)", "evaluations/s (16 callers, 4 processes)", "commits / evaluation"):
        table.add_column(col, justify="right" if col != "store" else "left")
    table.add_row("PostgreSQL (one chain per kernel)", f"{pg_p50:,.1f}", f"{pg_rate:,.0f}", f"{pg_cpe:.2f}")
    table.add_row("  the same, synchronous_commit=off (no WAL flush per commit)", f"{nf_p50:,.1f}", f"{nf_rate:,.0f}",
                  f"{nf_cpe:.2f}")
    table.add_row("SQLite (one host)", f"{lite_p50:,.1f}", f"{lite_rate:,.0f}", f"{lite_cpe:.2f}")
    console.print(table)
    console.print(f"PostgreSQL p50 / SQLite p50 = {pg_p50 / lite_p50:.2f}x; "
                  f"PostgreSQL / SQLite evaluations/s = {pg_rate / lite_rate:.2f}x "
                  "(no target: PostgreSQL buys exact budgets across hosts)")
    scale = Table(title=f"1 -> {PROCESSES} kernel processes on PostgreSQL, each on its own capability "
                        f"({CALLERS} asyncio callers each, {calls} calls per caller)")
    for col in ("link to the database", "1 kernel: evaluations/s", f"{PROCESSES} kernels: evaluations/s", "ratio"):
        scale.add_column(col, justify="right" if col != "link to the database" else "left")
    for link, one, four in scaling:
        scale.add_row(link, f"{one:,.0f}", f"{four:,.0f}", f"{four / one:.2f}x")
    console.print(scale)
    console.print("target: >= 3x with the delay proxy (each kernel keeps its own chain; the fleet test asserts it)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return 0
    import argparse
    import shutil
    import tempfile

    ap = argparse.ArgumentParser(description="The PostgreSQL rows of bench_kernel.py")
    ap.add_argument("--n", type=int, default=2000, help="samples for the p50 rows (default 2000)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chio-bench-pg-"))
    try:
        postgres_rows(Console(), work, args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
