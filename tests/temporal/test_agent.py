"""ChioTemporalAgent on a real Temporal dev server with the real embedded kernel.

The agents (scripted ``FunctionModel``, counted tool bodies, an in-process FastMCP server) live in
``test_agent_app.py``; the workflows, what a user writes (``await governed.run(prompt)``), in
``agent_workflows.py``.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai import PydanticAIDeprecationWarning
from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin, TemporalDurability
from pydantic_ai.models.function import FunctionModel
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.workflow import ActivityConfig

import test_agent_app as app
from agent_workflows import (
    WORKFLOWS,
    SupportWorkflow,
    StrictWorkflow,
    LegacyWorkflow,
    BareWorkflow,
    TwoRunsWorkflow,
    MixedWorkflow,
    StreamingWorkflow,
    UserDurableWorkflow,
    LegacyDirectWorkflow,
    ListedSupportWorkflow,
    ListedUserDurableWorkflow,
)
from chio_kernel import LocalChioClient, SidecarClient
from chio_kernel.testing import SidecarProcess
from chio_temporal import DENIED_ERROR_TYPE, ChioTemporalConfigError, WorkflowGrant
from chio_temporal._agent import ChioTemporalAgent
from chio_temporal._seams import registered_activity_name


pytestmark = pytest.mark.temporal


# --- helpers -----------------------------------------------------------------------------------


def grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


MODEL = grant("model")
DOCS_LIST = grant("docs", "list_tools")


async def issue(chio: LocalChioClient, *grants: ToolGrant) -> str:
    token = await chio.create_capability(
        subject="agent:support", scope=ChioScope(grants=list(grants)), capability_id=app.CAPABILITY_ID
    )
    return token.id


@pytest.fixture
async def chio(chio_home) -> AsyncIterator[LocalChioClient]:
    async with LocalChioClient(data_dir=chio_home) as client:
        app.use_kernel(client)
        yield client


@pytest.fixture(scope="module")
async def client(temporal_env) -> Client:
    target = temporal_env.client.service_client.config.target_host
    return await Client.connect(target, namespace=temporal_env.client.namespace, plugins=[PydanticAIPlugin()])


@asynccontextmanager
async def worker(client: Client, *plugins: Any, task_queue: str | None = None, **options: Any) -> AsyncIterator[str]:
    task_queue = task_queue or f"agent-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[app.audit_note],
        plugins=list(plugins or [g.plugin for g in app.ALL_GOVERNED]),
        **options,
    ):
        yield task_queue


def wid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def scheduled(history: Any) -> list[str]:
    """The activity types a workflow history scheduled, in order."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def denied_cause(err: BaseException) -> ApplicationError:
    """The ChioCapabilityDenied ApplicationError in a workflow failure's cause chain."""
    seen = err
    while seen is not None:
        if isinstance(seen, ApplicationError) and seen.type == DENIED_ERROR_TYPE:
            return seen
        seen = seen.__cause__
    raise AssertionError(f"no {DENIED_ERROR_TYPE} in the cause chain of {err!r}")


# --- tests -------------------------------------------------------------------------------------


async def test_allowed_run_evaluates_every_call(client, chio):
    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    before = dict(app.CALLS)
    async with worker(client) as tq:
        workflow_id = wid("allowed")
        out = await client.execute_workflow(SupportWorkflow.run, "lookup:A,refund:A", id=workflow_id, task_queue=tq)

    assert out["output"] == "order A: shipped | refunded A"
    assert app.CALLS["model"] - before.get("model", 0) == 3
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1
    assert app.CALLS["refund"] - before.get("refund", 0) == 1
    # 3 model requests + 2 tool calls carry their receipt id in the recorded results
    assert len(out["receipt_ids"]) == 5 and len(set(out["receipt_ids"])) == 5
    receipts = [await chio.get_receipt(rid) for rid in out["receipt_ids"]]
    assert [(r.tool_server, r.tool_name) for r in receipts] == [
        ("model", "function:scripted_support_model:"),
        ("support", "lookup"),
        ("model", "function:scripted_support_model:"),
        ("support", "refund"),
        ("model", "function:scripted_support_model:"),
    ]
    assert all(r.decision.is_allowed for r in receipts)
    assert receipts[1].action.parameters == {"order_id": "A"}
    assert app.TOOL_RECEIPT_IDS[-1] == receipts[1].id  # the tool body, in its activity, knew its receipt
    # the envelope also has the MCP listing; nothing denied
    receipt = app.governed_support.interceptor.get_workflow_receipt(workflow_id)
    # 3 model requests + 2 tools + the MCP listing re-checked at each of the 3 steps (one receipt)
    assert receipt is not None and (receipt.step_count, receipt.allow_count, receipt.deny_count) == (8, 8, 0)
    assert set(out["receipt_ids"]) < set(receipt.receipt_ids)
    assert ("docs", "list_tools") in {(s.tool_server, s.tool_name) for s in receipt.steps}


