"""The browser tests' harness: Debian's chromium driven by Playwright's Python API (never a browser
that `playwright install` downloads), the sidecar app (the inbox at /ui) served by uvicorn on a free
loopback port, and the inbox's gestures (sign in, answer). Used by tests/inbox, tests/temporal and
tests/prefect."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where the browser tests save the screenshots docs/inbox.md shows.
SCREENSHOTS = ROOT / "docs" / "img"
UPDATE_SCREENSHOTS = "CHIO_UPDATE_SCREENSHOTS"
"""Set to 1 to write the screenshots into docs/img (docs/inbox.md shows them); otherwise a test run
leaves the working tree alone and writes them to a temporary directory."""
#: Debian's chromium (apt-get install -y chromium chromium-driver); $CHIO_CHROMIUM overrides.
CHROMIUM = os.environ.get("CHIO_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not found:
        pytest.skip("no chromium: `apt-get install -y chromium chromium-driver` (.ci/run does), or set $CHIO_CHROMIUM")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("no playwright: `pip install playwright` (in the test extra; never `playwright install`)")
    return found


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Any]:
    """A fresh page of a headless chromium; ``page.dialogs`` lists every alert/confirm it opened."""
    from playwright.async_api import async_playwright

    path = _chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=path, args=ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1180, "height": 900})
            page = await context.new_page()
            dialogs: list[str] = []

            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                asyncio.ensure_future(dialog.dismiss())

            page.on("dialog", on_dialog)
            page.dialogs = dialogs
            yield page
        finally:
            await browser.close()


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port (a thread); yields ``http://127.0.0.1:PORT``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def sign_in(page: Any, base: str, token: str) -> None:
    """Sign in on the inbox's page, as a person does: paste the credential, press Sign in."""
    await page.goto(f"{base}/ui/signin")
    await page.fill("#token", token)
    await page.click("form.signin button[type=submit]")
    await page.wait_for_load_state()


async def answer(page: Any, base: str, approval_id: str, outcome: str, reason: str) -> None:
    """Open the pending approvals, type a reason on this approval's card, press Approve or Deny."""
    await page.goto(f"{base}/ui/approvals")
    card = page.locator(f"article[id='{approval_id}']")
    await card.locator("input[name=reason]").fill(reason)
    await card.locator("button.approve" if outcome == "approved" else "button.deny").click()
    await page.wait_for_selector("section.resolution")


async def screenshot(page: Any, name: str, scratch: Path) -> Path:
    """Save a full-page PNG: into docs/img with ``CHIO_UPDATE_SCREENSHOTS=1``, else into ``scratch``."""
    where = SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS) == "1" else scratch
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    await page.screenshot(path=str(path), full_page=True)
    return path
