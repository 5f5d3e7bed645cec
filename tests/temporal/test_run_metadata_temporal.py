"""On a real Temporal dev server: every activity receipt carries its run context, signed
(``workflow_id``, ``run_id``, ``activity_type``), so ``chio-durable receipts list --workflow-id ID
--json`` returns exactly that workflow's receipts, its recorded denials included (docs/temporal.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from chio_kernel import LocalChioClient
from chio_kernel.cli import app
from chio_temporal import ChioActivityInterceptor, WorkflowGrant
from chio_temporal_kit import make_worker, outcome, plan, running, scope, start_plan, tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))
from independent_verifier import assert_receipt_verifies  # noqa: E402

pytestmark = pytest.mark.temporal

BANK = scope(tool("bank", "debit_account"), tool("bank", "credit_account"))


def listed(chio_home: Path, workflow_id: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        app, ["receipts", "list", "--workflow-id", workflow_id, "--json", "--oldest-first", "--data-dir", str(chio_home)]
    )
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


async def test_activity_receipts_are_listed_by_their_workflow_id(
    client: Client, chio: LocalChioClient, chio_home: Path, uid: Any
) -> None:
    first, second, ungranted, tq = uid("meta-a"), uid("meta-b"), uid("meta-none"), uid("tq")
    ic = ChioActivityInterceptor(chio_client=chio, default_tool_server="bank")
    for workflow_id in (first, second):
        token = await chio.create_capability(subject="agent:meta", scope=BANK, ttl_seconds=600)
        ic.register_workflow_grant(WorkflowGrant(workflow_id=workflow_id, token=token, tool_server="bank"))
    async with running(make_worker(client, tq, [ic])):
        handles = [
            await start_plan(client, tq, first, plan(("debit_account", ["acct-1", 5]), ("credit_account", ["acct-2", 5]),
                                                     ("read_file", ["/etc/passwd"]))),  # the last: a kernel deny
            await start_plan(client, tq, second, plan(("debit_account", ["acct-3", 1]))),
            await start_plan(client, tq, ungranted, plan(("debit_account", ["acct-4", 1]))),  # no grant: recorded deny
        ]
        results = [await outcome(h) for h in handles]
    assert results[1] == ["debited 1 from acct-3"]
    run_ids = [(await h.describe()).run_id for h in handles]

    mine = listed(chio_home, first)
    assert [(r["tool_name"], r["decision"]["verdict"]) for r in mine] == [
        ("debit_account", "allow"), ("credit_account", "allow"), ("read_file", "deny"),
    ]
    for receipt in mine:
        assert receipt["metadata"] == {"workflow_id": first, "run_id": run_ids[0], "activity_type": receipt["tool_name"]}
        assert_receipt_verifies(receipt)
    assert [r["action"]["parameters"] for r in listed(chio_home, second)] == [{"account": "acct-3", "amount": 1}]
    none = listed(chio_home, ungranted)
    assert [(r["capability_id"], r["decision"]["verdict"]) for r in none] == [("", "deny")]
    assert none[0]["metadata"]["run_id"] == run_ids[2]
    assert chio.kernel.verify_chain().ok