async def test_denied_tool_tells_the_model_and_the_run_continues(client, chio):
    await issue(chio, MODEL, grant("support", "lookup"), DOCS_LIST)  # no refund
    before = dict(app.CALLS)
    async with worker(client) as tq:
        workflow_id = wid("tell")
        out = await client.execute_workflow(SupportWorkflow.run, "refund:B,lookup:B", id=workflow_id, task_queue=tq)

    denied_text, lookup_text = out["output"].split(" | ")
    assert denied_text.startswith("Permission denied: the call to support/refund was not run")
    assert "guard 'scope'" in denied_text
    assert lookup_text == "order B: shipped"  # the run went on after the deny
    assert app.CALLS["refund"] == before.get("refund", 0)  # the refund body never ran
    assert app.CALLS["model"] - before.get("model", 0) == 3
    receipt = app.governed_support.interceptor.get_workflow_receipt(workflow_id)
    assert receipt is not None and receipt.deny_count == 1
    (deny,) = [s for s in receipt.steps if not s.allowed]
    assert (deny.tool_server, deny.tool_name, deny.guard) == ("support", "refund", "scope")
    assert deny.receipt_id in denied_text  # the model was told which receipt
    stored = await chio.get_receipt(deny.receipt_id)
    assert stored is not None and not stored.decision.is_allowed


async def test_denied_tool_with_on_deny_raise_fails_the_workflow(client, chio):
    await issue(chio, MODEL, grant("strict", "lookup"))
    before = dict(app.CALLS)
    async with worker(client) as tq:
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                StrictWorkflow.run, "lookup:C,refund:C", id=wid("raise"), task_queue=tq,
                execution_timeout=timedelta(seconds=60),
            )
    denied = denied_cause(failure.value)
    assert denied.non_retryable
    facts = denied.details[0]
    assert (facts["tool_server"], facts["tool_name"], facts["guard"]) == ("strict", "refund", "scope")
    assert (await chio.get_receipt(facts["receipt_id"])).decision.verdict == "deny"
    assert app.CALLS["refund"] == before.get("refund", 0)
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1
    assert app.CALLS["model"] - before.get("model", 0) == 2  # nothing after the deny


async def test_denied_model_request_always_fails_the_workflow(client, chio):
    await issue(chio, grant("support"), DOCS_LIST)  # no model grant; on_deny="tell_model"
    before = dict(app.CALLS)
    async with worker(client) as tq:
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(SupportWorkflow.run, "lookup:D", id=wid("model-deny"), task_queue=tq)
    facts = denied_cause(failure.value).details[0]
    assert (facts["tool_server"], facts["guard"]) == ("model", "scope")
    assert app.CALLS["model"] == before.get("model", 0)  # the model was never called


async def test_revoked_capability_mid_workflow_denies_the_next_call(client, chio):
    cap = await issue(chio, MODEL, grant("support"), DOCS_LIST)
    before = dict(app.CALLS)
    async with worker(client) as tq:
        handle = await client.start_workflow(
            TwoRunsWorkflow.run, args=["lookup:E", "lookup:F"], id=wid("revoke"), task_queue=tq
        )
        for _ in range(200):
            if await handle.query(TwoRunsWorkflow.first_output):
                break
            await __import__("asyncio").sleep(0.05)
        assert await handle.query(TwoRunsWorkflow.first_output) == "order E: shipped"
        assert cap in await chio.revoke_capability(cap)
        await handle.signal(TwoRunsWorkflow.proceed)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    facts = denied_cause(failure.value).details[0]
    assert facts["guard"] == "revocation"
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1  # only the first run's lookup
    assert app.CALLS["model"] - before.get("model", 0) == 2  # only the first run's two model calls


async def test_mcp_tool_and_listing_are_governed(client, chio):
    await issue(chio, MODEL, DOCS_LIST, grant("docs", "search_docs"))
    before = dict(app.CALLS)
    async with worker(client) as tq:
        workflow_id = wid("mcp")
        out = await client.execute_workflow(SupportWorkflow.run, "search_docs:temporal", id=workflow_id, task_queue=tq)
    assert out["output"] == "docs about temporal"
    assert app.CALLS["search_docs"] - before.get("search_docs", 0) == 1
    receipts = [await chio.get_receipt(rid) for rid in out["receipt_ids"]]
    assert ("docs", "search_docs") in [(r.tool_server, r.tool_name) for r in receipts]
    steps = app.governed_support.interceptor.get_workflow_receipt(workflow_id).steps
    docs = [(s.tool_name, s.receipt_id) for s in steps if s.tool_server == "docs"]
    # the listing is evaluated before the first model request (and re-checked before each later one,
    # the same decision: one receipt); the MCP call once, after the listing allowed the server's tools
    assert docs[0][0] == "list_tools" and [name for name, _ in docs].count("search_docs") == 1
    assert len({rid for name, rid in docs if name == "list_tools"}) == 1


