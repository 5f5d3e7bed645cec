"""ChioActivityInterceptor on a real Temporal dev server with the real embedded kernel (LocalChioClient)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from chio_sdk.models import Constraint
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import workflows
from chio_kernel import LocalChioClient
from chio_temporal import (
    DENIED_ERROR_TYPE,
    ChioActivityInterceptor,
    ChioTemporalConfigError,
    WorkflowGrant,
)
from chio_temporal_kit import make_worker, outcome, plan, running, scope, start_plan, tool

pytestmark = pytest.mark.temporal



BANK = scope(tool("bank", "debit_account"), tool("bank", "credit_account"), tool("bank", "checkpoint"))


async def grant_for(chio: LocalChioClient, workflow_id: str, the_scope: Any = BANK, **kwargs: Any) -> WorkflowGrant:
    token = await chio.create_capability(subject="agent:my-pipeline", scope=the_scope, ttl_seconds=600)
    return WorkflowGrant(workflow_id=workflow_id, token=token, tool_server=kwargs.pop("tool_server", "bank"), **kwargs)


def denial(err: Any) -> dict[str, Any]:
    assert isinstance(err, ApplicationError), f"expected a failure, got {err!r}"
    assert err.type == DENIED_ERROR_TYPE
    assert err.non_retryable is True
    assert err.category == ApplicationErrorCategory.BENIGN  # through the server: logged at DEBUG, no traceback
    return err.details[0]


async def test_allowed_activities_run_with_named_parameters_and_signed_receipts(client: Client, chio, uid) -> None:
    wid, tq = uid("allow"), uid("tq")
    the_scope = scope(
        tool("files", "read_file"), tool("ledger", "ledger_post"), tool("mail", "send_email"), tool("bank", "*")
    )
    ic = ChioActivityInterceptor(
        chio_client=chio,
        default_tool_server="bank",
        activity_tool_server_map={"read_file": "files", "ledger_post": "ledger", "send_email": "mail"},
    )
    ic.register_workflow_grant(await grant_for(chio, wid, the_scope))
    async with running(make_worker(client, tq, [ic])):
        result = await outcome(
            await start_plan(
                client,
                tq,
                wid,
                plan(
                    ("read_file", ["/data/a.txt"]),
                    ("ledger_post", ["acct-1"]),
                    ("send_email", ["ops@example.com", "hi"]),
                    ("debit_account", ["acct-1", 7]),
                ),
            )
        )
    assert result == ["contents of /data/a.txt", "main: acct-1 none", "sent to ops@example.com", "debited 7 from acct-1"]
    # every body ran once, and saw the receipt id that authorised it (sync thread-pool activity too)
    assert [name for name, _, _ in workflows.CALLS] == ["read_file", "ledger_post", "send_email", "debit_account"]
    receipt_ids = [rid for _, _, rid in workflows.CALLS]
    assert all(rid and rid.startswith("rcpt-") for rid in receipt_ids)
    stored = [chio.kernel.get_receipt(rid) for rid in receipt_ids]
    assert [r.decision.verdict for r in stored] == ["allow"] * 4
    assert [(r.tool_server, r.tool_name) for r in stored] == [
        ("files", "read_file"),
        ("ledger", "ledger_post"),
        ("mail", "send_email"),
        ("bank", "debit_account"),
    ]
    # parameters bound by name to the activity's signature, defaults applied (bound method: no self)
    assert stored[0].action.parameters == {"path": "/data/a.txt", "limit": 100}
    assert stored[1].action.parameters == {"account": "acct-1", "memo": "none"}
    assert stored[2].action.parameters == {"to": "ops@example.com", "body": "hi"}
    assert stored[3].action.parameters == {"account": "acct-1", "amount": 7}
    assert all(chio.kernel.verify_receipt(r) for r in stored)
    envelope = ic.get_workflow_receipt(wid).to_envelope()
    assert [s["receipt_id"] for s in envelope["steps"]] == receipt_ids
    assert envelope["allow_count"] == 4 and envelope["deny_count"] == 0


async def test_no_grant_registered_fails_closed(client: Client, chio, uid) -> None:
    wid, tq = uid("nogrant"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["a", 1]))))
    details = denial(err)
    assert details["guard"] == "workflow-grant"
    assert "register_workflow_grant" in details["reason"] and wid in str(err)
    assert workflows.CALLS == []
    # issue 12 §2: no capability to evaluate, yet the denied attempt is a signed receipt in the chain
    [receipt] = chio.kernel.list_receipts()
    assert details["receipt_id"] == receipt.id and receipt.decision.is_denied
    assert (receipt.capability_id, receipt.tool_server, receipt.tool_name, receipt.decision.guard) == (
        "", "bank", "debit_account", "workflow-grant")
    assert chio.kernel.verify_receipt(receipt) and chio.kernel.verify_chain().ok
    [step] = ic.get_workflow_receipt(wid).steps
    assert step.receipt_id == receipt.id and step.verdict == "deny"


@pytest.mark.parametrize(
    ("case", "guard"),
    [
        ("scope", "scope"),
        ("revoked-before", "revocation"),
        ("max_invocations", "max_invocations"),
        ("constraint", "constraints"),
        ("foreign-token", "signature"),
        ("expired", "time"),
    ],
)
async def test_deny_per_guard(client: Client, chio, uid, case: str, guard: str, tmp_path: Any) -> None:
    wid, tq = uid(f"deny-{case}"), uid("tq")
    the_scope = BANK
    steps: list[tuple[str, list[Any]]] = [("debit_account", ["acct-src", 5])]
    if case == "scope":
        the_scope = scope(tool("bank", "credit_account"))
    elif case == "max_invocations":
        the_scope = scope(tool("bank", "debit_account", max_invocations=1))
        steps = [("debit_account", ["acct-src", 5]), ("debit_account", ["acct-src", 6])]
    elif case == "constraint":
        the_scope = scope(tool("bank", "debit_account", constraints=[Constraint.regex_match("^acct-src$")]))
        steps = [("debit_account", ["acct-src", 5]), ("debit_account", ["acct-other", 6])]
    if case == "foreign-token":  # minted by another kernel: this kernel does not know it
        async with LocalChioClient(data_dir=tmp_path / "other-kernel") as other:
            grant = await grant_for(other, wid, the_scope)
    elif case == "expired":
        token = await chio.create_capability(subject="agent:my-pipeline", scope=the_scope, ttl_seconds=1)
        grant = WorkflowGrant(workflow_id=wid, token=token, tool_server="bank")
        await asyncio.sleep(max(0.0, token.expires_at - time.time()) + 0.05)
    else:
        grant = await grant_for(chio, wid, the_scope)
    if case == "revoked-before":
        await chio.revoke_capability(grant.capability_id)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(*steps, max_attempts=3)))
    details = denial(err)
    assert details["guard"] == guard
    assert details["capability_id"] == grant.capability_id and details["workflow_id"] == wid
    receipt = chio.kernel.get_receipt(details["receipt_id"])
    assert receipt is not None and receipt.decision.verdict == "deny" and receipt.decision.guard == guard
    assert details["reason"] == receipt.decision.reason and details["receipt_id"] in str(err)
    # denied bodies never ran; a deny is not retried (one deny step, attempt 1 only)
    allowed_first = case in ("max_invocations", "constraint")
    assert len(workflows.CALLS) == (1 if allowed_first else 0)
    env = ic.get_workflow_receipt(wid).to_envelope()
    assert env["deny_count"] == 1 and env["steps"][-1]["attempts"] == [1]
    assert env["allow_count"] == (1 if allowed_first else 0)


async def test_revocation_mid_workflow_denies_the_next_activity(client: Client, chio, uid) -> None:
    wid, tq = uid("revoke-mid"), uid("tq")
    grant = await grant_for(chio, wid)
    workflows.CHECKPOINT_HOOKS["revoke"] = lambda: chio.revoke_capability(grant.capability_id)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(
            await start_plan(client, tq, wid, plan(("debit_account", ["a", 1]), ("checkpoint", ["revoke"]), ("debit_account", ["a", 2])))
        )
    assert denial(err)["guard"] == "revocation"
    assert [name for name, _, _ in workflows.CALLS] == ["debit_account", "checkpoint"]


async def test_seed_transfer_saga_compensates_a_denied_credit(client: Client, chio, uid) -> None:
    """Seed 001's TransferWorkflow verbatim: debit allowed, credit denied, compensating credit runs."""
    wid, tq = uid("transfer"), uid("tq")
    # credits only to the source account: the transfer's credit is denied, the refund is allowed
    the_scope = scope(
        tool("bank", "debit_account"),
        tool("bank", "credit_account", constraints=[Constraint.regex_match("^acct-src$")]),
    )
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(await grant_for(chio, wid, the_scope))
    async with running(make_worker(client, tq, [ic])):
        handle = await client.start_workflow(
            workflows.TransferWorkflow.run, workflows.Transfer("acct-src", "acct-dst", 25), id=wid, task_queue=tq
        )
        err = await outcome(handle)
    details = denial(err)
    assert details["guard"] == "constraints" and details["activity_type"] == "credit_account"
    assert details["tool_server"] == "bank" and details["tool_name"] == "credit_account"
    # debit ran, the denied credit to acct-dst never ran, the compensating credit to acct-src did
    assert [(name, args) for name, args, _ in workflows.CALLS] == [
        ("debit_account", ("acct-src", 25)),
        ("credit_account", ("acct-src", 25)),
    ]
    receipt = ic.finalize_workflow(workflow_id=wid, run_id=handle.result_run_id, outcome="failure")
    assert (receipt.step_count, receipt.allow_count, receipt.deny_count) == (3, 2, 1)
    assert [(s.activity_type, s.verdict) for s in receipt.steps] == [
        ("debit_account", "allow"),
        ("credit_account", "deny"),
        ("credit_account", "allow"),
    ]


