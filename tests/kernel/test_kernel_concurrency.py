"""Budgets are exact under concurrency: many threads, and many processes sharing one data dir."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

from chio_kernel import Kernel

from kernel_helpers import grant, scope


def test_max_invocations_exact_with_8_threads(kernel: Kernel) -> None:
    n = 25
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=n)), 3600)
    verdicts: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for i in range(10):
            r = kernel.evaluate(token.id, "fs", "read", {"i": i})
            with lock:
                verdicts.append(r.decision.guard or "allow")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verdicts) == 80
    assert verdicts.count("allow") == n
    assert verdicts.count("max_invocations") == 80 - n
    assert kernel.verify_chain().ok and kernel.verify_chain().count == 80


def _process_worker(
    data_dir: str, capability_id: str, calls: int, queue: "multiprocessing.Queue[list[str]]", barrier: object
) -> None:
    k = Kernel(data_dir)
    barrier.wait()  # type: ignore[attr-defined]  # all processes evaluate at the same time
    out = []
    for i in range(calls):
        r = k.evaluate(capability_id, "fs", "read", {"i": i})
        out.append(r.decision.verdict)
    k.close()
    queue.put(out)


def test_max_invocations_exact_across_processes(chio_home: Path) -> None:
    n = 50
    k = Kernel(chio_home)
    token = k.create_capability("agent:a", scope(grant(max_invocations=n)), 3600)
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter per process, like separate workers
    queue = ctx.Queue()
    barrier = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_process_worker, args=(str(chio_home), token.id, 40, queue, barrier)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    verdicts = [v for r in results for v in r]
    assert len(verdicts) == 120
    assert verdicts.count("allow") == n
    assert sum(1 for r in results if "allow" in r) >= 2  # the budget was shared by several processes
    report = k.verify_chain()
    assert report.ok and report.count == 120, report
    assert len(k.list_receipts(capability_id=token.id)) == 120
    k.close()


def test_kernel_survives_fork(chio_home: Path) -> None:
    """A kernel created before ``fork`` reopens its store in the child instead of sharing the handle."""
    k = Kernel(chio_home)
    token = k.create_capability("agent:a", scope(grant(max_invocations=3)), 3600)
    assert k.evaluate(token.id, "fs", "read", {}).decision.verdict == "allow"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        queue.put(k.evaluate(token.id, "fs", "read", {"from": "child"}).decision.verdict)

    p = ctx.Process(target=child)
    p.start()
    assert queue.get(timeout=60) == "allow"
    p.join(timeout=30)
    assert k.evaluate(token.id, "fs", "read", {}).decision.verdict == "allow"
    assert k.evaluate(token.id, "fs", "read", {}).decision.guard == "max_invocations"
    assert k.verify_chain().ok and k.verify_chain().count == 4
    k.close()
