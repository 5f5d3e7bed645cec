"""Every code sample of seed 000, run as written, on the real kernel (and the real sidecar).

Names a sample uses without defining them (``external_search``, ``analyzer``, ``log``) are given
here; everything inside the samples is the seed's text. Capabilities are provisioned on a real kernel
(``LocalChioClient``) and, for the sidecar run, served over HTTP by ``python -m chio_kernel.cli
sidecar`` and reached with the real ``chio_sdk.ChioClient``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import Kernel, LocalChioClient
from chio_prefect import _clients as chio_clients

# --- the seed's quickstart scope, and stand-ins for the names the samples leave undefined --------

PIPELINE_SCOPE = ChioScope(
    grants=[
        ToolGrant(
            server_id="search-srv",
            tool_name="search_documents",
            operations=[Operation.INVOKE],
        ),
        ToolGrant(
            server_id="search-srv",
            tool_name="analyze_results",
            operations=[Operation.INVOKE],
        ),
    ]
)


class _ExternalSearch:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def run(self, query: str) -> list[dict]:
        self.queries.append(query)
        return [{"title": f"result for {query}", "rank": 1}, {"title": "another", "rank": 2}]


class _Analyzer:
    def run(self, documents: list[dict]) -> dict:
        return {"count": len(documents), "top": documents[0]["title"] if documents else None}


class _AsyncSearch:
    async def run(self, query: str) -> list[dict]:
        await asyncio.sleep(0)
        return [{"title": query}]


class _StructuredLog:
    """Stands in for the structlog-style ``log`` of the deny-handling sample."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def warning(self, message: str, **fields: Any) -> None:
        self.records.append((message, fields))


def provision(kernel: Kernel, capability_id: str = "cap-research-pipeline", **kwargs: Any) -> None:
    kernel.create_capability(
        subject="research-agent", scope=PIPELINE_SCOPE, capability_id=capability_id, **kwargs
    )


@pytest.fixture
def local(chio_home: Path) -> LocalChioClient:
    client = LocalChioClient(chio_home)
    provision(client.kernel)
    return client


def _quickstart(external_search: Any, analyzer: Any, **flow_client: Any) -> Any:
    """Seed 000 Quickstart, verbatim except the client keyword the caller injects (if any)."""
    from chio_prefect import chio_flow, chio_task

    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> list[dict]:
        return external_search.run(query)

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[dict]) -> dict:
        return analyzer.run(documents)

    @chio_flow(
        scope=PIPELINE_SCOPE,
        capability_id="cap-research-pipeline",
        tool_server="search-srv",
        **flow_client,
    )
    def research_pipeline(query: str) -> dict:
        docs = search_documents(query)
        return analyze_results(docs)

    return research_pipeline


def test_quickstart_on_the_embedded_kernel(local: LocalChioClient) -> None:
    search = _ExternalSearch()
    research_pipeline = _quickstart(search, _Analyzer(), chio_client=local)

    result = research_pipeline("capability-based security")

    assert result == {"count": 2, "top": "result for capability-based security"}
    receipts = local.kernel.list_receipts(capability_id="cap-research-pipeline")
    assert [(r.tool_name, r.decision.verdict) for r in receipts] == [
        ("search_documents", "allow"),
        ("analyze_results", "allow"),
    ]
    assert receipts[0].action.parameters == {"query": "capability-based security"}
    assert all(local.kernel.verify_receipt(r) for r in receipts)


def test_quickstart_denied_when_the_capability_is_revoked(local: LocalChioClient) -> None:
    search = _ExternalSearch()
    research_pipeline = _quickstart(search, _Analyzer(), chio_client=local)
    local.kernel.revoke_capability("cap-research-pipeline")
    log = _StructuredLog()

    # Seed 000, "Denials and Retries", first sample.
    from chio_prefect import ChioPrefectError

    try:
        research_pipeline("sensitive query")
    except PermissionError as e:
        if isinstance(e.__cause__, ChioPrefectError):
            err: ChioPrefectError = e.__cause__
            log.warning(
                "denied by chio",
                receipt_id=err.receipt_id,
                guard=err.guard,
                reason=err.reason,
            )
        else:
            raise

    assert search.queries == []  # no side effect
    [(message, fields)] = log.records
    assert message == "denied by chio" and fields["guard"] == "revocation"
    receipt = local.kernel.get_receipt(fields["receipt_id"])
    assert receipt is not None and receipt.decision.verdict == "deny"
    assert receipt.decision.reason == fields["reason"]