async def test_retry_attempts_reuse_one_receipt(client: Client, chio, uid) -> None:
    wid, tq = uid("retry"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(await grant_for(chio, wid, scope(tool("bank", "flaky", max_invocations=1))))
    workflows.FAIL_FIRST_ATTEMPTS["t"] = 2
    async with running(make_worker(client, tq, [ic])):
        result = await outcome(await start_plan(client, tq, wid, plan(("flaky", ["t"]), max_attempts=5)))
    # three attempts ran under one allow receipt (max_invocations=1 was charged once)
    assert result == ["t ok on attempt 3"]
    assert [args for _, args, _ in workflows.CALLS] == [("t", 1), ("t", 2), ("t", 3)]
    receipt_ids = {rid for _, _, rid in workflows.CALLS}
    assert len(receipt_ids) == 1
    assert len(chio.kernel.list_receipts()) == 1
    env = ic.get_workflow_receipt(wid).to_envelope()
    assert env["step_count"] == 1 and env["steps"][0]["attempts"] == [1, 2, 3]
    assert env["steps"][0]["receipt_id"] == receipt_ids.pop()


async def test_grant_override_subset_runs_under_the_narrower_capability(client: Client, chio, uid) -> None:
    wid, tq = uid("override"), uid("tq")
    wide = scope(tool("bank", "debit_account"), tool("bank", "credit_account"), tool("db-readonly", "read_file"))
    grant = await grant_for(chio, wid, wide)
    narrower = await grant.attenuate_for_activity(
        chio, new_scope=scope(tool("db-readonly", "read_file")), tool_server="db-readonly"
    )
    assert narrower.workflow_id == wid and narrower.capability_id != grant.capability_id
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    seen: list[str] = []

    def override(info: Any) -> WorkflowGrant | None:
        seen.append(info.activity_type)
        return narrower

    ic.register_activity_grant_override("read_file", override)
    async with running(make_worker(client, tq, [ic])):
        result = await outcome(
            await start_plan(client, tq, wid, plan(("read_file", ["/x"]), ("debit_account", ["a", 1])))
        )
    assert result == ["contents of /x", "debited 1 from a"]
    assert seen == ["read_file"]
    steps = ic.get_workflow_receipt(wid).steps
    assert [(s.activity_type, s.capability_id, s.tool_server) for s in steps] == [
        ("read_file", narrower.capability_id, "db-readonly"),
        ("debit_account", grant.capability_id, "bank"),
    ]


async def test_grant_override_not_a_subset_is_a_config_error(client: Client, chio, uid) -> None:
    wid, tq = uid("override-bad"), uid("tq")
    grant = await grant_for(chio, wid, scope(tool("bank", "debit_account")))
    # attenuate refuses a wider scope up front
    with pytest.raises(ChioTemporalConfigError, match="not a subset"):
        await grant.attenuate_for_activity(chio, new_scope=scope(tool("bank", "credit_account")))
    # an override callable can only be checked when it returns: at the activity's first use
    other = await grant_for(chio, wid, scope(tool("bank", "credit_account")))
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    ic.register_activity_grant_override("credit_account", lambda info: other)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("credit_account", ["a", 1]), max_attempts=3)))
    assert isinstance(err, ApplicationError) and err.type == "ChioTemporalConfigError" and err.non_retryable
    assert "not a subset" in str(err) and other.capability_id in str(err)
    assert workflows.CALLS == []
    # issue 12 §2: the refused attempt is a signed deny in the chain, under the workflow's capability
    [receipt] = chio.kernel.list_receipts()
    assert (receipt.capability_id, receipt.tool_name, receipt.decision.guard) == (
        grant.capability_id, "credit_account", "grant-override")
    assert receipt.decision.is_denied and chio.kernel.verify_receipt(receipt) and chio.kernel.verify_chain().ok
    assert [s.receipt_id for s in ic.get_workflow_receipt(wid).steps] == [receipt.id]