async def test_mcp_call_and_listing_denied(client, chio):
    # listing allowed, the call not: the model is told
    await issue(chio, MODEL, DOCS_LIST)
    before = dict(app.CALLS)
    async with worker(client) as tq:
        out = await client.execute_workflow(SupportWorkflow.run, "search_docs:x", id=wid("mcp-deny"), task_queue=tq)
    assert out["output"].startswith("Permission denied: the call to docs/search_docs was not run")
    assert app.CALLS["search_docs"] == before.get("search_docs", 0)


async def test_mcp_listing_denied_hides_the_servers_tools(client, chio):
    await issue(chio, MODEL, grant("support"))  # no docs grant at all
    app.SEEN_TOOLS.clear()
    async with worker(client) as tq:
        workflow_id = wid("mcp-hidden")
        out = await client.execute_workflow(SupportWorkflow.run, "lookup:G", id=workflow_id, task_queue=tq)
    assert out["output"] == "order G: shipped"
    assert app.SEEN_TOOLS and all("search_docs" not in tools for tools in app.SEEN_TOOLS)
    assert all("lookup" in tools for tools in app.SEEN_TOOLS)
    steps = app.governed_support.interceptor.get_workflow_receipt(workflow_id).steps
    docs = [s for s in steps if s.tool_server == "docs"]
    # denied before each of the 2 model requests (a deny is not reused: each check is signed), nothing else
    assert len(docs) == 2 and {(s.tool_name, s.verdict, s.guard) for s in docs} == {("list_tools", "deny", "scope")}


async def test_retry_attempts_reuse_one_receipt(client, chio):
    """A tool activity that fails once and succeeds on its retry was evaluated once: one evaluate
    activity, one kernel receipt for both attempts of the tool body."""
    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    before = dict(app.CALLS)
    async with worker(client) as tq:
        workflow_id = wid("retry")
        out = await client.execute_workflow(SupportWorkflow.run, "flaky:H", id=workflow_id, task_queue=tq)
    assert out["output"] == "flaky ok H"
    assert app.CALLS["flaky"] - before.get("flaky", 0) == 2  # attempt 1 failed, attempt 2 ran
    (step,) = [
        s for s in app.governed_support.interceptor.get_workflow_receipt(workflow_id).steps if s.tool_name == "flaky"
    ]
    assert step.attempts == [1] and step.allowed  # one evaluation (the evaluate activity's one attempt)
    flaky_receipts = [r for r in await chio.list_receipts(app.CAPABILITY_ID) if r.tool_name == "flaky"]
    assert [r.id for r in flaky_receipts] == [step.receipt_id]
    assert step.receipt_id in out["receipt_ids"]


async def test_receipt_ids_of_is_every_decision_of_the_run_once_with_a_told_deny_and_a_retry(client, chio):
    # Same meaning as ChioPrefectAgent.receipt_ids_of (tests/prefect/test_agent_prefect.py): every
    # decision on a call of the run, allow and deny, in order, each once.
    await issue(chio, MODEL, grant("support", "lookup"), grant("support", "flaky"), DOCS_LIST)  # no refund
    async with worker(client) as tq:
        workflow_id = wid("ids")
        out = await client.execute_workflow(SupportWorkflow.run, "refund:K,flaky:K", id=workflow_id, task_queue=tq)

    ids = out["receipt_ids"]
    chain = [r for r in await chio.list_receipts(app.CAPABILITY_ID) if r.tool_name != "list_tools"]
    assert ids == [r.id for r in chain]  # the kernel's chain order; the MCP listing is the envelope's
    assert [(r.tool_name, r.decision.is_allowed) for r in chain] == [
        ("function:scripted_support_model:", True),
        ("refund", False),  # told to the model: its receipt id is in the run's messages
        ("function:scripted_support_model:", True),
        ("flaky", True),  # attempt 1 failed, attempt 2 got the same receipt back: listed once
        ("function:scripted_support_model:", True),
    ]
    (flaky,) = [s for s in app.governed_support.interceptor.get_workflow_receipt(workflow_id).steps if s.tool_name == "flaky"]
    assert flaky.attempts == [1] and flaky.receipt_id == ids[3]  # evaluated once for both tool attempts


