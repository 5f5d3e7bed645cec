"""Paged listings and capability limits over HTTP (the real sidecar subprocess) and on the CLI:
``?limit=&cursor=``, ``next_cursor`` and the ``Link`` header, a bad cursor as a 422 sentence, too
many grants or too deep a chain as 422 ``limit_exceeded`` (docs/sidecar.md, docs/cli.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chio_kernel import Kernel
from chio_sidecar_harness import Sidecar, run_cli

APPROVAL = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}],
}]}
FILES = {"grants": [{"server_id": "files", "tool_name": "read", "operations": ["Invoke"]}]}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """This module's own sidecar (its listings hold only what these tests made)."""
    proc = Sidecar(tmp_path_factory.mktemp("paging") / "kernel").start()
    try:
        yield proc
    finally:
        proc.stop()


def _follow(url: str, key: str) -> tuple[list[Any], int]:
    """Every item of a listing, following the ``Link: rel="next"`` header page by page."""
    items: list[Any] = []
    pages = 0
    while True:
        resp = httpx.get(url, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        items += body[key]
        assert body["count"] == len(body[key])
        if body["next_cursor"] is None:
            assert "link" not in resp.headers
            return items, pages
        link = resp.headers["link"]
        assert link.endswith('>; rel="next"') and f"cursor={body['next_cursor']}" in link
        url = link[1:link.index(">")]


def test_listings_page_over_http(sidecar: Sidecar) -> None:
    caps = []
    for _ in range(5):
        resp = httpx.post(f"{sidecar.url}/v1/capabilities", json={"subject": "agent:a", "scope": APPROVAL}, timeout=30)
        caps.append(resp.json()["id"])
    listed, pages = _follow(f"{sidecar.url}/v1/capabilities?limit=2", "capabilities")
    assert [c["id"] for c in listed] == caps and pages == 3

    approvals = []
    for i in range(5):
        body = {"capability_id": caps[0], "tool_server": "shop", "tool_name": "refund", "parameters": {"order": i}}
        receipt = httpx.post(f"{sidecar.url}/v1/evaluate", json=body, timeout=30).json()
        approvals.append(receipt["metadata"]["pending_approval"]["approval_id"])
    pending, pages = _follow(f"{sidecar.url}/approvals/pending?limit=2", "approvals")
    assert [a["id"] for a in pending] == approvals[::-1] and pages == 3
    assert len(httpx.get(f"{sidecar.url}/approvals/pending", timeout=30).json()["approvals"]) == 5  # default 100

    receipts, _ = _follow(f"{sidecar.url}/v1/receipts?limit=2&capability_id={caps[0]}", "receipts")
    assert [r["id"] for r in receipts] and all(r["capability_id"] == caps[0] for r in receipts)
    old = httpx.get(f"{sidecar.url}/v1/receipts?after_seq=0&limit=2", timeout=30).json()
    assert old["next_after_seq"] == 2 and old["count"] == 2  # the position paging of earlier releases

    holds = httpx.get(f"{sidecar.url}/v1/holds?state=open&limit=5", timeout=30).json()
    assert holds == {"holds": [], "count": 0, "next_cursor": None}


@pytest.mark.parametrize("query", [
    "/approvals/pending?cursor=not-a-cursor",
    "/v1/capabilities?cursor=eyJsIjoiYXBwcm92YWxzIn0",
    "/v1/receipts?cursor=abc",
    "/v1/holds?cursor=abc",
    "/v1/holds?state=lost",
    "/v1/capabilities?limit=1001",
    "/approvals/pending?limit=0",
])
def test_a_bad_cursor_or_limit_is_a_422_sentence(sidecar: Sidecar, query: str) -> None:
    resp = httpx.get(sidecar.url + query, timeout=30)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_request"
    assert any(word in resp.json()["message"] for word in ("next_cursor", "limit", "state"))


def test_too_many_grants_or_too_deep_is_a_422_naming_the_limit(sidecar: Sidecar) -> None:
    many = {"grants": [{"server_id": "s", "tool_name": f"t{i}", "operations": ["Invoke"]} for i in range(1_001)]}
    resp = httpx.post(f"{sidecar.url}/v1/capabilities", json={"subject": "agent:a", "scope": many}, timeout=30)
    assert resp.status_code == 422 and resp.json()["error"] == "limit_exceeded"
    assert "at most 1,000" in resp.json()["message"]
    cap = httpx.post(f"{sidecar.url}/v1/capabilities", json={"subject": "agent:a", "scope": FILES}, timeout=30).json()
    for _ in range(32):
        cap = httpx.post(f"{sidecar.url}/v1/capabilities/attenuate",
                         json={"parent_token": cap["id"], "new_scope": FILES}, timeout=30).json()
    resp = httpx.post(f"{sidecar.url}/v1/capabilities/attenuate",
                      json={"parent_token": cap["id"], "new_scope": FILES}, timeout=30)
    assert resp.status_code == 422 and resp.json()["error"] == "limit_exceeded"
    assert "33 delegations deep; this kernel allows at most 32" in resp.json()["message"]


def test_the_cli_pages_with_limit_and_cursor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Kernel(home) as kernel:
        cap = kernel.create_capability("agent:a", APPROVAL).id
        ids = [kernel.evaluate(cap, "shop", "refund", {"o": i}).metadata["pending_approval"]["approval_id"]  # type: ignore[index]
               for i in range(3)]
        caps = [cap] + [kernel.create_capability("agent:b", FILES, capability_id=f"cap-{uuid.uuid4().hex[:8]}").id
                        for _ in range(2)]
    d = ["--data-dir", str(home)]
    first = run_cli("approvals", "list", "--limit", "2", "--json", *d)
    assert first.returncode == 0, first.stderr
    assert [a["id"] for a in json.loads(first.stdout)] == ids[:0:-1]
    more = first.stderr.strip().splitlines()[-1]
    assert more.startswith("more: --cursor ")
    rest = run_cli("approvals", "list", "--limit", "2", "--cursor", more.split()[-1], "--json", *d)
    assert [a["id"] for a in json.loads(rest.stdout)] == ids[:1] and "more:" not in rest.stderr

    table = run_cli("capability", "list", "--limit", "2", *d)
    assert table.returncode == 0 and caps[0] in table.stdout and "more: --cursor" in table.stderr
    bad = run_cli("receipts", "list", "--cursor", "nope", *d)
    assert bad.returncode == 1 and "next_cursor" in bad.stderr
    holds = run_cli("budgets", "holds", "--state", "open", "--json", *d)
    assert holds.returncode == 0 and holds.stdout.strip() == "[]"
