"""Budgets are exact under concurrency: many threads, and many processes sharing one data dir."""

from __future__ import annotations

import multiprocessing
import threading
import time
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


def test_same_idempotency_key_from_8_threads_is_one_receipt_and_one_charge(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=5)), 3600)
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        r = kernel.evaluate(token.id, "fs", "read", {"p": 1}, idempotency_key="flow-run-1/task-1")
        with lock:
            ids.append(r.id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert kernel.receipt_count() == 1
    assert kernel.capability_info(token.id)["usage"][0]["invocations"] == 1


def test_revocation_racing_evaluations_never_allows_after_the_revoke(kernel: Kernel) -> None:
    token = kernel.create_capability("agent:a", scope(grant()), 3600)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            kernel.evaluate(token.id, "fs", "read", {})

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    while kernel.receipt_count() < 20:
        time.sleep(0.001)
    kernel.revoke_capability(token.id)
    after = kernel.receipt_count()
    while kernel.receipt_count() < after + 20:
        time.sleep(0.001)
    stop.set()
    for t in threads:
        t.join()
    receipts = kernel.list_receipts()
    verdicts = [r.decision.verdict for r in receipts]
    first_deny = verdicts.index("deny")
    assert first_deny <= after  # every receipt written after the revoke committed is a deny
    assert all(v == "deny" for v in verdicts[first_deny:])
    assert all(r.decision.guard == "revocation" for r in receipts[first_deny:])
