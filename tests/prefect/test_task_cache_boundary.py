"""A Prefect cache never serves a ``@chio_task`` result across an authorization boundary.

Real Prefect API (session fixture), real embedded kernel (``LocalChioClient``), persisted results.
The rule (docs/prefect.md, "Caching"): the cache key of a cached ``@chio_task`` is
``hash(the user's policy key, receipt id)``, and the evaluation that yields the receipt runs before
every cache lookup. Same flow run (a retry) -> same receipt -> hit; another flow run -> another
receipt -> miss; revoked or no kernel -> no lookup, and the gate in the body fails closed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from prefect import task
from prefect.cache_policies import INPUTS

from chio_kernel import LocalChioClient
from chio_kernel.testing import SidecarProcess
from chio_prefect import ChioPrefectError, chio_flow, chio_task
from chio_prefect.errors import ChioSidecarUnavailable


def _kernel(
    chio_home: Path, capability_id: str, *, max_invocations: int | None = None
) -> tuple[LocalChioClient, ChioScope]:
    local = LocalChioClient(data_dir=chio_home)
    grant = ToolGrant(
        server_id="docs-srv", tool_name="lookup", operations=[Operation.INVOKE], max_invocations=max_invocations
    )
    scope = ChioScope(grants=[grant])
    local.kernel.create_capability(subject="agent", scope=scope, capability_id=capability_id)
    return local, scope


def _receipt_events(captured_events: Any) -> list[tuple[str, str | None, str]]:
    """(event name, receipt id, task run id) of every chio event, in order."""
    return [
        (e.event, e.payload["receipt_id"], e.resource["prefect.resource.id"].removeprefix("prefect.task-run."))
        for e in captured_events.chio()
    ]


async def test_two_flow_runs_with_equal_inputs_never_share_a_cache_entry(
    chio_home: Path, captured_events: Any
) -> None:
    local, scope = _kernel(chio_home, "cap-runs")
    bodies: list[str] = []

    @chio_task(tool_server="docs-srv", cache_policy=INPUTS, persist_result=True)
    async def lookup(query: str) -> str:
        bodies.append(query)
        return f"answer to {query} #{len(bodies)}"

    @chio_flow(scope=scope, capability_id="cap-runs", chio_client=local)
    async def research(query: str) -> list[str]:
        # a second identical call in the same run is a new governed call (its own receipt) too
        return [await lookup(query), await lookup(query)]

    first = await research("same question")
    second = await research("same question")

    # Plain INPUTS would serve 3 of these 4 calls from the first one's entry; bound to their
    # receipts, none is shared.
    assert first + second == [f"answer to same question #{n}" for n in (1, 2, 3, 4)]
    assert bodies == ["same question"] * 4
    receipts = local.kernel.list_receipts(capability_id="cap-runs")
    assert [r.decision.verdict for r in receipts] == ["allow"] * 4  # one evaluation per call
    assert len({r.id for r in receipts}) == 4
    # one allow event per task run, carrying its receipt (the body's gate did not re-emit it)
    assert [(name, rid) for name, rid, _ in _receipt_events(captured_events)] == [
        ("chio.receipt.allow", r.id) for r in receipts
    ]


def test_a_flow_retry_hits_the_cache_with_the_same_receipt_and_no_second_body_call(
    chio_home: Path, captured_events: Any
) -> None:
    # max_invocations=1: a second charge would be a deny, so "same receipt" is also "charged once".
    local, scope = _kernel(chio_home, "cap-retry", max_invocations=1)
    bodies: list[str] = []
    later_attempts: list[int] = []

    @chio_task(tool_server="docs-srv", cache_policy=INPUTS, persist_result=True)
    def lookup(query: str) -> str:
        bodies.append(query)
        return f"answer to {query}"

    @task
    def publish(answer: str) -> str:
        later_attempts.append(1)
        if len(later_attempts) == 1:
            raise RuntimeError("publishing failed after lookup succeeded")
        return answer

    @chio_flow(scope=scope, capability_id="cap-retry", chio_client=local, retries=1, retry_delay_seconds=0)
    def research(query: str) -> str:
        return publish(lookup(query))

    assert research("q") == "answer to q"
    assert len(later_attempts) == 2  # the flow did retry
    assert bodies == ["q"]  # the retry was served from the cache: zero extra body calls
    receipts = local.kernel.list_receipts(capability_id="cap-retry")
    assert [r.decision.verdict for r in receipts] == ["allow"]  # re-evaluated, got the same receipt back
    events = _receipt_events(captured_events)
    # each attempt evaluated before its cache lookup and mirrored it once; Prefect made a new task
    # run for the retry, and it still got the same receipt
    assert [(name, rid) for name, rid, _ in events] == [("chio.receipt.allow", receipts[0].id)] * 2
    assert events[0][2] != events[1][2]


def test_a_capability_revoked_between_attempts_denies_and_the_cached_result_is_not_served(
    chio_home: Path, captured_events: Any
) -> None:
    local, scope = _kernel(chio_home, "cap-revoke")
    bodies: list[str] = []

    @chio_task(tool_server="docs-srv")  # no cache policy of its own ...
    def lookup(query: str) -> str:
        bodies.append(query)
        return f"secret about {query}"

    cached_lookup = lookup.with_options(cache_policy=INPUTS, persist_result=True)  # ... until here
    served: list[str] = []

    @task
    def publish(answer: str) -> str:
        served.append(answer)
        if len(served) == 1:
            local.kernel.revoke_capability("cap-revoke")  # revoked while the entry sits in the cache
            raise RuntimeError("publishing failed")
        return answer

    @chio_flow(scope=scope, capability_id="cap-revoke", chio_client=local, retries=1, retry_delay_seconds=0)
    def research(query: str) -> str:
        return publish(cached_lookup(query))

    with pytest.raises(PermissionError) as info:
        research("q")
    cause = info.value.__cause__
    assert isinstance(cause, ChioPrefectError) and cause.guard == "revocation"
    assert bodies == ["q"]  # the body ran on the first attempt only
    assert served == ["secret about q"]  # the cached result never reached the retry
    receipts = local.kernel.list_receipts(capability_id="cap-revoke")
    assert [r.decision.verdict for r in receipts] == ["allow", "deny"]  # one deny, not minted twice
    assert cause.receipt_id == receipts[1].id
    assert [(name, rid) for name, rid, _ in _receipt_events(captured_events)] == [
        ("chio.receipt.allow", receipts[0].id),
        ("chio.receipt.deny", receipts[1].id),
    ]


def test_an_unreachable_kernel_is_not_bypassed_by_the_cache(chio_home: Path, captured_events: Any) -> None:
    local, scope = _kernel(chio_home, "cap-down")
    bodies: list[str] = []
    served: list[str] = []

    @chio_task(tool_server="docs-srv", cache_policy=INPUTS, persist_result=True)
    def lookup(query: str) -> str:
        bodies.append(query)
        return f"answer to {query}"

    @task
    def publish(answer: str) -> str:
        served.append(answer)
        if len(served) == 1:
            local.kernel.close()  # the embedded kernel can no longer decide anything
            raise RuntimeError("publishing failed")
        return answer

    @chio_flow(scope=scope, capability_id="cap-down", chio_client=local, retries=1, retry_delay_seconds=0)
    def research(query: str) -> str:
        return publish(lookup(query))

    with pytest.raises(ChioSidecarUnavailable) as info:
        research("q")
    assert info.value.url == f"embedded:{chio_home}"
    assert bodies == ["q"] and served == ["answer to q"]  # no body call, no cached result on the retry
    # the allow of attempt 1 only: no decision, no event, when the kernel cannot decide
    assert [name for name, _, _ in _receipt_events(captured_events)] == ["chio.receipt.allow"]


async def test_over_the_sidecar_a_retry_hits_and_a_dead_sidecar_is_not_bypassed(
    chio_home: Path, captured_events: Any
) -> None:
    local, scope = _kernel(chio_home, "cap-http", max_invocations=1)
    bodies: list[str] = []
    served: list[str] = []

    # async task, real ChioClient over HTTP: the policy evaluates on the private kernel loop
    @chio_task(tool_server="docs-srv", cache_policy=INPUTS, persist_result=True)
    async def lookup(query: str) -> str:
        bodies.append(query)
        return f"answer to {query}"

    with SidecarProcess(chio_home) as sidecar:

        @task
        def publish(answer: str) -> str:
            served.append(answer)
            if len(served) == 2:  # attempt 2 was served from the cache; now the sidecar goes away
                sidecar.stop()
            raise RuntimeError("publishing failed")

        @chio_flow(
            scope=scope, capability_id="cap-http", sidecar_url=sidecar.url, retries=2, retry_delay_seconds=0
        )
        async def research(query: str) -> str:
            return publish(await lookup(query))

        with pytest.raises(ChioSidecarUnavailable) as info:
            await research("q")
    assert info.value.url == sidecar.url
    assert bodies == ["q"]  # attempt 1 ran the body, attempt 2 hit the cache, attempt 3 was refused
    assert served == ["answer to q", "answer to q"]
    receipts = local.kernel.list_receipts(capability_id="cap-http")
    assert [r.decision.verdict for r in receipts] == ["allow"]  # charged once (max_invocations=1)
    assert [(name, rid) for name, rid, _ in _receipt_events(captured_events)] == [
        ("chio.receipt.allow", receipts[0].id)
    ] * 2


async def test_a_cached_task_hashes_its_parameters_once_per_attempt(
    chio_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache policy and the body's gate see one GovernedCall: its parameters are hashed once."""
    import chio_durable._call as call_module

    local, scope = _kernel(chio_home, "cap-hash")
    hashed: list[dict[str, Any]] = []
    real = call_module._hash_parameters

    def counting(parameters: Any) -> Any:
        hashed.append(dict(parameters))
        return real(parameters)

    monkeypatch.setattr(call_module, "_hash_parameters", counting)

    @chio_task(tool_server="docs-srv", cache_policy=INPUTS, persist_result=True)
    async def lookup(query: str) -> str:
        return query.upper()

    @chio_flow(scope=scope, capability_id="cap-hash", chio_client=local)
    async def research(query: str) -> str:
        return await lookup(query)

    assert await research("one call") == "ONE CALL"
    assert hashed == [{"query": "one call"}]
    assert [r.decision.verdict for r in local.kernel.list_receipts(capability_id="cap-hash")] == ["allow"]
