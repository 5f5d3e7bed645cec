"""Flow scope as the upper bound: attenuation, inheritance, sub-flows, standalone tasks, concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from chio_sdk.testing import allow_all
from prefect import flow

from chio_prefect import (
    ChioPrefectConfigError,
    ChioPrefectError,
    chio_flow,
    chio_task,
)
from chio_prefect._context import current_flow_governance


def grant(server: str, tool: str) -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


PIPELINE_SCOPE = ChioScope(
    grants=[grant("search-srv", "search_documents"), grant("search-srv", "analyze_results")]
)


def test_task_scope_subset_is_allowed_and_escape_is_denied_before_the_kernel() -> None:
    client = allow_all()
    ran: list[str] = []

    # Seed 000, "Flow Scope and Attenuation", both samples.
    @chio_task(
        scope=ChioScope(grants=[
            ToolGrant(server_id="search-srv", tool_name="search_documents",
                      operations=[Operation.INVOKE]),
        ]),
        tool_server="search-srv",
    )
    def search_documents(query: str) -> list[dict]:
        ran.append("search")
        return [{"q": query}]

    @chio_task(
        scope=ChioScope(grants=[
            ToolGrant(server_id="fs-srv", tool_name="write_file",
                      operations=[Operation.INVOKE]),
        ]),
        tool_server="fs-srv",
    )
    def write_file(path: str, body: bytes) -> None:
        ran.append("write")

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-research-pipeline", tool_server="search-srv",
               chio_client=client)
    def research_pipeline(query: str) -> list[dict]:
        docs = search_documents(query)
        write_file("/tmp/out", b"x")
        return docs

    with pytest.raises(PermissionError) as info:
        research_pipeline("q")
    assert ran == ["search"]
    cause = info.value.__cause__
    assert isinstance(cause, ChioPrefectError)
    assert cause.guard == "flow-scope" and cause.receipt_id is None
    assert "not a subset" in cause.reason and "research_pipeline" in cause.reason
    # The escape was stopped locally: the kernel was only asked about search_documents.
    assert [c.tool_name for c in client.calls] == ["search_documents"]


def test_task_without_scope_inherits_the_flow_scope() -> None:
    client = allow_all()
    ran: list[str] = []

    @chio_task  # no scope, no tool_server: both from the flow
    def analyze_results(documents: list[dict]) -> dict:
        ran.append("analyze")
        return {"n": len(documents)}

    @chio_task  # same server, but a tool the flow scope does not grant
    def delete_index() -> None:
        ran.append("delete")

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-p", tool_server="search-srv", chio_client=client)
    def pipeline() -> dict:
        result = analyze_results([{}])
        delete_index()
        return result

    with pytest.raises(PermissionError) as info:
        pipeline()
    assert ran == ["analyze"]
    assert info.value.__cause__.guard == "flow-scope"
    assert "search-srv/delete_index" in info.value.__cause__.reason
    assert [c.tool_name for c in client.calls] == ["analyze_results"]


def test_wildcard_grants_cover_any_tool_of_the_server() -> None:
    client = allow_all()

    @chio_task(tool_server="search-srv")
    def anything() -> str:
        return "ran"

    @chio_flow(scope=ChioScope(grants=[grant("search-srv", "*")]), capability_id="cap-w", chio_client=client)
    def pipeline() -> str:
        return anything()

    assert pipeline() == "ran"


def test_standalone_task_needs_its_own_capability_id() -> None:
    """The seed's 'fails at decoration time' rule, enforced at call time (see docs/prefect.md)."""
    client = allow_all()
    ran: list[str] = []

    @chio_task(tool_server="srv", chio_client=client)  # decoration succeeds: it may run in a flow
    def double(x: int) -> int:
        ran.append("body")
        return x * 2

    with pytest.raises(PermissionError) as info:
        double(21)
    cause = info.value.__cause__
    assert isinstance(cause, ChioPrefectConfigError)
    assert "capability_id=" in cause.reason and "@chio_flow" in cause.reason
    assert client.calls == [] and ran == []  # denied before any kernel call

    @flow  # a plain Prefect flow gives no capability either
    def plain_flow() -> int:
        return double(21)

    with pytest.raises(PermissionError):
        plain_flow()
    assert client.calls == [] and ran == []

    @chio_task(tool_server="srv", capability_id="cap-own", chio_client=client)
    def standalone(x: int) -> int:
        return x * 2

    assert standalone(21) == 42
    assert client.calls[0].capability_id == "cap-own"


def test_missing_tool_server_is_denied_with_what_to_pass() -> None:
    client = allow_all()

    @chio_task(capability_id="cap-x", chio_client=client)
    def nowhere() -> None:
        raise AssertionError("must not run")

    with pytest.raises(PermissionError) as info:
        nowhere()
    assert "tool_server=" in info.value.__cause__.reason
    assert client.calls == []


def test_task_capability_overrides_the_flows() -> None:
    client = allow_all()

    @chio_task(tool_server="search-srv", capability_id="cap-task")
    def search_documents(query: str) -> str:
        return query

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-flow", chio_client=client)
    def pipeline() -> str:
        return search_documents("q")

    assert pipeline() == "q"
    assert client.calls[0].capability_id == "cap-task"