def test_rate_limit_deny_is_retried_by_the_users_condition_then_allowed(chio_home: Path) -> None:
    local = LocalChioClient(chio_home)
    # one call per 0.5 s: the second call of the flow is denied by rate-limit-guard, then retried
    provision(local.kernel, rate_limit=(1, 0.5))
    calls: list[str] = []

    # Seed 000, "Denials and Retries", second sample (retry_delay_seconds small instead of 30).
    from chio_prefect import ChioPrefectError

    def retry_on_rate_limit(task, task_run, state) -> bool:  # noqa: ANN001
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, PermissionError) and isinstance(exc.__cause__, ChioPrefectError):
            return exc.__cause__.guard == "rate-limit-guard"
        return False

    from chio_prefect import chio_flow, chio_task

    @chio_task(
        tool_server="search-srv",
        retries=3,
        retry_delay_seconds=0.6,
        retry_condition_fn=retry_on_rate_limit,
    )
    def search_documents(query: str) -> list[dict]:
        calls.append(query)
        return [{"q": query}]

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-research-pipeline", tool_server="search-srv",
               chio_client=local)
    def pipeline() -> list[list[dict]]:
        return [search_documents("first"), search_documents("second")]

    assert pipeline() == [[{"q": "first"}], [{"q": "second"}]]
    assert calls == ["first", "second"]
    verdicts = [(r.action.parameters["query"], r.decision.verdict, r.decision.guard)
                for r in local.kernel.list_receipts(capability_id="cap-research-pipeline")]
    assert verdicts[0] == ("first", "allow", None)
    assert ("second", "deny", "rate-limit-guard") in verdicts
    assert verdicts[-1] == ("second", "allow", None)


def test_async_and_sync_sample(local: LocalChioClient) -> None:
    external_search = _AsyncSearch()
    analyzer = _Analyzer()

    # Seed 000, "Async and Sync".
    from chio_prefect import chio_flow, chio_task

    @chio_task(tool_server="search-srv")
    async def search_documents(query: str) -> list[dict]:
        return await external_search.run(query)

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[dict]) -> dict:
        return analyzer.run(documents)

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-research-pipeline", tool_server="search-srv",
               chio_client=local)
    async def pipeline(query: str) -> dict:
        return analyze_results(await search_documents(query))

    assert asyncio.run(pipeline("q")) == {"count": 1, "top": "q"}
    assert [r.tool_name for r in local.kernel.list_receipts()] == ["search_documents", "analyze_results"]


# --- Seed 000, "Testing": the two sample tests run verbatim in test_testing_sample.py ------------
# That sample leaves PIPELINE_SCOPE to its test module, and its task lives on server "srv". With the
# quickstart's PIPELINE_SCOPE (search-srv only) the flow envelope denies srv/double, as it must:

from chio_sdk.testing import allow_all  # noqa: E402

from chio_prefect import chio_flow, chio_task  # noqa: E402


def test_testing_sample_with_the_quickstart_scope_is_enveloped() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", chio_client=client)
    def double(x: int) -> int:
        return x * 2

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-test", tool_server="srv", chio_client=client)
    def pipeline() -> int:
        return double(21)

    with pytest.raises(PermissionError) as info:
        pipeline()
    assert info.value.__cause__.guard == "flow-scope"
    assert client.calls == []


# --- the quickstart verbatim, against the real sidecar over HTTP -----------------------------------


