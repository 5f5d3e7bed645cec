"""The approvals inbox over HTTP (the sidecar's app, its /ui mount), without a browser: sign-in and
its refusals, CSRF, escaping, answers and their 409s, the views, the security headers
(docs/inbox.md). The browser tests (test_inbox_browser.py, tests/temporal, tests/prefect) drive the
same pages in chromium."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from chio_kernel import Kernel
from chio_kernel.sidecar import create_app

SCRIPT = "<script>alert(1)</script>"
REFUND_CAP = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
    "max_total_cost": {"units": 100_000, "currency": "USD"},
}]}


@pytest.fixture
def kernel(chio_home: Path) -> Iterator[Kernel]:
    with Kernel(data_dir=chio_home) as k:
        yield k


@pytest.fixture
def browser(kernel: Kernel) -> TestClient:
    """An HTTP client on the sidecar app (the inbox at /ui), holding cookies like a browser."""
    return TestClient(create_app(kernel), base_url="http://127.0.0.1:9090")


def _pending(kernel: Kernel, order: str = "A-1", **metadata: str) -> str:
    cap = kernel.create_capability("agent:refunds", REFUND_CAP).id
    receipt = kernel.evaluate(
        cap, "shop", "refund", {"order": order, "note": SCRIPT}, cost={"units": 500, "currency": "USD"},
        metadata=metadata or None,
    )
    return str(receipt.metadata["pending_approval"]["approval_id"])


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _alert(html: str) -> str:
    found = re.search(r'role="alert">([^<]+)<', html)
    assert found, html[:2000]
    return found.group(1)


def sign_in(client: TestClient, token: str) -> Any:
    form = client.get("/ui/signin")
    return client.post("/ui/signin", data={"token": token, "csrf": _csrf(form.text)}, follow_redirects=False)


def test_every_page_needs_a_sign_in_and_the_sign_in_page_carries_the_security_headers(browser: TestClient) -> None:
    for path in ("/ui/approvals", "/ui/receipts", "/ui/budgets", "/ui/webhooks", "/ui/approvals/apr-x"):
        answer = browser.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/ui/signin"), path
    page = browser.get("/ui/signin")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie and "Secure" not in cookie


def test_the_session_cookie_is_secure_over_tls(kernel: Kernel) -> None:
    client = TestClient(create_app(kernel), base_url="https://inbox.example")
    assert "Secure" in client.get("/ui/signin").headers["set-cookie"]


def test_an_approver_signs_in_a_workload_cannot_and_an_unknown_token_is_refused(
    kernel: Kernel, browser: TestClient
) -> None:
    worker = kernel.add_credential("worker-1", "workload")
    refused = sign_in(browser, worker)
    assert refused.status_code == 403
    assert "workload credential cannot sign in" in _alert(refused.text)
    assert browser.get("/ui/approvals", follow_redirects=False).status_code == 303  # still signed out
    unknown = sign_in(browser, "chio_approver_" + "x" * 43)
    assert unknown.status_code == 401 and "unknown or revoked" in _alert(unknown.text)
    ok = sign_in(browser, kernel.add_credential("alice", "approver"))
    assert (ok.status_code, ok.headers["location"]) == (303, "/ui/approvals")
    page = browser.get("/ui/approvals")
    assert page.status_code == 200 and "alice (approver)" in page.text
    assert "No approvals are waiting" in page.text


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(kernel: Kernel, browser: TestClient) -> None:
    token = kernel.add_credential("alice", "approver")
    browser.get("/ui/signin")
    assert browser.post("/ui/signin", data={"token": token}).status_code == 403  # sign-in needs it too
    assert sign_in(browser, token).status_code == 303
    aid = _pending(kernel)
    for data in ({"outcome": "approved"}, {"outcome": "approved", "csrf": "forged"}):
        refused = browser.post(f"/ui/approvals/{aid}/answer", data=data)
        assert refused.status_code == 403 and "CSRF" in _alert(refused.text)
    cross = browser.post(
        f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(browser.get("/ui/approvals").text)},
        headers={"origin": "https://evil.example"},
    )
    assert cross.status_code == 403 and "another site" in _alert(cross.text)
    assert kernel.get_approval(aid)["status"] == "pending"  # type: ignore[index]
    assert browser.post("/ui/signout", data={}).status_code == 403


def test_a_pending_approval_shows_everything_escaped_and_is_answered_once(kernel: Kernel, browser: TestClient) -> None:
    sign_in(browser, kernel.add_credential("alice", "approver"))
    aid = _pending(kernel, workflow_id="refund-wf-1", run_id="run-1")
    page = browser.get("/ui/approvals").text
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # text, never HTML
    assert "USD 5.00" in page and "agent:refunds" in page and "refund-wf-1" in page and aid in page
    assert "Expires" in page and "one approver" in page
    done = browser.post(
        f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "reason": "refund ok", "csrf": _csrf(page)},
    )
    assert done.status_code == 200 and "Resolution receipt" in done.text and "Signature verified" in done.text
    assert "has not run yet" in done.text
    assert "Answered: approved by alice at" in done.text  # by name, never a key
    resolution = kernel.get_approval(aid)
    assert resolution is not None and resolution["status"] == "approved"
    receipt = kernel.get_receipt(resolution["resolution_receipt_id"])
    assert receipt is not None and receipt.metadata["approval_resolution"]["approver"] == "alice"
    again = browser.post(f"/ui/approvals/{aid}/answer", data={"outcome": "denied", "csrf": _csrf(done.text)})
    assert again.status_code == 409 and "already answered" in _alert(again.text)


def test_an_approval_answered_in_the_cli_shows_as_answered(kernel: Kernel, browser: TestClient, chio_home: Path) -> None:
    sign_in(browser, kernel.add_credential("alice", "approver"))
    aid = _pending(kernel)
    page = browser.get("/ui/approvals").text  # open, with its form
    assert browser.get(f"/ui/approvals/{aid}/state").json()["status"] == "pending"
    cli = subprocess.run(
        [sys.executable, "-m", "chio_kernel.cli", "approvals", "deny", aid, "--reason", "not eligible",
         "--data-dir", str(chio_home)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    state = browser.get(f"/ui/approvals/{aid}/state").json()
    assert state["status"] == "denied" and "not eligible" in state["text"]
    assert "denied by os:" in state["text"]  # the CLI answers as the operator named after the OS user
    late = browser.post(f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(page)})
    assert late.status_code == 409 and "already answered" in _alert(late.text)


def test_an_expired_approval_is_shown_as_expired_and_cannot_be_answered(chio_home: Path) -> None:
    now = [1_000_000.0]
    with Kernel(data_dir=chio_home, clock=lambda: now[0], approval_ttl=60) as kernel:
        client = TestClient(create_app(kernel), base_url="http://127.0.0.1:9090")
        sign_in(client, kernel.add_credential("alice", "approver"))
        aid = _pending(kernel)
        page = client.get("/ui/approvals").text
        now[0] += 120
        late = client.post(f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(page)})
        assert late.status_code == 409 and "expired" in _alert(late.text)
        assert "No approvals are waiting" in client.get("/ui/approvals").text


def test_a_revoked_credential_is_signed_out_at_its_next_click(kernel: Kernel, browser: TestClient) -> None:
    sign_in(browser, kernel.add_credential("alice", "approver"))
    assert browser.get("/ui/approvals").status_code == 200
    kernel.revoke_credential("alice")  # in this process: at once
    assert browser.get("/ui/approvals", follow_redirects=False).headers["location"] == "/ui/signin"


def test_receipts_filters_chain_status_and_budgets_in_currency(kernel: Kernel, browser: TestClient) -> None:
    sign_in(browser, kernel.add_credential("alice", "approver"))
    aid = _pending(kernel, workflow_id="wf-7")
    cap = str(kernel.get_approval(aid)["capability_id"])  # type: ignore[index]
    kernel.evaluate(cap, "shop", "other_tool", {})  # a deny
    all_rows = browser.get("/ui/receipts").text
    assert "Chain verified: 2 receipts" in all_rows and "pending_approval" in all_rows
    denies = browser.get("/ui/receipts", params={"verdict": "deny"}).text
    assert "<td>shop/other_tool</td>" in denies and "<td>shop/refund</td>" not in denies
    by_run = browser.get("/ui/receipts", params={"run": "wf-7"}).text
    assert "<td>shop/refund</td>" in by_run and "<td>shop/other_tool</td>" not in by_run
    assert "No receipts match" in browser.get("/ui/receipts", params={"capability": "cap-none"}).text
    kernel.respond_approval(aid, "approved", "ok")  # the resolution carries the run's context
    answered = browser.get("/ui/receipts", params={"run": "wf-7", "verdict": "approval_resolution"}).text
    assert "<td>shop/refund</td>" in answered and "wf-7" in answered
    bad = browser.get("/ui/receipts", params={"verdict": "<b>"})
    assert bad.status_code == 422 and "<b>" not in bad.text
    budgets = browser.get("/ui/budgets").text
    assert "USD 1,000.00" in budgets and "shop/refund" in budgets


def test_an_unknown_approval_and_an_unavailable_kernel_are_sentences(kernel: Kernel, browser: TestClient) -> None:
    sign_in(browser, kernel.add_credential("alice", "approver"))
    missing = browser.get("/ui/approvals/apr-nope")
    assert missing.status_code == 404 and "no approval apr-nope" in _alert(missing.text)
    kernel.close()
    down = browser.get("/ui/approvals")
    assert down.status_code == 503 and "kernel is unavailable" in _alert(down.text)


def test_the_sidecar_token_does_not_lock_the_inbox_and_still_guards_the_api(kernel: Kernel) -> None:
    client = TestClient(create_app(kernel, token="s3cret"), base_url="http://127.0.0.1:9090")
    assert client.get("/approvals/pending").status_code == 401
    assert client.get("/ui/signin").status_code == 200  # people sign in with their own credentials
    assert sign_in(client, kernel.add_credential("alice", "approver")).status_code == 303


def test_in_roles_mode_the_api_needs_credentials_and_nobody_approves_their_own_call(kernel: Kernel) -> None:
    client = TestClient(create_app(kernel, auth="roles"), base_url="http://127.0.0.1:9090")
    assert client.get("/approvals/pending").status_code == 401  # the API: a credential on every request
    ops = kernel.add_credential("ops", "operator")
    cap = kernel.create_capability("agent:refunds", REFUND_CAP).id
    asked = client.post(
        "/v1/evaluate", headers={"authorization": f"Bearer {ops}", "x-chio-pending": "understood"},
        json={"capability_id": cap, "tool_server": "shop", "tool_name": "refund", "parameters": {"order": "o-1"},
              "cost": {"units": 500, "currency": "USD"}},
    )
    assert asked.status_code == 200, asked.text
    aid = asked.json()["metadata"]["pending_approval"]["approval_id"]
    sign_in(client, ops)  # the inbox: its own sign-in, no bearer header
    page = client.get("/ui/approvals").text
    own = client.post(f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(page)})
    assert own.status_code == 403 and "not recorded" in _alert(own.text)
    assert kernel.get_approval(aid)["status"] == "pending"  # type: ignore[index]
    other = TestClient(create_app(kernel, auth="roles"), base_url="http://127.0.0.1:9090")
    sign_in(other, kernel.add_credential("bob", "approver"))
    done = other.post(f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(other.get("/ui/approvals").text)})
    assert done.status_code == 200 and "approved by bob" in done.text


def test_a_second_approver_is_shown_and_needed(kernel: Kernel, browser: TestClient) -> None:
    scope = {"grants": [{**REFUND_CAP["grants"][0], "constraints": [
        {"type": "require_approval_above", "value": {"threshold_units": 100, "approvers": 2}}]}]}
    cap = kernel.create_capability("agent:refunds", scope).id
    receipt = kernel.evaluate(cap, "shop", "refund", {"order": "o-2"}, cost={"units": 500, "currency": "USD"})
    aid = receipt.metadata["pending_approval"]["approval_id"]  # type: ignore[index]
    sign_in(browser, kernel.add_credential("alice", "approver"))
    page = browser.get("/ui/approvals").text
    assert "needs 2 approvers" in page
    first = browser.post(f"/ui/approvals/{aid}/answer", data={"outcome": "approved", "csrf": _csrf(page)})
    assert first.status_code == 200 and "so far alice" in first.text
    assert kernel.get_approval(aid)["status"] == "pending"  # type: ignore[index]


def test_dead_letters_are_listed_and_retried_from_the_inbox(kernel: Kernel, browser: TestClient) -> None:
    import httpx

    from chio_kernel import WebhookSettings, new_webhook_secret
    from chio_kernel._webhooks import WebhookDeliverer

    sign_in(browser, kernel.add_credential("alice", "approver"))
    assert "No dead letters" in browser.get("/ui/webhooks").text
    aid = _pending(kernel)
    settings = WebhookSettings(urls=("http://127.0.0.1:9/down",), secret=new_webhook_secret(), backoff=())
    with httpx.Client(timeout=2) as client:
        WebhookDeliverer(kernel.webhooks, settings).run_once(client)  # one attempt, refused: dead
    (dead,) = kernel.webhooks.deliveries("dead")
    page = browser.get("/ui/webhooks").text
    assert dead["id"] in page and aid in page and "http://127.0.0.1:9/down" in page
    assert browser.post(f"/ui/webhooks/{dead['id']}/retry", data={}).status_code == 403
    retried = browser.post(f"/ui/webhooks/{dead['id']}/retry", data={"csrf": _csrf(page)}, follow_redirects=False)
    assert retried.status_code == 303 and kernel.webhooks.deliveries("dead") == []
    again = browser.post(f"/ui/webhooks/{dead['id']}/retry", data={"csrf": _csrf(page)})
    assert again.status_code == 409 and "not a dead letter" in _alert(again.text)