def test_subflow_scope_must_be_a_subset_of_the_parent_scope() -> None:
    client = allow_all()
    inner_ran: list[str] = []

    @chio_task
    def search_documents(query: str) -> str:
        return query

    narrow = ChioScope(grants=[grant("search-srv", "search_documents")])
    wider = ChioScope(grants=[grant("search-srv", "*")])

    @chio_flow(scope=narrow)
    def inner_ok() -> str:
        governance = current_flow_governance()
        assert governance is not None and governance.parent is not None
        # capability, server and client are inherited from the parent flow
        assert (governance.capability_id, governance.tool_server) == ("cap-outer", "search-srv")
        inner_ran.append("ok")
        return search_documents("q")

    @chio_flow(scope=wider)
    def inner_escape() -> None:
        inner_ran.append("escape")

    @chio_flow
    def inner_inherits() -> str:
        assert current_flow_governance().scope == PIPELINE_SCOPE
        return search_documents("again")

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-outer", tool_server="search-srv", chio_client=client)
    def outer() -> list[str]:
        results = [inner_ok(), inner_inherits()]
        with pytest.raises(PermissionError) as info:
            inner_escape()
        assert info.value.__cause__.guard == "flow-scope"
        assert "inner_escape" in info.value.__cause__.reason
        return results

    assert outer() == ["q", "again"]
    assert inner_ran == ["ok"]  # the escaping sub-flow body never ran
    assert current_flow_governance() is None  # nothing leaks after the flow


def test_concurrent_flow_runs_in_threads_never_see_each_others_scope() -> None:
    client = allow_all()
    barrier = threading.Barrier(2, timeout=30)
    outcomes: dict[str, object] = {}

    @chio_task(tool_server="srv-a")  # granted by flow a's scope only
    def call_a() -> str:
        return "a"

    def make(name: str, server: str) -> object:
        @chio_flow(
            name=f"flow-{name}",
            scope=ChioScope(grants=[grant(server, "*")]),
            capability_id=f"cap-{name}",
            tool_server=server,
            chio_client=client,
        )
        def run() -> str:
            barrier.wait()  # both flow runs are inside their scope now
            governance = current_flow_governance()
            assert governance is not None and governance.capability_id == f"cap-{name}"
            return call_a()

        return run

    flows = {"a": make("a", "srv-a"), "b": make("b", "srv-b")}

    def worker(name: str) -> None:
        try:
            outcomes[name] = flows[name]()
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion below
            outcomes[name] = err

    threads = [threading.Thread(target=worker, args=(n,)) for n in flows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert outcomes["a"] == "a"
    assert isinstance(outcomes["b"], PermissionError)
    assert outcomes["b"].__cause__.guard == "flow-scope"
    assert "flow-b" in outcomes["b"].__cause__.reason
    assert [(c.capability_id, c.tool_server) for c in client.calls] == [("cap-a", "srv-a")]


async def test_concurrent_async_flow_runs_never_see_each_others_scope() -> None:
    client = allow_all()
    both_inside = asyncio.Event()
    inside: list[str] = []

    @chio_task
    async def report() -> str:
        governance = current_flow_governance()
        return f"{governance.capability_id}@{governance.tool_server}"

    @chio_task(tool_server="only-in-a")
    async def a_only() -> str:
        return "a-only"

    def make(name: str) -> object:
        @chio_flow(
            name=f"async-flow-{name}",
            scope=ChioScope(grants=[grant(f"srv-{name}", "*"), grant("only-in-a", "*")] if name == "a"
                            else [grant(f"srv-{name}", "*")]),
            capability_id=f"cap-{name}",
            tool_server=f"srv-{name}",
            chio_client=client,
        )
        async def run() -> list[str]:
            inside.append(name)
            if len(inside) == 2:
                both_inside.set()
            await asyncio.wait_for(both_inside.wait(), 30)
            out = [await report()]
            try:
                out.append(await a_only())
            except PermissionError as err:
                out.append(f"denied:{err.__cause__.guard}")
            return out

        return run

    a, b = make("a"), make("b")
    result_a, result_b = await asyncio.gather(a(), b())
    assert result_a == ["cap-a@srv-a", "a-only"]
    assert result_b == ["cap-b@srv-b", "denied:flow-scope"]


def test_plain_prefect_subflow_keeps_the_envelope() -> None:
    client = allow_all()

    @chio_task(tool_server="fs-srv")
    def write_file(path: str) -> None:
        raise AssertionError("must not run")

    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> str:
        return query

    @flow
    def plain_subflow() -> str:
        with pytest.raises(PermissionError) as info:
            write_file("/x")
        assert info.value.__cause__.guard == "flow-scope"
        return search_documents("inside plain subflow")

    @chio_flow(scope=PIPELINE_SCOPE, capability_id="cap-outer", chio_client=client)
    def outer() -> str:
        return plain_subflow()

    assert outer() == "inside plain subflow"
    assert [(c.capability_id, c.tool_name) for c in client.calls] == [("cap-outer", "search_documents")]


def test_task_scope_must_grant_the_tasks_own_tool() -> None:
    client = allow_all()

    @chio_task(scope=ChioScope(grants=[grant("search-srv", "search_documents")]), tool_server="search-srv",
               capability_id="cap-own")
    def analyze_results() -> None:
        raise AssertionError("must not run")

    with pytest.raises(PermissionError) as info:  # standalone, with its own capability and scope
        analyze_results()
    assert info.value.__cause__.guard == "task-scope"
    assert "search-srv/analyze_results" in info.value.__cause__.reason
    assert client.calls == []
