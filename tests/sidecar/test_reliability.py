"""Reliability of the real sidecar: exact budgets under concurrency, SIGKILL under load, tampering,
hostile bodies, exposure without a token."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.errors import ChioError
from chio_sdk.models import ChioReceipt, ChioScope, Operation, ToolGrant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chio_sidecar_harness import Sidecar, free_port, run_cli, run_cli_process


def scope(max_invocations: int | None = None) -> dict[str, Any]:
    g = ToolGrant(server_id="files", tool_name="read_file", operations=[Operation.INVOKE],
                  max_invocations=max_invocations)
    return ChioScope(grants=[g]).model_dump(exclude_none=True)


def new_capability(url: str, max_invocations: int | None = None, **headers: str) -> str:
    r = httpx.post(url + "/v1/capabilities", json={"subject": "agent:load", "scope": scope(max_invocations)},
                   headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def test_eight_concurrent_clients_get_exactly_n_allows(sidecar: Sidecar) -> None:
    n = 12
    cap = new_capability(sidecar.url, max_invocations=n)

    async def one_client(i: int) -> list[ChioReceipt]:
        async with ChioClient(sidecar.url, timeout=30) as c:
            return list(await asyncio.gather(*(
                c.evaluate_tool_call(capability_id=cap, tool_server="files", tool_name="read_file",
                                     parameters={"path": f"/c{i}/{j}"})
                for j in range(5)
            )))

    results = [r for rs in await asyncio.gather(*(one_client(i) for i in range(8))) for r in rs]
    assert len(results) == 40
    allows = [r for r in results if r.is_allowed]
    assert len(allows) == n
    assert {r.decision.guard for r in results if r.is_denied} == {"max_invocations"}
    assert len({r.id for r in results}) == 40


@pytest.mark.slow
async def test_sigkill_under_load_loses_no_receipt_and_tamper_is_named(tmp_path: Path) -> None:
    data_dir = tmp_path / "kernel"
    first = Sidecar(data_dir).start()
    try:
        cap = new_capability(first.url)
        received: list[ChioReceipt] = []
        running = 0

        async def hammer(i: int) -> None:
            nonlocal running
            running += 1
            async with ChioClient(first.url, timeout=5) as c:
                j = 0
                while True:
                    try:
                        r = await c.evaluate_tool_call(capability_id=cap, tool_server="files",
                                                       tool_name="read_file", parameters={"path": f"/{i}/{j}"})
                    except Exception:  # the sidecar died under us: connection refused/reset
                        running -= 1
                        return
                    received.append(r)
                    j += 1

        tasks = [asyncio.create_task(hammer(i)) for i in range(8)]
        while len(received) < 150:
            await asyncio.sleep(0.02)
        assert running == 8  # still under load when it dies
        await asyncio.to_thread(first.kill)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert first.proc is not None and first.proc.returncode == -9
    finally:
        first.stop()

    second = Sidecar(data_dir).start()
    try:
        stored = {
            r["id"]: ChioReceipt.model_validate(r)
            for r in httpx.get(second.url + "/v1/receipts", params={"capability_id": cap, "limit": 10_000},
                               timeout=30).json()["receipts"]
        }
        missing = [r.id for r in received if r.id not in stored]
        assert not missing, f"{len(missing)} receipts a client received are not in the store"
        assert all(stored[r.id] == r for r in received)
        assert httpx.get(second.url + "/v1/receipts/verify-chain", timeout=60).json()["ok"] is True
        after = await ChioClient(second.url).evaluate_tool_call(
            capability_id=cap, tool_server="files", tool_name="read_file", parameters={"path": "/after"})
        assert after.is_allowed and after.content_hash  # the chain continues after the crash
    finally:
        second.stop()

    ok = run_cli("receipts", "verify", "--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stderr
    assert "chain ok" in ok.stdout

    # alter one stored receipt (its timestamp), keep it valid JSON: the verifier must name its index
    index = 7
    with sqlite3.connect(data_dir / "kernel.db") as db:
        seq, body = db.execute("SELECT seq, body FROM receipts ORDER BY seq LIMIT 1 OFFSET ?", (index,)).fetchone()
        data = json.loads(body)
        data["timestamp"] += 1
        db.execute("UPDATE receipts SET body = ? WHERE seq = ?", (json.dumps(data), seq))
    bad = run_cli("receipts", "verify", "--data-dir", str(data_dir))
    assert bad.returncode != 0
    assert f"index {index}" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    as_json = run_cli("receipts", "verify", "--json", "--data-dir", str(data_dir))
    assert as_json.returncode != 0
    assert json.loads(as_json.stdout)["first_broken_index"] == index


# --- hostile bodies ---------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40)
)
json_value = st.recursive(
    json_leaf, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
    max_leaves=16,
)

REQUIRED = {
    "/v1/evaluate": {"capability_id": str, "tool_server": str, "tool_name": str},
    "/v1/capabilities": {"subject": str, "scope": dict},
    "/v1/capabilities/validate": {"id": str, "issuer": str, "subject": str, "scope": dict, "issued_at": int,
                                  "expires_at": int, "signature": str},
    "/v1/capabilities/attenuate": {"parent_token": (dict, str), "new_scope": dict},
    "/v1/receipts/verify": {"id": str, "capability_id": str, "action": dict, "decision": dict, "signature": str},
    "/chio/evaluate": {"request_id": str, "method": str, "route_pattern": str, "path": str, "caller": dict},
    "/chio/verify": {"id": str, "verdict": dict, "kernel_key": str, "signature": str},
}


def well_formed(path: str, body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and all(
        isinstance(data.get(k), t) and not isinstance(data.get(k), bool) for k, t in REQUIRED[path].items()
    )


@pytest.fixture(scope="module")
def templates(sidecar: Sidecar) -> dict[str, dict[str, Any]]:
    """A valid body per POST endpoint, for mutation."""
    cap = httpx.post(sidecar.url + "/v1/capabilities", json={"subject": "agent:fuzz", "scope": scope()}).json()
    receipt = httpx.post(sidecar.url + "/v1/evaluate", json={
        "capability_id": cap["id"], "tool_server": "files", "tool_name": "read_file", "parameters": {"path": "/x"}}).json()
    http = httpx.post(sidecar.url + "/chio/evaluate", json={
        "request_id": "r", "method": "GET", "route_pattern": "/a", "path": "/a", "timestamp": 1,
        "caller": {"subject": "anonymous", "auth_method": {"method": "anonymous"}}}).json()
    return {
        "/v1/evaluate": {"capability_id": cap["id"], "tool_server": "files", "tool_name": "read_file",
                         "parameters": {"path": "/x"}, "idempotency_key": "k", "cost": {"units": 1, "currency": "USD"}},
        "/v1/capabilities": {"subject": "agent:fuzz", "scope": scope(3), "ttl_seconds": 60},
        "/v1/capabilities/validate": cap,
        "/v1/capabilities/attenuate": {"parent_token": cap, "new_scope": scope(1)},
        "/v1/receipts/verify": receipt,
        "/chio/evaluate": {"request_id": "r", "method": "GET", "route_pattern": "/a", "path": "/a", "timestamp": 1,
                           "caller": {"subject": "anonymous", "auth_method": {"method": "anonymous"}}},
        "/chio/verify": http["receipt"],
    }


@st.composite
def hostile(draw: st.DrawFn, templates: dict[str, dict[str, Any]]) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(REQUIRED)))
    kind = draw(st.sampled_from(["mutate", "mutate", "random", "bytes", "deep", "huge", "unicode"]))
    if kind == "mutate":  # a valid body with one field replaced, removed or added
        body = json.loads(json.dumps(templates[path]))
        key = draw(st.sampled_from(sorted(body)) | st.text(max_size=10))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(json_value)
        return path, json.dumps(body).encode()
    if kind == "random":
        return path, json.dumps(draw(json_value)).encode()
    if kind == "bytes":
        return path, draw(st.binary(max_size=300))
    if kind == "deep":
        n = draw(st.integers(1, 50_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = b"1" if opener != b"[" else b""
        return path, opener * n + inner + closer * n
    if kind == "huge":
        n = draw(st.sampled_from([10_000, 500_000, 1_100_000]))
        body = json.loads(json.dumps(templates[path]))
        body[draw(st.sampled_from(sorted(body)))] = "A" * n
        return path, json.dumps(body).encode()
    # bad unicode: raw invalid UTF-8 or lone surrogate escapes in a field
    body = json.loads(json.dumps(templates[path]))
    key = draw(st.sampled_from(sorted(body)))
    raw = draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b"\\udfff\\ud800x"]))
    text = json.dumps(body).encode().replace(b'"' + key.encode() + b'": ', b'"' + key.encode() + b'": "' + raw + b'", "_": ', 1)
    return path, text


@pytest.mark.slow
def test_a_thousand_hostile_bodies_get_only_4xx(sidecar: Sidecar, templates: dict[str, dict[str, Any]]) -> None:
    seen: dict[int, int] = {}
    with httpx.Client(base_url=sidecar.url, timeout=30) as http:

        @settings(max_examples=1000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
        @given(case=hostile(templates))
        def check(case: tuple[str, bytes]) -> None:
            path, body = case
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, body[:200], r.text)
            if r.status_code == 200:
                assert well_formed(path, body), (path, body[:200], r.text)
            else:
                assert 400 <= r.status_code < 500
                err = r.json()
                assert isinstance(err["error"], str) and isinstance(err["message"], str) and err["message"]

        check()
    assert sum(seen.values()) >= 1000
    assert any(400 <= s < 500 for s in seen) and 413 in seen
    assert httpx.get(sidecar.url + "/chio/health").json()["status"] == "ok"


# --- exposure ---------------------------------------------------------------------------------


def test_non_loopback_bind_without_token_refuses_to_start(tmp_path: Path) -> None:
    # the installed script: were the refusal gone, it would serve (a subprocess the timeout ends)
    r = run_cli_process("sidecar", "--host", "0.0.0.0", "--port", str(free_port()),
                        "--data-dir", str(tmp_path / "k"), timeout=30)
    assert r.returncode != 0
    assert "token" in r.stderr.lower() and "0.0.0.0" in r.stderr
    assert "Traceback" not in r.stderr


async def test_token_guards_every_request(tmp_path: Path) -> None:
    guarded = Sidecar(tmp_path / "k", token="s3cret-token").start()
    try:
        assert httpx.get(guarded.url + "/chio/health").status_code == 401
        wrong = httpx.get(guarded.url + "/chio/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        auth = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(guarded.url + "/chio/health", headers=auth).status_code == 200
        assert httpx.get(guarded.url + "/chio/health", headers={"Authorization": "bearer s3cret-token"}).status_code == 200
        assert httpx.get(guarded.url + "/chio/health", headers={"Authorization": "s3cret-token"}).status_code == 401
        assert httpx.get(guarded.url + "/chio/health", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        assert httpx.get(guarded.url + "/chio/health", headers={"Authorization": "Bearer s3cret-tokenX"}).status_code == 401
        assert httpx.post(guarded.url + "/v1/evaluate", json={}).status_code == 401
        cap = new_capability(guarded.url, **auth)
        r = httpx.post(guarded.url + "/v1/evaluate", headers=auth, json={
            "capability_id": cap, "tool_server": "files", "tool_name": "read_file", "parameters": {}})
        assert r.status_code == 200 and r.json()["decision"]["verdict"] == "allow"
        async with ChioClient(guarded.url) as c:  # the stock client sends no auth header
            with pytest.raises(ChioError, match="401"):
                await c.health()
    finally:
        guarded.stop()


def test_taken_port_is_one_clear_error(sidecar: Sidecar, tmp_path: Path) -> None:
    r = run_cli_process("sidecar", "--port", str(sidecar.port), "--data-dir", str(tmp_path / "k"), timeout=30)
    assert r.returncode != 0
    assert f"cannot listen on 127.0.0.1:{sidecar.port}" in r.stderr and "Traceback" not in r.stderr
    assert httpx.get(sidecar.url + "/chio/health").status_code == 200