async def test_concurrent_workflows_keep_separate_envelopes(client: Client, chio, uid) -> None:
    tq = uid("tq")
    sink: list[dict[str, Any]] = []
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank", receipt_sink=sink.append)
    ids = [uid(f"conc-{i}") for i in range(3)]
    for wid in ids:
        ic.register_workflow_grant(await grant_for(chio, wid))
    async with running(make_worker(client, tq, [ic])):
        handles = [
            await start_plan(client, tq, wid, plan(*[("debit_account", [wid, n]) for n in range(1, 4 + i)]))
            for i, wid in enumerate(ids)
        ]
        await asyncio.gather(*(h.result() for h in handles))
    for i, (wid, handle) in enumerate(zip(ids, handles, strict=True)):
        ic.finalize_workflow(workflow_id=wid, run_id=handle.result_run_id, outcome="success")
        env = await ic.flush_workflow_receipt(workflow_id=wid, run_id=handle.result_run_id)
        assert env["workflow_id"] == wid and env["run_id"] == handle.result_run_id
        assert env["step_count"] == 3 + i == env["allow_count"]
        # each envelope holds only its own workflow's calls
        receipts = [chio.kernel.get_receipt(s["receipt_id"]) for s in env["steps"]]
        assert {r.action.parameters["account"] for r in receipts} == {wid}
    assert [e["workflow_id"] for e in sink] == ids
    assert ic.pending_workflow_receipts() == []


