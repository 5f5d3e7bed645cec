"""@chio_task: decoration-time errors, signature, Prefect options, sync/async, submit/map/fn, mocks."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from chio_sdk.testing import MockVerdict, allow_all, deny_all, with_policy
from prefect import flow, task
from prefect.cache_policies import INPUTS, NO_CACHE
from prefect.context import get_run_context

from chio_prefect import (
    ChioPrefectConfigError,
    ChioPrefectError,
    ChioSidecarUnavailable,
    chio_flow,
    chio_task,
)

SRV_SCOPE = ChioScope(
    grants=[ToolGrant(server_id="srv", tool_name="*", operations=[Operation.INVOKE])]
)


# --- decoration-time configuration errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"scope": {"grants": []}}, "ChioScope"),
        ({"scope": "search-srv"}, "ChioScope"),
        ({"tool_server": ""}, "tool_server"),
        ({"tool_server": 7}, "tool_server"),
        ({"capability_id": "  "}, "capability_id"),
        ({"chio_client": allow_all(), "sidecar_url": "http://127.0.0.1:9090"}, "pass one"),
        ({"chio_client": object()}, "evaluate_tool_call"),
        ({"sidecar_url": "127.0.0.1:9090"}, "http(s) URL"),
        ({"retrys": 3}, "unknown option(s) retrys"),
        ({"retry_condition_fn": "always"}, "Prefect rejected"),
    ],
)
def test_wrong_task_arguments_fail_at_decoration(kwargs: dict, says: str) -> None:
    def body(x: int) -> int:
        return x

    with pytest.raises(ChioPrefectConfigError) as info:
        chio_task(**kwargs)(body)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"scope": [ToolGrant(server_id="s", tool_name="t", operations=[Operation.INVOKE])]}, "ChioScope"),
        ({"chio_client": allow_all(), "sidecar_url": "http://x:1"}, "pass one"),
        ({"on_completion": 3}, "Prefect rejected"),
        ({"tags": ["a"]}, "unknown option(s) tags"),  # flows take no tags option
    ],
)
def test_wrong_flow_arguments_fail_at_decoration(kwargs: dict, says: str) -> None:
    def body() -> None:
        return None

    with pytest.raises(ChioPrefectConfigError) as info:
        chio_flow(**kwargs)(body)
    assert says in str(info.value)


def test_non_callables_and_generators_are_refused() -> None:
    with pytest.raises(ChioPrefectConfigError, match="decorates a function"):
        chio_task(tool_server="srv")(42)  # type: ignore[arg-type]
    with pytest.raises(ChioPrefectConfigError, match="tool_server='search-srv'"):
        chio_task("search-srv")  # type: ignore[call-overload]

    def gen():  # noqa: ANN202
        yield 1

    with pytest.raises(ChioPrefectConfigError, match="generator"):
        chio_task(tool_server="srv")(gen)


def test_config_error_is_a_value_error_and_a_chio_error() -> None:
    with pytest.raises(ValueError):
        chio_task(tool_server="")
    assert issubclass(ChioPrefectConfigError, ChioPrefectError)


# --- shape: signature, names, bare form ---------------------------------------------------------


def test_signature_name_and_doc_are_kept() -> None:
    def search_documents(query: str, limit: int = 5) -> list[dict]:
        """Search."""
        return []

    governed = chio_task(tool_server="srv")(search_documents)
    assert inspect.signature(governed) == inspect.signature(search_documents)
    assert governed.name == "search_documents"
    assert governed.__doc__ == "Search."
    assert inspect.signature(governed.fn) == inspect.signature(search_documents)

    async def fetch(url: str) -> str:
        return url

    governed_async = chio_task(tool_server="srv")(fetch)
    assert inspect.iscoroutinefunction(governed_async.fn)
    assert inspect.signature(governed_async) == inspect.signature(fetch)


def test_bare_decorators_take_everything_from_the_flow() -> None:
    client = allow_all()

    @chio_task
    def echo(text: str) -> str:
        return text

    @chio_flow
    def plain() -> str:
        return "flow ran"

    assert plain() == "flow ran"

    @chio_flow(scope=SRV_SCOPE, capability_id="cap-bare", tool_server="srv", chio_client=client)
    def pipeline() -> str:
        return echo("hi")

    assert pipeline() == "hi"
    call = client.calls_for("echo")[0]
    assert (call.tool_server, call.capability_id, call.parameters) == ("srv", "cap-bare", {"text": "hi"})


# --- evaluation before the body -------------------------------------------------------------------


def test_parameters_are_named_and_defaults_applied() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", capability_id="cap-p", chio_client=client)
    def search(query: str, limit: int = 5, *, exact: bool = False) -> int:
        return limit

    assert search("q", exact=True) == 5
    assert client.calls_for("search")[0].parameters == {"query": "q", "limit": 5, "exact": True}


def test_task_name_option_is_the_tool_name() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", capability_id="cap-n", chio_client=client, name="fetch_page")
    def fetch(url: str) -> str:
        return url

    assert fetch("u") == "u"
    assert [c.tool_name for c in client.calls] == ["fetch_page"]


def test_deny_from_mock_stops_the_body_and_carries_the_payload() -> None:
    ran: list[str] = []
    client = deny_all(reason="budget exceeded", guard="cost")

    @chio_task(tool_server="srv", capability_id="cap-d", chio_client=client)
    def double(x: int) -> int:
        ran.append("body")
        return x * 2

    with pytest.raises(PermissionError) as info:
        double(21)
    assert ran == []
    cause = info.value.__cause__
    assert isinstance(cause, ChioPrefectError)
    assert (cause.guard, cause.reason) == ("cost", "budget exceeded")
    assert cause.decision == {"verdict": "deny", "guard": "cost", "reason": "budget exceeded"}
    assert "budget exceeded" in str(info.value) and "srv/double" in str(info.value)


def test_deny_is_not_retried_by_default_but_other_failures_are() -> None:
    attempts: list[str] = []
    denying = deny_all(reason="no")

    @chio_task(tool_server="srv", capability_id="cap-r", chio_client=denying, retries=2, retry_delay_seconds=0)
    def denied() -> None:
        attempts.append("denied")

    with pytest.raises(PermissionError):
        denied()
    assert len(denying.calls) == 1  # evaluated once, never retried
    assert attempts == []

    flaky_calls: list[int] = []
    allowing = allow_all()

    @chio_task(tool_server="srv", capability_id="cap-r", chio_client=allowing, retries=2, retry_delay_seconds=0)
    def flaky() -> str:
        flaky_calls.append(1)
        if len(flaky_calls) < 3:
            raise RuntimeError("transient")
        return "ok"

    assert flaky() == "ok"
    assert len(flaky_calls) == 3
    assert len(allowing.calls) == 3  # every attempt is evaluated


def test_user_retry_condition_decides() -> None:
    denials = {"left": 2}

    def policy(tool: str, scope: dict, ctx: dict) -> MockVerdict:
        if denials["left"]:
            denials["left"] -= 1
            return MockVerdict.deny_verdict("too fast", guard="rate-limit-guard")
        return MockVerdict.allow_verdict()

    client = with_policy(policy)

    def retry_on_rate_limit(task, task_run, state) -> bool:  # noqa: ANN001
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, PermissionError) and isinstance(exc.__cause__, ChioPrefectError):
            return exc.__cause__.guard == "rate-limit-guard"
        return False

    @chio_task(
        tool_server="srv",
        capability_id="cap-rl",
        chio_client=client,
        retries=3,
        retry_delay_seconds=0,
        retry_condition_fn=retry_on_rate_limit,
    )
    def search(query: str) -> str:
        return f"found {query}"

    assert search("x") == "found x"
    assert [c.verdict.allow for c in client.calls] == [False, False, True]


def test_kernel_unreachable_does_not_run_the_body_and_is_retried() -> None:
    ran: list[int] = []
    url = "http://127.0.0.1:9"  # discard port: nothing listens

    @chio_task(tool_server="srv", capability_id="cap-u", sidecar_url=url, retries=1, retry_delay_seconds=0)
    def guarded() -> None:
        ran.append(1)

    state = guarded(return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ChioSidecarUnavailable) and isinstance(exc, ConnectionError)
    assert exc.url == url and url in str(exc)
    assert ran == []


class _UnreachableKernel:
    """A client whose transport always fails (counts the attempts that reached it)."""

    base_url = "http://127.0.0.1:1"  # only named in messages; never contacted

    def __init__(self) -> None:
        self.attempts = 0

    async def evaluate_tool_call(self, **_kwargs: object) -> None:
        self.attempts += 1
        raise ConnectionError("connection refused")


def test_unreachable_kernel_is_retried_by_the_default_condition() -> None:
    kernel = _UnreachableKernel()
    ran: list[int] = []

    @chio_task(tool_server="srv", capability_id="cap-u", chio_client=kernel, retries=2, retry_delay_seconds=0)
    def guarded() -> None:
        ran.append(1)

    with pytest.raises(ChioSidecarUnavailable) as info:
        guarded()
    assert kernel.attempts == 3  # first attempt + 2 retries: not a deny, so Prefect retries it
    assert info.value.url == kernel.base_url and ran == []


def test_default_client_is_the_seed_sidecar_address() -> None:
    from chio_prefect import _clients

    @chio_task(tool_server="srv", capability_id="cap-default-never-issued")
    def guarded() -> None:
        raise AssertionError("must not run")

    try:
        guarded.fn()
    except ChioSidecarUnavailable as err:  # nothing (or no kernel) listens on 9090: fail closed
        assert err.url == "http://127.0.0.1:9090"
    except PermissionError as err:  # a real sidecar runs on 9090 here: it denied the unknown capability
        assert isinstance(err.__cause__, ChioPrefectError)
    else:
        raise AssertionError("an unknown capability must never be allowed")
    # the call itself created the shared real client for the default address
    shared = _clients.clients_by_url["http://127.0.0.1:9090"]
    assert type(shared).__name__ == "SidecarClient" and shared.base_url == "http://127.0.0.1:9090"


# --- Prefect semantics: submit, map, fn, options ----------------------------------------------------


def test_submit_map_and_fn_are_governed() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", chio_client=client)
    def square(x: int) -> int:
        return x * x

    @chio_flow(scope=SRV_SCOPE, capability_id="cap-sm", chio_client=client)
    def pipeline() -> tuple[int, list[int]]:
        future = square.submit(3)
        mapped = square.map([1, 2, 4])
        return future.result(), [f.result() for f in mapped]

    assert pipeline() == (9, [1, 4, 16])
    assert sorted(c.parameters["x"] for c in client.calls) == [1, 2, 3, 4]

    # .fn is the governed function: outside Prefect, still evaluated (fail closed).
    denied = deny_all()

    @chio_task(tool_server="srv", capability_id="cap-fn", chio_client=denied)
    def raw(x: int) -> int:
        return x

    with pytest.raises(PermissionError):
        raw.fn(1)
    assert len(denied.calls) == 1


def test_prefect_options_reach_the_task_run() -> None:
    client = allow_all()
    seen: dict = {}

    @chio_task(
        tool_server="srv",
        capability_id="cap-o",
        chio_client=client,
        tags=["chio", "search"],
        retries=4,
        retry_delay_seconds=0,
        timeout_seconds=30,
        cache_policy=NO_CACHE,
        task_run_name="search-{query}",
    )
    def search(query: str) -> str:
        ctx = get_run_context()
        seen["tags"] = set(ctx.task_run.tags)
        seen["name"] = ctx.task_run.name
        seen["retries"] = ctx.task.retries
        seen["timeout"] = ctx.task.timeout_seconds
        seen["cache_policy"] = ctx.task.cache_policy
        return query

    assert search.retries == 4 and search.timeout_seconds == 30
    assert search("q") == "q"
    assert seen == {
        "tags": {"chio", "search"},
        "name": "search-q",
        "retries": 4,
        "timeout": 30,
        "cache_policy": NO_CACHE,
    }


def test_timeout_applies_to_the_governed_body() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", capability_id="cap-t", chio_client=client, timeout_seconds=0.3)
    async def slow() -> None:
        await asyncio.sleep(5)

    state = asyncio.run(slow(return_state=True))
    assert state.is_failed() and "TimedOut" in (state.name or "")
    assert len(client.calls) == 1


def test_cache_policy_passes_through() -> None:
    client = allow_all()
    runs: list[int] = []

    @chio_task(tool_server="srv", capability_id="cap-c", chio_client=client, cache_policy=INPUTS, persist_result=True)
    def cached(x: int) -> int:
        runs.append(x)
        return x

    @flow
    def twice() -> list[int]:
        return [cached(7), cached(7)]

    assert twice() == [7, 7]
    # The policy is kept, wrapped so that its key carries the receipt id (see
    # test_task_cache_boundary.py): two calls are two governed calls with their own receipts, so
    # the second does not reuse the first one's cache entry; each is checked once.
    from chio_prefect.decorators import ChioReceiptCachePolicy

    assert isinstance(cached.cache_policy, ChioReceiptCachePolicy) and cached.cache_policy.inner is INPUTS
    assert runs == [7, 7]
    assert len(client.calls) == 2


async def test_async_task_in_async_flow() -> None:
    client = allow_all()

    @chio_task(tool_server="srv", chio_client=client)
    async def search_documents(query: str) -> list[dict]:
        await asyncio.sleep(0)
        return [{"q": query}]

    @chio_task(tool_server="srv", chio_client=client)
    def analyze_results(documents: list[dict]) -> dict:
        return {"n": len(documents)}

    @chio_flow(scope=SRV_SCOPE, capability_id="cap-async", tool_server="srv", chio_client=client)
    async def pipeline(query: str) -> dict:
        docs = await search_documents(query)
        return analyze_results(docs)

    assert await pipeline("q") == {"n": 1}
    assert [c.tool_name for c in client.calls] == ["search_documents", "analyze_results"]


def test_plain_prefect_task_is_untouched() -> None:
    @task
    def plain(x: int) -> int:
        return x + 1

    @chio_flow(scope=SRV_SCOPE, capability_id="cap-plain", chio_client=deny_all())
    def pipeline() -> int:
        return plain(1)

    assert pipeline() == 2