def test_quickstart_verbatim_against_the_sidecar(
    sidecar_url: str, chio_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provision(Kernel(chio_home))  # same store as the sidecar's
    # The quickstart passes no client: tasks use ChioClient(DEFAULT_SIDECAR_URL). Point that
    # default at the test sidecar (9090 may be taken on a shared machine); nothing else changes.
    monkeypatch.setattr(chio_clients, "DEFAULT_SIDECAR_URL", sidecar_url)
    search = _ExternalSearch()
    research_pipeline = _quickstart(search, _Analyzer())

    assert research_pipeline("capability-based security")["count"] == 2
    assert search.queries == ["capability-based security"]
    client = chio_clients.client_for_url(sidecar_url)
    # a real chio_sdk ChioClient did the talking: our SidecarClient subclass, which sends idempotency keys
    assert isinstance(client, ChioClient) and type(client).__name__ == "SidecarClient"
    receipts = Kernel(chio_home).list_receipts(capability_id="cap-research-pipeline")
    assert [(r.tool_name, r.decision.verdict) for r in receipts] == [
        ("search_documents", "allow"),
        ("analyze_results", "allow"),
    ]

    # and the sidecar's deny reaches the task as the seed's PermissionError
    Kernel(chio_home).revoke_capability("cap-research-pipeline")
    with pytest.raises(PermissionError) as info:
        research_pipeline("again")
    assert info.value.__cause__.guard == "revocation"
    assert info.value.__cause__.receipt_id.startswith("rcpt-")
    assert search.queries == ["capability-based security"]



def test_unreachable_sidecar_is_retried_until_it_answers(sidecar_factory: Any, chio_home: Path) -> None:
    """Fail closed, then recover: attempts while the sidecar is down never run the body."""
    import threading

    from chio_kernel.testing import free_port
    from chio_prefect import ChioSidecarUnavailable, chio_flow, chio_task

    provision(Kernel(chio_home))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    attempts: list[str] = []
    ran: list[str] = []

    def note_attempt(task, task_run, state) -> bool:  # noqa: ANN001
        exc = state.data
        attempts.append(type(exc).__name__)
        if len(attempts) == 1:  # bring the sidecar up after the first failed attempt
            threading.Thread(target=sidecar_factory(port).start).start()
        return isinstance(exc, ChioSidecarUnavailable)

    @chio_task(tool_server="search-srv", retries=30, retry_delay_seconds=0.5, retry_condition_fn=note_attempt)
    def search_documents(query: str) -> str:
        ran.append(query)
        return query

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-research-pipeline", sidecar_url=url)
    def pipeline() -> str:
        return search_documents("q")

    assert pipeline() == "q"
    assert ran == ["q"]  # once, after the sidecar answered
    assert attempts and set(attempts) == {"ChioSidecarUnavailable"}
    [receipt] = Kernel(chio_home).list_receipts(capability_id="cap-research-pipeline")
    assert receipt.decision.verdict == "allow"


def test_async_and_sync_sample_over_the_sidecar(sidecar_url: str, chio_home: Path) -> None:
    """The sync task's evaluation blocks only its own thread, never the async flow's loop."""
    from chio_prefect import chio_flow, chio_task

    provision(Kernel(chio_home))
    external_search = _AsyncSearch()
    analyzer = _Analyzer()

    @chio_task(tool_server="search-srv")
    async def search_documents(query: str) -> list[dict]:
        return await external_search.run(query)

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[dict]) -> dict:
        return analyzer.run(documents)

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-research-pipeline", tool_server="search-srv",
               sidecar_url=sidecar_url)
    async def pipeline(query: str) -> list[dict]:
        first, second = await asyncio.gather(search_documents(query), search_documents(query + "!"))
        return [analyze_results(first), analyze_results(second)]

    assert asyncio.run(pipeline("q")) == [{"count": 1, "top": "q"}, {"count": 1, "top": "q!"}]
    receipts = Kernel(chio_home).list_receipts(capability_id="cap-research-pipeline")
    assert sorted(r.tool_name for r in receipts) == ["analyze_results"] * 2 + ["search_documents"] * 2
    assert all(r.decision.verdict == "allow" for r in receipts)