async def test_child_workflow_envelope_lists_its_parent_chain(client: Client, chio, uid) -> None:
    wid, tq = uid("parent"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    grant = await grant_for(chio, wid)
    ic.register_workflow_grant(grant)
    ic.register_workflow_grant_prefix(WorkflowGrant(workflow_id=f"{wid}-child", token=grant.token, tool_server="bank"))
    grandchild = plan(("debit_account", ["gc", 1]))
    child = plan(("debit_account", ["c", 1]), children=[grandchild])
    async with running(make_worker(client, tq, [ic])):
        await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["p", 1]), children=[child])))
    parent_env = ic.get_workflow_receipt(wid).to_envelope()
    child_env = ic.get_workflow_receipt(f"{wid}-child-0").to_envelope()
    grandchild_env = ic.get_workflow_receipt(f"{wid}-child-0-child-0").to_envelope()
    assert parent_env["parent_workflow_ids"] == []
    assert child_env["parent_workflow_ids"] == [wid]
    assert grandchild_env["parent_workflow_ids"] == [wid, f"{wid}-child-0"]
    assert [e["step_count"] for e in (parent_env, child_env, grandchild_env)] == [1, 1, 1]


async def test_envelope_fields_counts_and_sink(client: Client, chio, uid) -> None:
    wid, tq = uid("envelope"), uid("tq")
    received: list[dict[str, Any]] = []

    async def sink(envelope: dict[str, Any]) -> None:
        received.append(envelope)

    ic = ChioActivityInterceptor(chio_client=chio, sidecar_url="http://127.0.0.1:9999", default_tool_server="bank", receipt_sink=sink)
    grant = await grant_for(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "flaky")))
    ic.register_workflow_grant(grant)
    async with running(make_worker(client, tq, [ic])):
        handle = await start_plan(
            client, tq, wid, plan(("debit_account", ["a", 1]), ("flaky", ["ok"]), ("credit_account", ["a", 1]))
        )
        err = await outcome(handle)
    assert denial(err)["guard"] == "scope"
    run_id = handle.result_run_id
    with pytest.raises(ChioTemporalConfigError, match="finalize_workflow"):
        await ic.flush_workflow_receipt(workflow_id=wid, run_id=run_id)
    with pytest.raises(ChioTemporalConfigError, match="outcome"):
        ic.finalize_workflow(workflow_id=wid, run_id=run_id, outcome="done")
    ic.finalize_workflow(workflow_id=wid, outcome="failure", metadata={"ticket": "T-1"})  # run_id inferred
    envelope = await ic.flush_workflow_receipt(workflow_id=wid, run_id=run_id)
    assert received == [envelope]
    assert set(envelope) == {
        "version", "workflow_id", "run_id", "parent_workflow_ids", "started_at", "completed_at",
        "outcome", "step_count", "allow_count", "deny_count", "steps", "metadata",
    }
    assert envelope["version"] == "chio-temporal/v1"
    assert (envelope["workflow_id"], envelope["run_id"], envelope["outcome"]) == (wid, run_id, "failure")
    assert envelope["started_at"] <= envelope["completed_at"] and envelope["completed_at"].endswith("Z")
    assert (envelope["step_count"], envelope["allow_count"], envelope["deny_count"]) == (3, 2, 1)
    assert [s["verdict"] for s in envelope["steps"]] == ["allow", "allow", "deny"]
    step = envelope["steps"][0]
    stored = chio.kernel.get_receipt(step["receipt_id"])
    assert step["parameter_hash"] == stored.action.parameter_hash and step["content_hash"] == stored.content_hash
    assert step["capability_id"] == grant.capability_id and step["activity_type"] == "debit_account"
    assert envelope["metadata"] == {
        "workflow_type": "PlanWorkflow",
        "namespace": "default",
        "task_queue": tq,
        "capability_id": grant.capability_id,
        "sidecar_url": "http://127.0.0.1:9999",
        "ticket": "T-1",
    }
    # flushed receipts leave memory; a second flush says so
    with pytest.raises(ChioTemporalConfigError, match="already flushed"):
        await ic.flush_workflow_receipt(workflow_id=wid, run_id=run_id)


