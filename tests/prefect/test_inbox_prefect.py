"""The approvals inbox in chromium against a governed agent paused on a real Prefect server: the
pending refund shows in the page with its flow run (a link into the Prefect UI); Approve there
resumes the flow run (the kernel's prefect waker), which calls the tool exactly once; Deny on
another tells the model; both resolution receipts are shown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chio_kernel import LocalChioClient
from chio_kernel.inbox import InboxSettings
from chio_kernel.sidecar import create_app
from inbox_browser import answer, chromium_page, served, sign_in
from test_prefect_agent_approvals import _paused_flow_run, _refund_run_waiting, waker

pytestmark = pytest.mark.slow
__all__ = ["waker"]  # the fixture, used by name


async def test_approve_and_deny_in_the_inbox_resume_prefect_flow_runs(
    chio_home: Path, waker: Callable[[Any], None]
) -> None:
    from chio_prefect._wake import wake

    waker(wake)  # what the chio.approval_wakers entry point "prefect" provides, installed in-process
    chio = LocalChioClient(data_dir=chio_home)
    alice = chio.kernel.add_credential("alice", "approver")
    inbox = create_app(chio.kernel, inbox=InboxSettings(prefect_ui="http://127.0.0.1:4200"))
    with served(inbox) as base:
        async with chromium_page() as page:
            await sign_in(page, base, alice)
            for outcome in ("approved", "denied"):
                script, governed, out, thread, approval_id = await asyncio.to_thread(_refund_run_waiting, chio)
                flow_run_id = await asyncio.to_thread(_paused_flow_run, approval_id)
                await page.goto(f"{base}/ui/approvals")
                card = page.locator(f"article[id='{approval_id}']")
                assert "Prefect flow run" in await card.inner_text()
                link = card.locator(f"a[href='http://127.0.0.1:4200/runs/flow-run/{flow_run_id}']")
                assert await link.count() == 1
                assert script.refunds == []

                await answer(page, base, approval_id, outcome, "refund ok" if outcome == "approved" else "not eligible")
                await asyncio.to_thread(thread.join, 60)
                assert not thread.is_alive(), "the answer in the inbox did not resume the paused flow run"
                assert "error" not in out, out.get("error")
                if outcome == "approved":
                    assert out["result"].output == "done: refunded o-9"
                    assert script.refunds == ["o-9"]  # exactly once, under the approval
                    await page.reload()
                    (allowed,) = [r for r in governed.receipts_of(out["result"]) if r.call.tool_name == "refund" and r.allowed]
                    assert allowed.evaluation.receipt_id in await page.inner_text("section.allowed")
                else:
                    assert script.refunds == []
                    assert "approval-denied" in out["result"].output  # the model is told
            await page.goto(f"{base}/ui/receipts?verdict=approval_resolution")
            table = await page.inner_text("table.receipts")
            resolutions = [a["resolution_receipt_id"] for a in chio.kernel.list_approvals(None)]
            assert len(resolutions) == 2 and all(r in table for r in resolutions)
    chio.kernel.close()