async def test_governed_history_replays_and_each_call_is_evaluated_first(client, chio):
    await issue(chio, MODEL, grant("support"), grant("bare"), DOCS_LIST)
    async with worker(client) as tq:
        governed_handle = await client.start_workflow(
            SupportWorkflow.run, "lookup:I,refund:I", id=wid("replay"), task_queue=tq
        )
        await governed_handle.result()
    # the same agent shape recorded with NO governance on the worker
    async with worker(client, AgentPlugin(app.bare_agent)) as tq:
        bare_handle = await client.start_workflow(BareWorkflow.run, "lookup:I,refund:I", id=wid("bare"), task_queue=tq)
        await bare_handle.result()

    governed_history = await governed_handle.fetch_history()
    bare_history = await bare_handle.fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, plugins=[PydanticAIPlugin(), *(g.plugin for g in app.ALL_GOVERNED)])
    assert (await replayer.replay_workflow(governed_history)).replay_failure is None
    assert (await replayer.replay_workflow(bare_history)).replay_failure is None

    evaluate = "agent__support__capability__chio__evaluate"
    governed_types = scheduled(governed_history)
    # every pydantic-ai activity is scheduled right after the evaluate activity that allowed it
    for index, activity_type in enumerate(governed_types):
        if activity_type != evaluate:
            assert index > 0 and governed_types[index - 1] == evaluate, governed_types
    # 3 model requests + 2 tool calls + the MCP listing checked before each of the 3 model requests
    assert governed_types.count(evaluate) == 8
    # apart from the evaluations: the ungoverned agent's activities, plus the governed agent's MCP listing
    assert [t for t in governed_types if t != evaluate] == [
        "agent__support__mcp_server__docs__get_tools",
        *[t.replace("bare", "support") for t in scheduled(bare_history)],
    ]


async def test_a_restarted_worker_replays_the_run_without_evaluating_again(client, chio):
    """The decisions are in the history: a new worker replays the first agent run (forced by a query)
    without one kernel evaluation, and evaluates only the calls made after the restart."""
    import asyncio

    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    decisions: list[Any] = []
    app.governed_support.transport.observers.append(decisions.append)  # every evaluation in an activity
    task_queue, workflow_id = f"restart-{uuid.uuid4().hex[:8]}", wid("restart")
    try:
        async with worker(client, task_queue=task_queue):
            handle = await client.start_workflow(
                TwoRunsWorkflow.run, args=["lookup:R", "lookup:S"], id=workflow_id, task_queue=task_queue,
                execution_timeout=timedelta(seconds=120),
            )
            for _ in range(200):
                if await handle.query(TwoRunsWorkflow.first_output):
                    break
                await asyncio.sleep(0.05)
        evaluated, receipts, calls = len(decisions), len(await chio.list_receipts(app.CAPABILITY_ID)), dict(app.CALLS)
        assert evaluated == scheduled(await handle.fetch_history()).count("agent__support__capability__chio__evaluate")
        async with worker(client, task_queue=task_queue):  # a new worker: nothing cached, the query replays
            assert await handle.query(TwoRunsWorkflow.first_output) == "order R: shipped"
            assert len(decisions) == evaluated and dict(app.CALLS) == calls
            assert len(await chio.list_receipts(app.CAPABILITY_ID)) == receipts
            await handle.signal(TwoRunsWorkflow.proceed)
            assert await handle.result() == "order S: shipped"
    finally:
        app.governed_support.transport.observers.remove(decisions.append)
    # the second run was evaluated once per governed call, nothing of the first run again
    history_evaluations = scheduled(await handle.fetch_history()).count("agent__support__capability__chio__evaluate")
    assert len(decisions) == history_evaluations == 2 * evaluated
    assert app.CALLS["lookup"] - calls.get("lookup", 0) == 1 and app.CALLS["model"] - calls.get("model", 0) == 2