async def test_failing_sink_keeps_the_receipt(client: Client, chio, uid) -> None:
    wid, tq = uid("sinkfail"), uid("tq")
    calls: list[dict[str, Any]] = []

    def flaky_sink(envelope: dict[str, Any]) -> None:
        calls.append(envelope)
        if len(calls) == 1:
            raise OSError("receipt store offline")

    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank", receipt_sink=flaky_sink)
    ic.register_workflow_grant(await grant_for(chio, wid))
    async with running(make_worker(client, tq, [ic])):
        await outcome(await start_plan(client, tq, wid, plan(("debit_account", ["a", 1]))))
    ic.finalize_workflow(workflow_id=wid, outcome="success")
    from chio_temporal import ChioTemporalError

    with pytest.raises(ChioTemporalError, match="receipt store offline"):
        await ic.flush_workflow_receipt(workflow_id=wid)
    assert ic.get_workflow_receipt(wid) is not None
    envelope = await ic.flush_workflow_receipt(workflow_id=wid)
    assert calls == [envelope, envelope] and ic.get_workflow_receipt(wid) is None


async def test_dynamic_activity_sends_raw_args(client: Client, chio, uid) -> None:
    wid, tq = uid("dynamic"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="tools")
    ic.register_workflow_grant(await grant_for(chio, wid, scope(tool("tools", "lookup")), tool_server=None))
    async with running(make_worker(client, tq, [ic])):
        result = await outcome(await start_plan(client, tq, wid, plan(("lookup", ["q", 3]))))
    assert result == ["dynamic lookup"]
    receipt = chio.kernel.get_receipt(workflows.CALLS[0][2])
    assert (receipt.tool_server, receipt.tool_name) == ("tools", "lookup")
    assert receipt.action.parameters == {"args": ["q", 3]}


