"""Checkpoints and proofs over HTTP: ``GET /v1/receipts/{id}/proof``, ``/v1/checkpoints``,
``/v1/checkpoints/{seq}``, ``/v1/checkpoints/consistency``, ``/v1/checkpoints/verify`` on the real sidecar,
each proof checked with nothing but the public key ``/chio/health`` names."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from chio_sdk import ChioClient

from chio_kernel.proofs import verify_consistency, verify_inclusion
from chio_sidecar_harness import Sidecar
from test_api import call, grant, issue


async def test_proofs_over_http_verify_with_the_public_key_only(client: ChioClient, sidecar: Sidecar) -> None:
    cap = await issue(client, grant())
    receipts = [await call(client, cap, path=f"/tmp/{i}") for i in range(5)]
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as http:
        key = (await http.get("/chio/health")).json()["kernel_key"]
        r = await http.get(f"/v1/receipts/{receipts[3].id}/proof")
        assert r.status_code == 200, r.text
        assert verify_inclusion(r.json(), key)["id"] == receipts[3].id
        seq = r.json()["checkpoint"]["body"]["checkpoint_seq"]
        listed = (await http.get("/v1/checkpoints")).json()
        assert listed["count"] >= seq and listed["checkpoints"][seq - 1] == r.json()["checkpoint"]
        assert (await http.get(f"/v1/checkpoints/{seq}")).json() == r.json()["checkpoint"]
        cons = await http.get("/v1/checkpoints/consistency", params={"from": 1, "to": seq})
        assert cons.status_code == 200, cons.text
        first, last = verify_consistency(cons.json(), key)
        assert (first["checkpoint_seq"], last["checkpoint_seq"]) == (1, seq)
        verified = (await http.get("/v1/checkpoints/verify")).json()
        assert verified["ok"] is True and verified["problems"] == []


async def test_checkpoint_endpoints_answer_4xx_with_a_reason(sidecar: Sidecar) -> None:
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as http:
        r = await http.get("/v1/receipts/rcpt-nope/proof")
        assert r.status_code == 404 and "no receipt 'rcpt-nope'" in r.text
        r = await http.get("/v1/checkpoints/999999")
        assert r.status_code == 404 and "no checkpoint 999999" in r.text
        r = await http.get("/v1/checkpoints/consistency", params={"from": 2})
        assert r.status_code == 422 and "?from=M&to=N" in r.text
        r = await http.get("/v1/checkpoints/consistency", params={"from": 3, "to": 1})
        assert r.status_code == 422 and "must not be after" in r.text
        r = await http.get("/v1/checkpoints", params={"from": "x"})
        assert r.status_code == 422 and "'from' must be an integer" in r.text


async def test_a_sidecar_cuts_every_n_receipts_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIO_CHECKPOINT_EVERY", "2")
    monkeypatch.setenv("CHIO_CHECKPOINT_INTERVAL", "3600")
    proc = Sidecar(tmp_path / "kernel").start()
    try:
        async with ChioClient(proc.url, timeout=30) as client, httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            cap = await issue(client, grant())
            for i in range(4):
                await call(client, cap, path=f"/tmp/{i}")
            deadline = time.monotonic() + 20
            while (count := (await http.get("/v1/checkpoints")).json()["count"]) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert count == 2  # every 2 receipts, cut by the sidecar's own background cutter
    finally:
        proc.stop()