async def test_existing_temporal_agent_is_rebuilt_governed_without_deprecation_warnings(client, chio):
    await issue(chio, MODEL, grant("legacy"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        governed = ChioTemporalAgent(app.legacy_agent, capability_id=app.CAPABILITY_ID, chio_client=chio)
        # rebuilt from the TemporalAgent's Agent: the governance on it, its own TemporalDurability bound after
        assert governed.durability is not None and governed.wrapped is not app.legacy_agent
        assert {registered_activity_name(fn) for fn in governed.temporal_activities} >= {
            "agent__legacy__model_request",
            "agent__legacy__toolset__<agent>__call_tool",
            "agent__legacy__capability__chio__evaluate",
        }
        async with worker(client) as tq:
            workflow_id = wid("legacy")
            out = await client.execute_workflow(LegacyWorkflow.run, "lookup:J", id=workflow_id, task_queue=tq)
    deprecations = [w for w in caught if issubclass(w.category, (DeprecationWarning, PydanticAIDeprecationWarning))]
    assert not deprecations, [str(w.message) for w in deprecations]
    assert out["output"] == "order J: shipped"
    assert len(out["receipt_ids"]) == 3
    receipt = app.governed_legacy.interceptor.get_workflow_receipt(workflow_id)
    assert receipt is not None and receipt.allow_count == 3
    assert [(s.tool_server, s.tool_name) for s in receipt.steps] == [
        ("model", "function:scripted_support_model:"),
        ("legacy", "lookup"),
        ("model", "function:scripted_support_model:"),
    ]


async def test_other_activities_governed_by_workflow_grants_on_the_same_interceptor(client, chio):
    await issue(chio, MODEL, grant("mixed"))
    audit = await chio.create_capability(
        subject="workflow:audit", scope=ChioScope(grants=[grant("audit", "audit_note")])
    )
    interceptor = app.governed_mixed.interceptor
    before = dict(app.CALLS)
    async with worker(client) as tq:
        granted = wid("mixed")
        interceptor.register_workflow_grant(WorkflowGrant(workflow_id=granted, token=audit, tool_server="audit"))
        out = await client.execute_workflow(MixedWorkflow.run, "lookup:K", id=granted, task_queue=tq)
        assert out == "noted lookup:K / order K: shipped"
        steps = interceptor.get_workflow_receipt(granted).steps
        assert [(s.tool_server, s.tool_name, s.capability_id) for s in steps][:2] == [
            ("audit", "audit_note", audit.id),
            ("model", "function:scripted_support_model:", app.CAPABILITY_ID),
        ]
        assert all(s.allowed for s in steps) and len(steps) == 4  # audit + model, lookup, model

        # no grant for this workflow: its plain activity is denied (fail closed), the agent never runs
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(MixedWorkflow.run, "lookup:L", id=wid("ungranted"), task_queue=tq)
    assert denied_cause(failure.value).details[0]["guard"] == "workflow-grant"
    assert app.CALLS["audit_note"] - before.get("audit_note", 0) == 1
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1


async def test_streamed_model_requests_are_governed_and_carry_their_receipt(client, chio):
    await issue(chio, MODEL, grant("streamer", "lookup"))
    app.STREAM_EVENTS.clear()
    async with worker(client) as tq:
        workflow_id = wid("stream")
        out = await client.execute_workflow(StreamingWorkflow.run, "lookup:T", id=workflow_id, task_queue=tq)
    assert out["output"] == "order T: shipped"
    assert app.STREAM_EVENTS  # the handler ran: the streaming path was taken
    steps = app.governed_streaming.interceptor.get_workflow_receipt(workflow_id).steps
    evaluate = "agent__streamer__capability__chio__evaluate"
    assert [(s.activity_type, s.tool_server) for s in steps] == [(evaluate, "model"), (evaluate, "streamer"), (evaluate, "model")]
    history = scheduled(await client.get_workflow_handle(workflow_id).fetch_history())
    assert [t for t in history if t not in (evaluate, "agent__streamer__event_stream_handler")] == [
        "agent__streamer__model_request_stream",
        "agent__streamer__toolset__<agent>__call_tool",
        "agent__streamer__model_request_stream",
    ]
    assert out["receipt_ids"] == [s.receipt_id for s in steps]  # stamped on the streamed responses too


async def test_through_the_real_sidecar_with_the_real_chio_client(client, chio_home):
    """The worker evaluates over HTTP (chio_kernel.SidecarClient -> sidecar subprocess): deny told, retry one receipt."""
    import asyncio

    sidecar = await asyncio.to_thread(SidecarProcess(chio_home).start)
    try:
        async with LocalChioClient(data_dir=chio_home) as issuer:  # same data dir as the sidecar's kernel
            await issue(issuer, MODEL, grant("support", "lookup"), grant("support", "flaky"), DOCS_LIST)
        http = SidecarClient(sidecar.url)
        app.use_kernel(http, app.governed_support)
        before = dict(app.CALLS)
        async with worker(client) as tq:
            workflow_id = wid("sidecar")
            out = await client.execute_workflow(SupportWorkflow.run, "flaky:S,refund:S", id=workflow_id, task_queue=tq)
        assert out["output"].startswith("flaky ok S | Permission denied: the call to support/refund was not run")
        assert app.CALLS["flaky"] - before.get("flaky", 0) == 2 and app.CALLS["refund"] == before.get("refund", 0)
        steps = app.governed_support.interceptor.get_workflow_receipt(workflow_id).steps
        (flaky,) = [s for s in steps if s.tool_name == "flaky"]
        assert flaky.attempts == [1]  # evaluated once over HTTP; both tool attempts under that one receipt
        async with LocalChioClient(data_dir=chio_home) as reader:
            stored = await reader.list_receipts(app.CAPABILITY_ID)
        assert [r.id for r in stored if r.tool_name == "flaky"] == [flaky.receipt_id]
        assert [r.decision.guard for r in stored if r.tool_name == "refund"] == ["scope"]
        assert set(out["receipt_ids"]) <= {r.id for r in stored}
        await http.close()
    finally:
        sidecar.stop()


# --- construction (no server) ------------------------------------------------------------------


def test_plain_agent_is_made_durable_with_options_passed_through():
    assert TemporalDurability.from_agent(app.support_agent) is None  # the user's agent is untouched
    durability = app.governed_support.durability
    assert durability is not None and TemporalDurability.from_agent(app.governed_support) is durability
    assert durability.activity_config["retry_policy"].initial_interval == timedelta(milliseconds=50)
    names = {registered_activity_name(fn) for fn in app.governed_support.temporal_activities}
    assert {
        "agent__support__model_request",
        "agent__support__toolset__<agent>__call_tool",
        "agent__support__mcp_server__docs__get_tools",
        "agent__support__mcp_server__docs__call_tool",
    } <= names


def test_bad_construction_says_what_to_pass():
    with pytest.raises(ChioTemporalConfigError, match="activity_config"):
        ChioTemporalAgent(
            app.bare_agent,
            capability_id="c",
            chio_client=app._placeholder,
            activity_config=ActivityConfig(start_to_close_timeout=timedelta(seconds=5)),
        )
    with pytest.raises(ChioTemporalConfigError, match="on_deny"):
        ChioTemporalAgent(app.support_agent, capability_id="c", chio_client=app._placeholder, on_deny="ignore")
    with pytest.raises(ChioTemporalConfigError, match="unique name"):
        ChioTemporalAgent(
            Agent(FunctionModel(app.scripted_support_model), name=None),
            capability_id="c",
            chio_client=app._placeholder,
            name=None,
        )
    with pytest.raises(ChioTemporalConfigError, match="capability_id"):
        ChioTemporalAgent(app.support_agent, capability_id="", chio_client=app._placeholder)
    with pytest.raises(ChioTemporalConfigError, match="Agent"):
        ChioTemporalAgent(object(), capability_id="c", chio_client=app._placeholder)  # type: ignore[arg-type]
    with pytest.raises(ChioTemporalConfigError, match="already a ChioTemporalAgent"):
        ChioTemporalAgent(app.governed_support, capability_id="c", chio_client=app._placeholder)


def test_worker_side_is_built_lazily_from_a_client_factory(chio_home):
    made: list[LocalChioClient] = []

    def factory() -> LocalChioClient:
        made.append(LocalChioClient(data_dir=chio_home))
        return made[-1]

    governed = ChioTemporalAgent(app.support_agent, capability_id="cap-lazy", chio_client=factory)
    assert made == []  # constructing (e.g. in a sandboxed workflow module) does no I/O
    assert governed.interceptor.chio_client is made[0] and governed.chio is made[0]
    assert governed.plugin is governed.plugin and len(made) == 1
    # a client class is a factory too (LocalChioClient() opens $CHIO_HOME)
    assert ChioTemporalAgent(app.support_agent, capability_id="c", chio_client=LocalChioClient).transport.client is None


async def test_outside_a_workflow_the_run_is_governed_in_process(chio_home):
    # No worker, no activities: pydantic-ai's durability is transparent here, so ChioGovernance steps in.
    async with LocalChioClient(data_dir=chio_home) as kernel:
        await issue(kernel, MODEL, grant("support", "lookup"))  # no refund, no docs
        governed = ChioTemporalAgent(app.support_agent, capability_id=app.CAPABILITY_ID, chio_client=kernel)
        before = dict(app.CALLS)
        result = await governed.run("lookup:M,refund:M")
        assert result.output.startswith("order M: shipped | Permission denied: the call to support/refund")
        assert app.CALLS["refund"] == before.get("refund", 0)
        verdicts = [(r.tool_server, r.tool_name, r.decision.verdict) for r in await kernel.list_receipts(app.CAPABILITY_ID)]
        assert ("support", "refund", "deny") in verdicts and ("support", "lookup", "allow") in verdicts
        assert ("docs", "list_tools", "deny") in verdicts  # listing denied: the docs tools were hidden
        ids = governed.receipt_ids_of(result)  # outside a workflow: every evaluation of the run
        assert ids == governed.local_governance.receipt_ids_of(result) and len(ids) >= 5


async def test_agent_plugin_of_the_governed_agent_runs_it_governed(client, chio):
    """pydantic-ai's own ``AgentPlugin(governed)`` hands out the governance's activities with the
    agent's: the run is governed as with governed.plugin (a deny is told, no ungoverned call runs).
    That plugin does not pass chio's packages through the sandbox as governed.plugin does; the worker
    does, as docs/temporal_agent.md says."""
    await issue(chio, MODEL, grant("support", "lookup"), DOCS_LIST)  # no refund
    before = dict(app.CALLS)
    chio_passed_through = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("chio_durable", "chio_kernel", "chio_sdk", "chio_temporal")
    )
    async with worker(client, AgentPlugin(app.governed_support), workflow_runner=chio_passed_through) as tq:
        out = await client.execute_workflow(
            SupportWorkflow.run, "lookup:Z,refund:Z", id=wid("agentplugin"), task_queue=tq,
            execution_timeout=timedelta(seconds=60),  # a workflow task that keeps failing ends the test
        )
    lookup_text, denied_text = out["output"].split(" | ")
    assert lookup_text == "order Z: shipped"
    assert denied_text.startswith("Permission denied: the call to support/refund was not run")
    assert app.CALLS["refund"] == before.get("refund", 0)
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1
    receipts = [await chio.get_receipt(rid) for rid in out["receipt_ids"]]
    assert [(r.tool_name, r.decision.is_allowed) for r in receipts] == [
        ("function:scripted_support_model:", True),
        ("lookup", True),
        ("function:scripted_support_model:", True),
        ("refund", False),
        ("function:scripted_support_model:", True),
    ]


# --- fail closed however the worker is assembled ------------------------------------------------


def _durability_of(agent: Any) -> Any:
    durability = TemporalDurability.from_agent(agent)
    assert durability is not None
    return durability


# name -> (workflow, worker options): every way pydantic-ai offers to put a governed agent's
# activities on a worker without governed.plugin. The client carries PydanticAIPlugin (so
# `__pydantic_ai_agents__` is read on every worker).
ASSEMBLIES: dict[str, tuple[Any, Any]] = {
    "AgentPlugin(governed)": (SupportWorkflow, lambda: {"plugins": [AgentPlugin(app.governed_support)]}),
    "PydanticAIPlugin, __pydantic_ai_agents__=[governed]": (ListedSupportWorkflow, lambda: {}),
    "activities=governed.temporal_activities": (
        SupportWorkflow, lambda: {"activities": app.governed_support.temporal_activities},
    ),
    "activities=durability.temporal_activities": (
        SupportWorkflow, lambda: {"activities": _durability_of(app.governed_support).temporal_activities},
    ),
    "user-made durable Agent, AgentPlugin(agent)": (
        UserDurableWorkflow, lambda: {"plugins": [AgentPlugin(app.user_durable_agent)]},
    ),
    "user-made durable Agent, __pydantic_ai_agents__=[agent]": (ListedUserDurableWorkflow, lambda: {}),
    "user-made durable Agent, activities=durability.temporal_activities": (
        UserDurableWorkflow, lambda: {"activities": _durability_of(app.user_durable_agent).temporal_activities},
    ),
    "TemporalAgent, AgentPlugin(agent)": (LegacyDirectWorkflow, lambda: {"plugins": [AgentPlugin(app.legacy_agent)]}),
    "TemporalAgent, activities=agent.temporal_activities": (
        LegacyDirectWorkflow, lambda: {"activities": app.legacy_agent.temporal_activities},
    ),
}


@pytest.mark.parametrize("assembly", list(ASSEMBLIES))
async def test_every_worker_assembly_without_governed_plugin_fails_closed(client, chio, assembly):
    """However the worker is assembled, nothing runs without the kernel's allow: a governed agent's
    activities come with its evaluate activity (with a capability that allows none of the agent's
    calls, the model request's deny fails the run and only evaluations are in the history), and the
    activities of a governed TemporalAgent refuse to run (non-retryable ChioTemporalConfigError)."""
    await issue(chio, grant("unrelated", "nothing"))  # allows none of the agents' calls
    workflow_class, options = ASSEMBLIES[assembly]
    options = options()
    before = dict(app.CALLS)
    task_queue = f"assembly-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[workflow_class],
        activities=list(options.get("activities", [])),
        plugins=list(options.get("plugins", [])),
    ):
        handle = await client.start_workflow(
            workflow_class.run, "lookup:Y", id=wid("assembly"), task_queue=task_queue,
            execution_timeout=timedelta(seconds=60),
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    for counter in ("model", "lookup", "search_docs"):  # nothing ran ungoverned
        assert app.CALLS.get(counter, 0) == before.get(counter, 0), counter
    receipts = await chio.list_receipts(app.CAPABILITY_ID)
    if assembly.startswith("TemporalAgent"):
        cause: BaseException | None = failure.value.cause
        while cause is not None and not (isinstance(cause, ApplicationError) and cause.type == "ChioTemporalConfigError"):
            cause = cause.__cause__
        assert isinstance(cause, ApplicationError) and cause.non_retryable, failure.value
        assert "governed.plugin" in str(cause)
        assert not receipts  # refused before any evaluation
        return
    facts = denied_cause(failure.value).details[0]
    assert (facts["tool_server"], facts["guard"]) == ("model", "scope")
    types = scheduled(await handle.fetch_history())
    assert types and all(t.endswith("__capability__chio__evaluate") for t in types), types
    assert receipts and not any(r.decision.is_allowed for r in receipts)


async def test_user_made_durable_agent_is_governed_by_governed_plugin(client, chio):
    """The agent the user made durable runs, evaluated, on a worker with governed.plugin."""
    await issue(chio, MODEL, grant("userdurable", "lookup"))
    before = dict(app.CALLS)
    async with worker(client, app.governed_bare.plugin) as tq:
        workflow_id = wid("userdurable")
        out = await client.execute_workflow(UserDurableWorkflow.run, "lookup:U", id=workflow_id, task_queue=tq)
    assert out == "order U: shipped"
    assert app.CALLS["lookup"] - before.get("lookup", 0) == 1
    receipt = app.governed_bare.interceptor.get_workflow_receipt(workflow_id)
    assert receipt is not None and receipt.allow_count == 3 and receipt.deny_count == 0
    assert [(s.tool_server, s.tool_name) for s in receipt.steps] == [
        ("model", "function:scripted_support_model:"),
        ("userdurable", "lookup"),
        ("model", "function:scripted_support_model:"),
    ]


async def test_denied_tool_result_is_what_pydantic_ai_makes_of_tool_failed(client, chio):
    """The model sees a denied tool exactly as pydantic-ai presents a tool that raised ToolFailed."""
    import dataclasses

    from pydantic_ai.exceptions import ToolFailed

    await issue(chio, MODEL, grant("support", "lookup"), DOCS_LIST)  # no refund
    app.TOOL_RESULTS.clear()
    async with worker(client) as tq:
        await client.execute_workflow(SupportWorkflow.run, "refund:Q", id=wid("shape"), task_queue=tq)
    (durable_part,) = [p for p in app.TOOL_RESULTS if p.tool_name == "refund"]
    message = durable_part.content
    assert isinstance(message, str) and message.startswith("Permission denied: the call to support/refund")

    async def refund(order_id: str) -> str:
        raise ToolFailed(message)

    app.TOOL_RESULTS.clear()
    await Agent(FunctionModel(app.scripted_support_model), name="inproc", tools=[refund]).run("refund:Q")
    (local_part,) = [p for p in app.TOOL_RESULTS if p.tool_name == "refund"]

    def seen(part: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(part).items() if k not in ("tool_call_id", "timestamp")}

    assert type(durable_part) is type(local_part)
    assert seen(durable_part) == seen(local_part)
    assert durable_part.model_response_str() == local_part.model_response_str()


async def test_agent_receipts_are_listed_by_their_workflow_id(client, chio, chio_home):
    """Each agent call's receipt carries the workflow's id and run id, signed: `chio-durable receipts
    list --workflow-id ID` returns exactly that workflow's receipts (docs/temporal.md)."""
    import json

    from typer.testing import CliRunner

    from chio_kernel.cli import app as cli

    await issue(chio, MODEL, grant("support"), DOCS_LIST)
    async with worker(client) as tq:
        first, second = wid("meta"), wid("meta")
        out = await client.execute_workflow(SupportWorkflow.run, "lookup:A,refund:A", id=first, task_queue=tq)
        other = await client.execute_workflow(SupportWorkflow.run, "lookup:B", id=second, task_queue=tq)
        run_id = (await client.get_workflow_handle(first).describe()).run_id

    def listed(workflow_id: str) -> list[dict[str, Any]]:
        result = CliRunner().invoke(cli, ["receipts", "list", "--workflow-id", workflow_id, "--json", "--oldest-first",
                                          "--data-dir", str(chio_home)])
        assert result.exit_code == 0, result.output
        return list(json.loads(result.stdout))

    mine = listed(first)
    # the run's calls, and its MCP tool listing (governed too, not a call of the run's result)
    assert [r["id"] for r in mine if r["tool_name"] != "list_tools"] == out["receipt_ids"]
    assert [r["tool_server"] for r in mine if r["tool_name"] == "list_tools"] == ["docs"]
    assert {(r["metadata"]["workflow_id"], r["metadata"]["run_id"]) for r in mine} == {(first, run_id)}
    theirs = listed(second)
    assert [r["id"] for r in theirs if r["tool_name"] != "list_tools"] == other["receipt_ids"]
    assert not {r["id"] for r in mine} & {r["id"] for r in theirs}