async def test_surface_denials_off_leaves_temporals_plain_activity_error(client: Client, chio, uid) -> None:
    """With surface_denials=False workflows see Temporal's ActivityError: the seed's saga no longer compensates."""
    wid, tq = uid("plain"), uid("tq")
    the_scope = scope(tool("bank", "debit_account"))
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank", surface_denials=False)
    ic.register_workflow_grant(await grant_for(chio, wid, the_scope))
    async with running(make_worker(client, tq, [ic])):
        handle = await client.start_workflow(
            workflows.TransferWorkflow.run, workflows.Transfer("acct-src", "acct-dst", 1), id=wid, task_queue=tq
        )
        err = await outcome(handle)
    assert denial(err)["guard"] == "scope"
    assert [name for name, _, _ in workflows.CALLS] == ["debit_account"]  # no compensation ran
    assert [s.activity_type for s in ic.get_workflow_receipt(wid).steps] == ["debit_account", "credit_account"]


async def test_non_denial_activity_errors_are_untouched(client: Client, chio, uid) -> None:
    wid, tq = uid("boom"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(await grant_for(chio, wid, scope(tool("bank", "flaky"))))
    workflows.FAIL_FIRST_ATTEMPTS["b"] = 5
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("flaky", ["b"]), max_attempts=2)))
    assert err.type == "RuntimeError" and "transient failure on attempt 2" in str(err)
    env = ic.get_workflow_receipt(wid).to_envelope()
    assert env["step_count"] == 1 and env["steps"][0]["attempts"] == [1, 2]


async def test_local_activities_are_governed_too(client: Client, chio, uid) -> None:
    wid, tq = uid("local"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(await grant_for(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "flaky"))))
    workflows.FAIL_FIRST_ATTEMPTS["l"] = 1
    the_plan = workflows.Plan(
        steps=[
            workflows.Step("flaky", ["l"], local=True),
            workflows.Step("debit_account", ["a", 1], local=True),
            workflows.Step("credit_account", ["a", 1], local=True),
        ],
        max_attempts=3,
    )
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, the_plan))
    assert denial(err)["guard"] == "scope" and denial(err)["activity_type"] == "credit_account"
    assert [(name, args) for name, args, _ in workflows.CALLS] == [
        ("flaky", ("l", 1)),
        ("flaky", ("l", 2)),
        ("debit_account", ("a", 1)),
    ]
    # the local retry reused its receipt too
    assert len({rid for name, _, rid in workflows.CALLS if name == "flaky"}) == 1
    steps = ic.get_workflow_receipt(wid).steps
    assert [(s.activity_type, s.verdict, s.attempts) for s in steps] == [
        ("flaky", "allow", [1, 2]),
        ("debit_account", "allow", [1]),
        ("credit_account", "deny", [1]),
    ]


