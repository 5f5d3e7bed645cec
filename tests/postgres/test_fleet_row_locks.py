"""What kernels share stays exact without a fleet-wide lock: the same idempotency key evaluated on
two kernels at the same moment is decided once (the key is claimed with INSERT ... ON CONFLICT), and
a revoke waits for an evaluation counting on the capability."""

from __future__ import annotations

import threading
from pathlib import Path

from chio_sdk.models import ChioReceipt, ChioScope, Operation, ToolGrant

from chio_kernel import Kernel


def _scope(max_invocations: int) -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE],
                                       max_invocations=max_invocations)])


def test_one_idempotency_key_on_two_kernels_at_once_is_decided_once(pg_dsn: str, tmp_path: Path) -> None:
    kernels = [Kernel(tmp_path / f"host-{i}", store=pg_dsn) for i in range(2)]
    # no limits: no capability row to lock, so only the key's claim keeps the two kernels apart
    cap = kernels[0].create_capability("agent:x", ChioScope(grants=[
        ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE])])).id
    for round_ in range(10):  # each round: 8 threads on 2 kernels, one key
        key = f"run-1/step-{round_}"
        answers: list[ChioReceipt | BaseException] = []
        start = threading.Barrier(8)

        def call(k: Kernel) -> None:
            start.wait()
            try:
                answers.append(k.evaluate(cap, "fs", "read_file", {"path": "/x"}, idempotency_key=key))
            except BaseException as err:  # noqa: BLE001 - reported below
                answers.append(err)

        threads = [threading.Thread(target=call, args=(kernels[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a for a in answers if isinstance(a, BaseException)] == []
        assert len({a.id for a in answers if isinstance(a, ChioReceipt)}) == 1  # one receipt for all
    assert kernels[1].receipt_count() == 10  # one receipt per key
    report = kernels[1].verify_chain()
    assert report.ok, report.reason
    for k in kernels:
        k.close()


def test_no_allow_commits_after_a_revoke_on_another_kernel_returned(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "host-a", store=pg_dsn)
    b = Kernel(tmp_path / "host-b", store=pg_dsn)
    cap = a.create_capability("agent:x", _scope(10**6)).id
    stop = threading.Event()
    results: list[ChioReceipt] = []

    def evaluate() -> None:
        i = 0
        while not stop.is_set():
            results.append(b.evaluate(cap, "fs", "read_file", {"path": f"/{i}"}))
            i += 1

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    while len(results) < 20:
        threading.Event().wait(0.01)
    a.revoke_capability(cap)
    allowed_before = {r.id for r in a.list_receipts(capability_id=cap) if r.decision.verdict == "allow"}
    after = b.evaluate(cap, "fs", "read_file", {"path": "/after"})
    stop.set()
    for t in threads:
        t.join()
    assert (after.decision.verdict, after.decision.guard) == ("deny", "revocation")
    # an evaluation in flight finished before the revoke (it waited on the capability's row); none after
    allowed = {r.id for r in b.list_receipts(capability_id=cap) if r.decision.verdict == "allow"}
    assert allowed == allowed_before and len(allowed) >= 20
    assert all(r.decision.verdict == "allow" or r.decision.guard == "revocation" for r in results)
    a.close()
    b.close()
