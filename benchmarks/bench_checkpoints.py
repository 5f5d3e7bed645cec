"""Checkpoint benchmark: one command, one table (docs/checkpoints.md, benchmarks/README.md).

    python benchmarks/bench_checkpoints.py            # --n 3000, proofs at 1,000,000 receipts
    python benchmarks/bench_checkpoints.py --quick    # --n 800, proofs at 100,000 receipts

Rows, each measured in the same run:

* the cost of checkpointing per evaluation: ``Kernel.evaluate`` (sequential, in process) with the
  background cutter on (the defaults: every 256 receipts or 2 s) vs off (``checkpoint_every=0``),
  interleaved rounds (on, off, on, off, ...): p50, mean, p99 and the ratio on / off;
* what the cutter itself spends per receipt (cutting every checkpoint of the filled store);
* proof generation (``Kernel.inclusion_proof``: store lookups and the audit path) and verification
  (``chio_kernel.proofs.verify_inclusion``: checkpoint signature, receipt signature, path) on a store
  of ``--receipts`` receipts, every one checkpointed;
* proof size: the audit path (32 bytes a level) vs ``32 * ceil(log2 n)`` for the checkpoint's tree of
  n leaves, and the whole JSON proof document;
* the same path at one tree of ``--receipts`` synthetic leaf hashes (pure functions: the tree a log of
  that size would have if it were one batch), for the log2 scaling.

The store of ``--receipts`` receipts is grown with ``bench_kernel.bulk_fill`` (valid signed,
hash-chained receipt rows inserted in bulk), then checkpointed by the kernel's own cutter.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernel import PARAMS, Bench, goal_table, interleave, make_scope, verdict  # noqa: E402
from bench_kernel import bulk_fill  # noqa: E402


def _kernel(path: Path, every: int | None) -> tuple[Any, str]:
    from chio_kernel import Kernel

    kernel = Kernel(path, checkpoint_every=every)
    cap = kernel.create_capability(subject="agent:bench", scope=make_scope(), ttl_seconds=86400)
    return kernel, cap.id


def _ms(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1e3, s[min(len(s) - 1, int(0.99 * len(s)))] * 1e3


def _cost_worker(conn: Any, path: str, every: int | None) -> None:
    """A kernel in its own process (so its cutter thread competes with its own evaluations only):
    answers ``k`` with the latencies (ns) of k sequential evaluations, ``None`` with its checkpoint report."""
    kernel, cap = _kernel(Path(path), every)
    while (k := conn.recv()) is not None:
        out = []
        for _ in range(k):
            t0 = time.perf_counter_ns()
            kernel.evaluate(cap, "files", "read_file", PARAMS)
            out.append(time.perf_counter_ns() - t0)
        conn.send(out)
    time.sleep(2.5)  # the interval: the last partial batch is cut too
    cps = kernel.list_checkpoints()
    report = kernel.verify_checkpoints()
    conn.send((len(cps), cps[-1]["body"]["batch_end_seq"] if cps else 0, kernel.receipt_count(), report.problems))
    kernel.close()


def cost_rows(work: Path, n: int, table: Table, goals: Table) -> None:
    """Checkpointing on vs off: one process each, interleaved rounds of sequential in-process evaluations."""
    ctx = multiprocessing.get_context("spawn")
    benches, workers = [], []
    for name, every in (("Kernel.evaluate, checkpoints on (256 / 2 s)", None), ("Kernel.evaluate, checkpoints off", 0)):
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_cost_worker, args=(theirs, str(work / name.split()[-1]), every), daemon=True)
        proc.start()
        workers.append((mine, proc))

        def run(k: int, conn: Any = mine) -> list[int]:
            conn.send(k)
            return list(conn.recv())

        benches.append(Bench(name, run))
    interleave(benches, n, rounds=10, warmup=300)
    on, off = benches
    for b in benches:
        table.add_row(b.name, f"{b.p50:.0f} µs", f"{1e6 / b.per_second:.0f} µs", f"{b.p99:.0f} µs", "")
    for conn, proc in workers:
        conn.send(None)
    count, end, receipts, problems = workers[0][0].recv()
    workers[1][0].recv()
    for _, proc in workers:
        proc.join(timeout=30)
    if problems:
        raise RuntimeError(f"the checkpoints cut during the run do not verify: {problems}")
    table.add_row(f"  checkpoints the 'on' kernel cut: {count}, covering {end} of its {receipts} receipts, verified",
                  "", "", "", "")
    goals.add_row("checkpointing cost per evaluation, p50 on / off", f"{on.p50 / off.p50:.3f}", "<= 1.05",
                  verdict(on.p50 / off.p50 <= 1.05))
    goals.add_row("  (mean on / off, for the record)", f"{off.per_second / on.per_second:.3f}", "", "")


def proof_rows(work: Path, receipts: int, samples: int, table: Table, goals: Table, console: Console) -> None:
    """Fill a store to ``receipts``, checkpoint it all, then time proofs of random receipts."""
    from chio_kernel import Kernel
    from chio_kernel.proofs import verify_inclusion

    path = work / "big"
    kernel, cap = _kernel(path, 0)
    kernel.evaluate(cap, "files", "read_file", PARAMS)
    kernel.close()
    took = bulk_fill(path, cap, receipts, console)
    kernel = Kernel(path, checkpoint_every=0)  # no background cuts: checkpoint_now cuts 256 a checkpoint
    started = time.perf_counter()
    made = kernel.checkpoint_now()
    cut = time.perf_counter() - started
    table.add_row(f"store: {receipts:,} receipts (bulk fill {took:.0f} s), {len(made):,} checkpoints cut in "
                  f"{cut:.1f} s by the cutter", f"{cut / receipts * 1e6:.1f} µs / receipt", "", "", "")
    with kernel._gate.read() as st:
        ids = [st.chain_between(kernel.public_key_hex, s, s)[0][1]
               for s in random.Random(7).sample(range(1, receipts + 1), samples)]
    ids = [json.loads(t)["id"] for t in ids]
    key = kernel.public_key_hex
    gen: list[float] = []
    ver: list[float] = []
    sizes: list[tuple[int, int, int]] = []
    for rid in ids:
        t0 = time.perf_counter()
        proof = kernel.inclusion_proof(rid)
        t1 = time.perf_counter()
        verify_inclusion(proof, key)
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        ver.append(t2 - t1)
        tree = proof["proof"]["proof"]["tree_size"]
        sizes.append((tree, 32 * len(proof["proof"]["proof"]["audit_path"]),
                      len(json.dumps(proof, separators=(",", ":")).encode())))
    for name, xs in ((f"inclusion proof generation at {receipts:,} receipts (Kernel.inclusion_proof)", gen),
                     (f"inclusion proof verification (verify_inclusion, public key only)", ver)):
        p50, p99 = _ms(xs)
        table.add_row(name, f"{p50:.2f} ms", f"{statistics.fmean(xs) * 1e3:.2f} ms", f"{p99:.2f} ms", "")
    p50g, p50v = _ms(gen)[0], _ms(ver)[0]
    goals.add_row(f"proof generation p50 at {receipts:,} receipts", f"{p50g:.2f} ms", "< 10 ms", verdict(p50g < 10))
    goals.add_row(f"proof verification p50 at {receipts:,} receipts", f"{p50v:.2f} ms", "< 10 ms", verdict(p50v < 10))
    worst = max(s[1] - 32 * math.ceil(math.log2(s[0])) if s[0] > 1 else s[1] for s in sizes)
    doc = max(s[2] for s in sizes)
    table.add_row(f"proof size: audit path of a {sizes[0][0]}-leaf checkpoint tree; whole JSON proof document",
                  f"{max(s[1] for s in sizes)} B", f"{doc:,} B", "", "")
    goals.add_row("audit path bytes - 32 * ceil(log2 tree size), worst sample", f"{worst} B", "<= 0", verdict(worst <= 0))
    goals.add_row("  whole proof document (receipt + signed checkpoint + path), largest", f"{doc:,} B",
                  f"32*ceil(log2 n) + {doc - 32 * 8:,}", "")
    kernel.close()


def synthetic_rows(leaves: int, table: Table, goals: Table) -> None:
    """One tree of ``leaves`` synthetic leaf hashes: path size and time at that size (pure functions)."""
    import hashlib

    from chio_kernel.proofs import audit_path_in, leaf_hash, merkle_levels, root_from_path

    hashes = [leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(leaves)]
    t0 = time.perf_counter()
    levels = merkle_levels(hashes)
    build = time.perf_counter() - t0
    root = levels[-1][0]
    gen: list[float] = []
    ver: list[float] = []
    longest = 0
    for i in random.Random(3).sample(range(leaves), 500):
        t1 = time.perf_counter()
        path = audit_path_in(levels, i)
        t2 = time.perf_counter()
        assert root_from_path(hashes[i], i, leaves, path) == root
        t3 = time.perf_counter()
        gen.append(t2 - t1)
        ver.append(t3 - t2)
        longest = max(longest, len(path))
    bound = 32 * math.ceil(math.log2(leaves))
    table.add_row(f"one tree of {leaves:,} synthetic leaf hashes (built in {build:.1f} s): path / verify p50",
                  f"{_ms(gen)[0] * 1e3:.0f} µs", f"{_ms(ver)[0] * 1e3:.0f} µs", f"{32 * longest} B path", "")
    goals.add_row(f"audit path at {leaves:,} leaves vs 32*ceil(log2 n) = {bound} B", f"{32 * longest} B",
                  f"<= {bound} B", verdict(32 * longest <= bound))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="--n 800 and --receipts 100000")
    parser.add_argument("--n", type=int, default=None, help="evaluations per cost row (default 3000)")
    parser.add_argument("--receipts", type=int, default=None, help="store size for the proof rows (default 1e6)")
    parser.add_argument("--samples", type=int, default=200, help="proofs generated and verified")
    args = parser.parse_args()
    n = args.n or (800 if args.quick else 3000)
    receipts = args.receipts or (100_000 if args.quick else 1_000_000)
    console = Console(width=150)
    table = Table(title="checkpoints (one run)", title_justify="left")
    for col in ("row", "p50", "mean", "p99", ""):
        table.add_column(col, justify="left" if col == "row" else "right")
    goals = goal_table("goals")
    with tempfile.TemporaryDirectory(prefix="chio-bench-cp-") as tmp:
        work = Path(tmp)
        cost_rows(work, n, table, goals)
        proof_rows(work, receipts, args.samples, table, goals, console)
    synthetic_rows(receipts, table, goals)
    console.print(table)
    console.print(goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