async def test_independent_subset_override_is_a_config_error(client: Client, chio, uid) -> None:
    wid, tq = uid("override-independent"), uid("tq")
    grant = await grant_for(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "credit_account")))
    # a subset scope, but minted on its own: revoking the workflow's capability would not stop it
    independent = await grant_for(chio, wid, scope(tool("bank", "credit_account")))
    assert independent.token.scope.is_subset_of(grant.token.scope)
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    ic.register_activity_grant_override("credit_account", lambda info: independent)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("credit_account", ["a", 1]), max_attempts=3)))
    assert isinstance(err, ApplicationError) and err.type == "ChioTemporalConfigError" and err.non_retryable
    assert "not derived from" in str(err) and independent.capability_id in str(err) and grant.capability_id in str(err)
    assert workflows.CALLS == []
    [receipt] = chio.kernel.list_receipts()  # the refused attempt, signed (issue 12 §2)
    assert receipt.decision.guard == "grant-override" and receipt.capability_id == grant.capability_id


async def test_revoking_the_workflow_capability_stops_a_derived_override(client: Client, chio, uid) -> None:
    wid, tq = uid("override-revoked"), uid("tq")
    grant = await grant_for(chio, wid, scope(tool("bank", "debit_account"), tool("bank", "credit_account")))
    derived = await grant.attenuate_for_activity(chio, new_scope=scope(tool("bank", "credit_account")))
    assert [link.capability_id for link in derived.token.delegation_chain] == [grant.capability_id]
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    ic.register_workflow_grant(grant)
    ic.register_activity_grant_override("credit_account", lambda info: derived)
    await chio.revoke_capability(grant.capability_id)
    async with running(make_worker(client, tq, [ic])):
        err = await outcome(await start_plan(client, tq, wid, plan(("credit_account", ["a", 1]))))
    assert isinstance(err, ApplicationError) and err.type == "ChioCapabilityDenied"
    assert err.details[0]["guard"] == "revocation" and err.details[0]["capability_id"] == derived.capability_id
    assert workflows.CALLS == []


async def test_pending_receipts_bound_applies_to_evaluated_runs(client: Client, chio, uid) -> None:
    tq = uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank", max_pending_receipts=2)
    the_scope = scope(tool("bank", "checkpoint"))
    wids = [uid(f"bounded-{i}") for i in range(3)]
    for wid in wids:
        ic.register_workflow_grant(await grant_for(chio, wid, the_scope))
    async with running(make_worker(client, tq, [ic])):
        for wid in wids:
            assert await outcome(await start_plan(client, tq, wid, plan(("checkpoint", ["x"])))) == ["x"]
    assert [r.workflow_id for r in ic.pending_workflow_receipts()] == wids[1:]
    assert len(chio.kernel.list_receipts()) == 3  # the signed receipts are all durable in the kernel


MEASUREMENTS: list[float] = []


@activity.defn
async def record_measurement(value: float) -> str:
    MEASUREMENTS.append(value)
    return f"recorded {value}"


async def test_kernel_rejected_request_is_a_non_retryable_request_rejected(client: Client, chio, uid) -> None:
    from chio_temporal import REJECTED_ERROR_TYPE

    wid, tq = uid("nan"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio)
    ic.register_workflow_grant(await grant_for(chio, wid, scope(tool("bank", "record_measurement"))))
    MEASUREMENTS.clear()
    async with running(make_worker(client, tq, [ic], activities=[*workflows.ALL_ACTIVITIES, record_measurement])):
        handle = await start_plan(client, tq, wid, plan(("record_measurement", [float("nan")]), max_attempts=3))
        err = await outcome(handle)
        assert isinstance(err, ApplicationError) and err.type == REJECTED_ERROR_TYPE == "ChioRequestRejected"
        assert err.non_retryable and "did not run" in str(err) and "NaN" in str(err)
        assert err.details[0]["activity_type"] == "record_measurement"
        scheduled = [e async for e in handle.fetch_history_events() if e.HasField("activity_task_started_event_attributes")]
        assert len(scheduled) == 1 and scheduled[0].activity_task_started_event_attributes.attempt == 1  # not retried
        # a finite value goes through
        wid2 = uid("finite")
        ic.register_workflow_grant(await grant_for(chio, wid2, scope(tool("bank", "record_measurement"))))
        assert await outcome(await start_plan(client, tq, wid2, plan(("record_measurement", [1.5])))) == ["recorded 1.5"]
    assert MEASUREMENTS == [1.5]
