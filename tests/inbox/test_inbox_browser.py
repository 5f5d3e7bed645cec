"""The inbox in a real browser (Debian's chromium, Playwright): sign in, a hostile parameter shown as
text, a forged POST refused, a workload credential turned away, an answer given in the CLI showing
up on the open page, approving with a click; and the screenshots of docs/inbox.md. The runs on a
real Temporal dev server and a real Prefect server: tests/temporal/test_inbox_temporal.py,
tests/prefect/test_inbox_prefect.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chio_kernel import Kernel
from chio_kernel.sidecar import create_app
from inbox_browser import ROOT, answer, chromium_page, screenshot, served, sign_in

pytestmark = pytest.mark.slow

SCRIPT = "<script>alert(1)</script>"
REFUND_CAP = {"grants": [
    {"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
     "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
     "max_total_cost": {"units": 500_000, "currency": "USD"}},
    {"server_id": "shop", "tool_name": "lookup", "operations": ["Invoke"]},
]}


def _pending(kernel: Kernel, cap: str, order: str, units: int, **metadata: str) -> str:
    receipt = kernel.evaluate(
        cap, "shop", "refund", {"order": order, "customer_note": SCRIPT, "lines": [{"sku": "A-1", "qty": 2}]},
        cost={"units": units, "currency": "USD"}, metadata=metadata or None,
    )
    return str(receipt.metadata["pending_approval"]["approval_id"])


async def test_the_inbox_in_chromium(chio_home: Path, tmp_path: Path) -> None:
    with Kernel(data_dir=chio_home) as kernel:
        cap = kernel.create_capability("agent:support-bot", REFUND_CAP, capability_id="cap-support-refunds").id
        kernel.evaluate(cap, "shop", "lookup", {"order": "o-1"})
        kernel.evaluate(cap, "shop", "delete_account", {"user": "u-1"})  # a deny, for the receipts view
        first = _pending(kernel, cap, "o-1841", 12_500, workflow_id="support-refund-o-1841", run_id="0199a1c2")
        second = _pending(kernel, cap, "o-1842", 4_000, flow_run_id="6f1c9a57-1a2b-4c3d-9e8f-0a1b2c3d4e5f")
        alice = kernel.add_credential("alice", "approver")
        worker = kernel.add_credential("worker-1", "workload")
        from chio_kernel.inbox import InboxSettings

        app = create_app(kernel, inbox=InboxSettings(temporal_ui="http://localhost:8233", prefect_ui="http://127.0.0.1:4200"))
        with served(app) as base:
            async with chromium_page() as page:
                # a workload credential cannot sign in
                await sign_in(page, base, worker)
                assert "cannot sign in" in await page.inner_text("[role=alert]")
                await sign_in(page, base, alice)
                assert await page.inner_text("h1") == "Pending approvals"
                assert "alice (approver)" in await page.inner_text("header")

                # newest first, everything shown, the hostile parameter as text (no dialog opened)
                ids = await page.eval_on_selector_all("article.approval", "els => els.map(e => e.id)")
                assert ids == [second, first]
                card = page.locator(f"article[id='{first}']")
                assert SCRIPT in await card.locator("pre.params").inner_text()
                assert await card.locator("pre.params script").count() == 0
                text = await card.inner_text()
                assert "USD 125.00" in text and "agent:support-bot" in text and "Temporal workflow" in text
                href = await card.locator("a[href*='support-refund-o-1841']").get_attribute("href")
                assert href == "http://localhost:8233/namespaces/default/workflows/support-refund-o-1841/0199a1c2/history"
                shot = await screenshot(page, "inbox.png", tmp_path)
                assert page.dialogs == []

                # a POST with the session cookie but without the CSRF token is refused
                forged = await page.request.post(f"{base}/ui/approvals/{first}/answer", form={"outcome": "approved"})
                assert forged.status == 403 and "CSRF" in await forged.text()
                assert kernel.get_approval(first)["status"] == "pending"  # type: ignore[index]

                # answered in the CLI while the page is open: the page says so
                cli = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "chio_kernel.cli", "approvals", "deny", second, "--reason", "duplicate",
                     "--data-dir", str(chio_home)],
                    capture_output=True, text=True, timeout=120, check=False,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])},
                )
                assert cli.returncode == 0, cli.stdout + cli.stderr
                other = page.locator(f"article[id='{second}']")
                await other.locator(".live", has_text="Answered: denied").wait_for(timeout=15_000)
                assert await other.locator("button.approve").is_disabled()

                # approve with a click: the resolution receipt names alice
                await answer(page, base, first, "approved", "refund within policy")
                resolution = await page.inner_text("section.resolution")
                assert "approved by alice" in resolution and "Signature verified" in resolution
                assert "has not run yet" in await page.inner_text("main")

                await page.goto(f"{base}/ui/receipts")
                assert "Chain verified" in await page.inner_text("p.chain")
                await screenshot(page, "receipts.png", tmp_path)
    assert shot.stat().st_size > 10_000
