"""The approvals inbox in chromium against a governed agent on a real Temporal dev server: the pending
refund shows in the page with its workflow; Approve there wakes the run (the kernel's temporal waker),
which calls the tool exactly once; Deny on another tells the model; both resolution receipts are
shown. The agents and workflows are test_agent.py's."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest

    import test_agent_app as app
    from chio_kernel.inbox import InboxSettings
    from chio_kernel.sidecar import create_app
    from inbox_browser import answer, chromium_page, served, sign_in
    from test_agent import DOCS_LIST, MODEL, SupportWorkflow, chio, client, grant, issue, wid, worker
    from test_temporal_agent_approvals import REFUND_NEEDS_A_PERSON, _waiting

pytestmark = [pytest.mark.temporal, pytest.mark.slow]
__all__ = ["chio", "client"]  # the fixtures, used by name


async def test_approve_and_deny_in_the_inbox_resume_temporal_runs(client: Any, chio: Any) -> None:
    await issue(chio, MODEL, grant("support", "lookup"), REFUND_NEEDS_A_PERSON, DOCS_LIST)
    alice = chio.kernel.add_credential("alice", "approver")
    before = app.CALLS.get("refund", 0)
    inbox = create_app(chio.kernel, inbox=InboxSettings(temporal_ui="http://localhost:8233"))
    async with worker(client) as tq:
        approved = await client.start_workflow(SupportWorkflow.run, "refund:Z", id=wid("inbox-approve"), task_queue=tq)
        denied = await client.start_workflow(SupportWorkflow.run, "refund:Y", id=wid("inbox-deny"), task_queue=tq)
        (to_approve,) = await _waiting(approved)
        (to_deny,) = await _waiting(denied)
        with served(inbox) as base:
            async with chromium_page() as page:
                await sign_in(page, base, alice)
                card = page.locator(f"article[id='{to_approve['approval_id']}']")
                text = await card.inner_text()
                assert "refund" in text and "support" in text and approved.id in text and "agent:support" in text
                assert await card.locator(f"a[href*='/workflows/{approved.id}/']").count() == 1
                assert app.CALLS.get("refund", 0) == before  # nothing ran while waiting

                await answer(page, base, to_approve["approval_id"], "approved", "refund ok")
                out = await asyncio.wait_for(approved.result(), 60)
                assert out["output"] == "refunded Z"
                assert app.CALLS["refund"] - before == 1  # exactly once, under the approval
                # once the call ran, its allow receipt is on the approval's page
                await page.reload()
                allow = await page.inner_text("section.allowed")
                (refund_id,) = [i for i in out["receipt_ids"] if (await chio.get_receipt(i)).tool_name == "refund"]
                assert refund_id in allow

                await answer(page, base, to_deny["approval_id"], "denied", "not eligible")
                told = await asyncio.wait_for(denied.result(), 60)
                assert "approval-denied" in told["output"]  # the model is told
                assert app.CALLS["refund"] - before == 1

                await page.goto(f"{base}/ui/receipts?verdict=approval_resolution")
                table = await page.inner_text("table.receipts")
                for waited in (to_approve, to_deny):
                    resolution = chio.kernel.get_approval(waited["approval_id"])["resolution_receipt_id"]
                    assert resolution in table
