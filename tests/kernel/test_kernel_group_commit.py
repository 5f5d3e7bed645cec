"""Group commit: concurrent evaluations share one write transaction, and nothing about budgets,
idempotency or the chain changes because of it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from chio_kernel import Kernel, LocalChioClient
from chio_kernel._group_commit import GroupCommitter

from kernel_helpers import grant, scope


def _eval_many(client: LocalChioClient, cap_id: str, callers: int, per_caller: int) -> list[str]:
    async def caller(c: int) -> list[str]:
        out = []
        for i in range(per_caller):
            r = await client.evaluate_tool_call(
                capability_id=cap_id, tool_server="fs", tool_name="read", parameters={"c": c, "i": i}
            )
            out.append(r.decision.guard or "allow")
        return out

    async def main() -> list[str]:
        return [v for vs in await asyncio.gather(*(caller(c) for c in range(callers))) for v in vs]

    return asyncio.run(main())


def test_asyncio_callers_share_commits_and_budgets_stay_exact(kernel: Kernel) -> None:
    client = LocalChioClient(kernel=kernel)
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=30)), 3600)
    kernel._checkpoints.stop()  # count the evaluations' transactions only, not the checkpoint cutter's
    before = kernel._store.commits
    verdicts = _eval_many(client, token.id, callers=8, per_caller=10)
    commits = kernel._store.commits - before
    assert verdicts.count("allow") == 30 and verdicts.count("max_invocations") == 50
    assert commits <= 80 // 4  # 8 callers per loop turn -> about 10 commits, never one per call
    report = kernel.verify_chain()
    assert report.ok and report.count == 80


def test_group_commit_off_is_one_commit_per_evaluation(chio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIO_GROUP_COMMIT", "1")
    with Kernel(chio_home, checkpoint_every=0) as kernel:  # no checkpoint cutter's transactions counted
        token = kernel.create_capability("agent:a", scope(grant()), 3600)
        before = kernel._store.commits
        _eval_many(LocalChioClient(kernel=kernel), token.id, callers=4, per_caller=5)
        assert kernel._store.commits - before == 20


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_group_commit_setting_is_refused(chio_home: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CHIO_GROUP_COMMIT", value)
    with pytest.raises(ValueError, match="CHIO_GROUP_COMMIT must be a positive integer"):
        Kernel(chio_home)


def test_same_idempotency_key_in_one_batch_is_one_receipt_and_one_charge(kernel: Kernel) -> None:
    client = LocalChioClient(kernel=kernel)
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=3)), 3600)

    async def main() -> list[str]:
        receipts = await asyncio.gather(*(
            client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read",
                                      parameters={"x": 1}, idempotency_key="run-1/step-0")
            for _ in range(6)
        ))
        return [r.id for r in receipts]

    kernel._checkpoints.stop()  # count the evaluations' transactions only, not the checkpoint cutter's
    before = kernel._store.commits
    ids = asyncio.run(main())
    # one loop turn: the first call decided at once, the other five in one transaction
    assert kernel._store.commits - before == 2
    assert len(set(ids)) == 1
    assert kernel.capability_info(token.id)["usage"][0]["invocations"] == 1  # type: ignore[index]


def test_a_failing_call_in_a_batch_reaches_only_its_caller(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    # One evaluation of the batch hits a store error: the batch is rolled back and re-run one
    # transaction each, so the others still get committed receipts and the chain has no gap.
    client = LocalChioClient(kernel=kernel)
    token = kernel.create_capability("agent:a", scope(grant()), 3600)
    real = kernel._evaluation.evaluate_in

    def flaky(st, req):  # type: ignore[no-untyped-def]
        if req.params.get("boom"):
            raise OSError("disk full (simulated)")
        return real(st, req)

    monkeypatch.setattr(kernel._evaluation, "evaluate_in", flaky)

    async def main() -> list[object]:
        return await asyncio.gather(*(
            client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read",
                                      parameters={"i": i, "boom": i == 2})
            for i in range(5)
        ), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], OSError)
    ok = [r for i, r in enumerate(results) if i != 2]
    assert all(getattr(r, "decision").is_allowed for r in ok)
    stored = [r.id for r in kernel.list_receipts()]
    assert stored == [getattr(r, "id") for r in ok]  # committed, in order, nothing of the failed one
    assert kernel.verify_chain().ok


def test_threads_that_wait_while_a_batch_commits_form_the_next_batch() -> None:
    # Leader/follower: while the first caller's batch runs, 5 more callers queue; the next leader
    # takes all of them in one batch.
    first_running, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(reqs: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(reqs))
        if reqs[0] == 0:
            first_running.set()
            release.wait(10)
        return [r * 10 for r in reqs]

    gc: GroupCommitter[int, int] = GroupCommitter(run, max_batch=64)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = gc.submit(i)

    t0 = threading.Thread(target=call, args=(0,))
    t0.start()
    assert first_running.wait(10)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    for _ in range(10_000):  # until all five queued behind the running batch
        if len(gc._queue) == 5:
            break
        threading.Event().wait(0.001)
    assert len(gc._queue) == 5
    release.set()
    for t in [t0, *others]:
        t.join(10)
    assert results == {i: i * 10 for i in range(6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_a_lone_async_caller_is_decided_without_waiting_for_the_loop_turn(kernel: Kernel) -> None:
    # The first evaluation of a loop turn does not wait behind the loop's other ready callbacks:
    # its receipt is there before a callback scheduled just before it has run.
    client = LocalChioClient(kernel=kernel)
    token = kernel.create_capability("agent:a", scope(grant()), 3600)
    ran: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(ran.append, "other callback")
        await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read", parameters={})
        ran.append("receipt")

    asyncio.run(main())
    assert ran == ["receipt", "other callback"]


def test_deferred_callers_of_one_loop_turn_share_one_commit(kernel: Kernel) -> None:
    # what the sidecar does (its requests arrive together from its sockets): the first call of a
    # turn waits for the turn's flush too, so the turn is one transaction instead of two
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=4)), 3600)

    async def main() -> list[str]:
        receipts = await asyncio.gather(*(
            kernel._evaluate_async(token.id, "fs", "read", {"i": i}, defer=True) for i in range(6)
        ))
        return [r.decision.guard or "allow" for r in receipts]

    before = kernel._store.commits
    assert asyncio.run(main()) == ["allow"] * 4 + ["max_invocations"] * 2
    assert kernel._store.commits - before == 1
    assert kernel.verify_chain().ok
