"""Budget holds over the real sidecar (issue 11): settle / release / hold / expire / budgets endpoints
driven by chio_kernel.SidecarClient and raw HTTP, the 404/409/422 answers, the idempotency-key
reuse rule on /v1/evaluate, the KernelTransport settle/release, and `chio-durable budgets`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_sdk.errors import ChioError
from chio_sdk.models import ChioReceipt, ChioScope, MonetaryAmount, Operation, ToolGrant
from chio_sdk.testing import allow_all

from chio_durable import HoldConflict, KernelRejected, as_transport
from chio_kernel import LocalChioClient, SidecarClient
from chio_kernel._kernel import receipt_wire_dict
from chio_sidecar_harness import Sidecar, run_cli
from independent_verifier import assert_receipt_verifies


def usd(units: int) -> MonetaryAmount:
    return MonetaryAmount(units=units, currency="USD")


def _scope(total: int) -> ChioScope:
    return ChioScope(grants=[
        ToolGrant(server_id="model", tool_name="*", operations=[Operation.INVOKE], max_total_cost=usd(total))
    ])


async def _hold(client: SidecarClient, cap: str, units: int, n: int = 0, key: str | None = None) -> ChioReceipt:
    receipt = await client.evaluate_tool_call(
        capability_id=cap, tool_server="model", tool_name="gpt", parameters={"n": n}, cost=usd(units),
        idempotency_key=key,
    )
    return receipt


async def test_settle_release_and_budgets_over_http(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=30) as client:
        cap = (await client.create_capability(subject="agent:b", scope=_scope(100), capability_id="cap-bh-1")).id
        a = await _hold(client, cap, 60)
        assert a.decision.verdict == "allow"
        hold = await client.get_hold(a.id)
        assert hold is not None and hold["state"] == "open" and hold["amount"] == {"units": 60, "currency": "USD"}
        [row] = await client.budgets(cap)
        assert (row["captured"], row["held"], row["remaining"]) == (0, 60, 40)
        assert (await _hold(client, cap, 50, n=1)).decision.guard == "cost"

        settled = await client.settle(a.id, usd(80), "op-a")  # above the hold: 100 left for it, fits
        meta = settled.metadata["budget"]
        assert meta["hold_receipt_id"] == a.id and meta["captured"]["units"] == 80 and meta["capped"] is False
        assert (await client.settle(a.id, usd(80), "op-a")).id == settled.id  # same op_id: first receipt
        with pytest.raises(ChioError) as info:
            await client.settle(a.id, usd(1), "op-b")
        assert info.value.code == "HTTP_409" and settled.id in str(info.value)

        b = await _hold(client, cap, 20, n=2)
        capped = await client.settle(b.id, usd(50), "op-b")  # only 20 left
        assert capped.metadata["budget"]["capped"] is True and capped.metadata["budget"]["captured"]["units"] == 20
        c = await _hold(client, cap, 0, n=3)
        released = await client.release(c.id, "saga-c", "compensate")
        assert released.tool_name == "release" and released.metadata["budget"]["reason"] == "compensate"
        with pytest.raises(ChioError) as info:
            await client.settle(c.id, usd(0), "x")
        assert info.value.code == "HTTP_409"
        [row] = await client.budgets(cap)
        assert (row["captured"], row["held"], row["remaining"]) == (100, 0, 0)

        # what the sidecar hands out is what the kernel signed and chained
        for r in (settled, capped, released):
            assert_receipt_verifies(receipt_wire_dict(r))
            assert await client.verify_receipt(r)
        listed = [r.id for r in await client.list_receipts(cap)]  # budget receipts are the capability's too
        assert [settled.id, b.id, capped.id, c.id, released.id] == [i for i in listed if i not in {a.id}][-5:]
        chain = httpx.get(f"{sidecar.url}/v1/receipts/verify-chain", timeout=60).json()
        assert chain["ok"] is True, chain


async def test_bad_budget_requests_are_4xx(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=30) as client:
        cap = (await client.create_capability(subject="agent:b", scope=_scope(100), capability_id="cap-bh-2")).id
        a = await _hold(client, cap, 10)
    url = f"{sidecar.url}/v1/receipts/{a.id}"
    async with httpx.AsyncClient(timeout=30) as http:
        cases: list[tuple[str, Any, int, str]] = [
            ("settle", {"op_id": "x"}, 422, "invalid_request"),
            ("settle", {"actual_cost": {"units": "5", "currency": "USD"}, "op_id": "x"}, 422, "invalid_request"),
            ("settle", {"actual_cost": {"units": -1, "currency": "USD"}, "op_id": "x"}, 422, "invalid_request"),
            ("settle", {"actual_cost": {"units": 5, "currency": "USD"}}, 422, "invalid_request"),
            ("settle", {"actual_cost": {"units": 5, "currency": "EUR"}, "op_id": "x"}, 422, "invalid_request"),
            ("release", {"reason": "no op id"}, 422, "invalid_request"),
            ("release", [1, 2], 422, "invalid_request"),
        ]
        for op, body, status, error in cases:
            resp = await http.post(f"{url}/{op}", json=body)
            assert (resp.status_code, resp.json()["error"]) == (status, error), (op, body, resp.text)
        resp = await http.post(f"{url}/settle", content=b"{not json")
        assert resp.status_code == 400
        resp = await http.post(f"{sidecar.url}/v1/receipts/rcpt-unknown/release", json={"op_id": "x"})
        assert (resp.status_code, resp.json()["error"]) == (404, "unknown_hold")
        resp = await http.get(f"{sidecar.url}/v1/receipts/rcpt-unknown/hold")
        assert resp.status_code == 404
        resp = await http.get(f"{sidecar.url}/v1/capabilities/cap-none/budgets")
        assert (resp.status_code, resp.json()["error"]) == (404, "unknown_capability")
        # the hold is untouched by all of that
        assert (await http.get(f"{url}/hold")).json()["state"] == "open"
        resp = await http.post(f"{url}/release", json={"op_id": "r1"})
        assert resp.status_code == 200 and resp.json()["tool_name"] == "release"
        resp = await http.post(f"{url}/settle", json={"actual_cost": {"units": 1, "currency": "USD"}, "op_id": "s"})
        assert resp.status_code == 409 and resp.json()["error"] == "hold_conflict" and resp.json()["closed_by"]


async def test_idempotency_key_reused_for_another_call_is_409(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=30) as client:
        cap = (await client.create_capability(subject="agent:b", scope=_scope(100), capability_id="cap-bh-3")).id
        first = await _hold(client, cap, 10, key="run-9/step-1")
        assert (await _hold(client, cap, 10, key="run-9/step-1")).id == first.id
        with pytest.raises(ChioError) as info:
            await _hold(client, cap, 10, n=1, key="run-9/step-1")
        assert info.value.code == "HTTP_409" and "idempotency_key_reused" in str(info.value)
        [row] = await client.budgets(cap)
        assert (row["held"], row["open_holds"]) == (10, 1)


async def test_fifty_concurrent_retries_over_http_make_one_hold(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=60) as client:
        cap = (await client.create_capability(subject="agent:b", scope=_scope(1000), capability_id="cap-bh-4")).id
        receipts = await asyncio.gather(*(_hold(client, cap, 100, key="wf-http/model#1") for _ in range(50)))
        assert len({r.id for r in receipts}) == 1
        [row] = await client.budgets(cap)
        assert (row["held"], row["open_holds"], row["invocations"]) == (100, 1, 1)


async def test_transports_settle_and_release(sidecar: Sidecar, tmp_path: Path) -> None:
    # HttpTransport on a SidecarClient (driven on the kernel loop: a client of its own)
    async with SidecarClient(sidecar.url, timeout=30) as admin:
        cap = (await admin.create_capability(subject="agent:b", scope=_scope(100), capability_id="cap-bh-5")).id
        a, b = await _hold(admin, cap, 30), await _hold(admin, cap, 30, n=1)
    http = as_transport(SidecarClient(sidecar.url, timeout=30))
    s = await http.settle(a.id, usd(10), "t-a")
    assert s is not None and s.metadata["budget"]["captured"]["units"] == 10
    assert (await http.settle(a.id, usd(10), "t-a")).id == s.id  # type: ignore[union-attr]
    with pytest.raises(HoldConflict):
        await http.release(a.id, "t-other")
    with pytest.raises(KernelRejected):
        await http.settle("rcpt-unknown", usd(1), "t")
    r = http.release_sync(b.id, "t-b", "compensate")
    assert r is not None and r.tool_name == "release"

    # EmbeddedTransport
    async with LocalChioClient(tmp_path / "k") as local:
        lcap = (await local.create_capability(subject="agent:b", scope=_scope(100))).id
        allow = await local.evaluate_tool_call(
            capability_id=lcap, tool_server="model", tool_name="gpt", parameters={}, cost=usd(50)
        )
        embedded = as_transport(local)
        s = embedded.settle_sync(allow.id, usd(70), "e")
        assert s is not None and s.metadata["budget"]["captured"]["units"] == 70
        with pytest.raises(HoldConflict):
            await embedded.release(allow.id, "e2")
        with pytest.raises(KernelRejected):
            await embedded.settle(allow.id, MonetaryAmount(units=1, currency="EUR"), "e3")

    # a chio_sdk.testing mock holds nothing: None
    mock = as_transport(allow_all())
    assert await mock.settle("rcpt-x", usd(1), "m") is None and mock.release_sync("rcpt-x", "m") is None


def test_cli_budgets_show_settle_release(tmp_path: Path) -> None:
    from chio_kernel import Kernel

    home = tmp_path / "k"
    with Kernel(home) as kernel:
        cap = kernel.create_capability("agent:c", _scope(500), 3600, capability_id="cap-cli-b").id
        a = kernel.evaluate(cap, "model", "gpt", {"n": 1}, cost=usd(100))
        b = kernel.evaluate(cap, "model", "gpt", {"n": 2}, cost=usd(50))
    shown = run_cli("budgets", "show", cap, "--data-dir", str(home), "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)["budgets"]
    assert (row["captured"], row["held"], row["remaining"], row["currency"]) == (0, 150, 350, "USD")
    done = run_cli("budgets", "settle", a.id, "--units", "70", "--currency", "USD", "--op-id", "c1",
                   "--data-dir", str(home), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metadata"]["budget"]["captured"]["units"] == 70
    again = run_cli("budgets", "settle", a.id, "--units", "71", "--currency", "USD", "--op-id", "c2",
                    "--data-dir", str(home))
    assert again.returncode == 1 and "already settled" in again.stderr and "Traceback" not in again.stderr
    assert run_cli("budgets", "release", b.id, "--op-id", "r1", "--data-dir", str(home)).returncode == 0
    table = run_cli("budgets", "show", cap, "--data-dir", str(home))
    assert table.returncode == 0 and "USD 0.70" in table.stdout and "USD 4.30" in table.stdout
    missing = run_cli("budgets", "show", "cap-none", "--data-dir", str(home))
    assert missing.returncode == 1 and "no capability" in missing.stderr
