"""Waking the waiting run over HTTP: the real sidecar subprocess, ``POST /approvals/{id}/wake``,
the ``"wakes"`` of the answers, ``SidecarClient.register_approval_wake`` and the transport
(docs/approvals.md, "Waking the run").

The sidecar runs in its own process, so its waker comes from an entry point of group
``chio.approval_wakers``: a throwaway distribution on the sidecar's ``PYTHONPATH`` whose waker
appends the outcome to the file the wake names.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_sdk import ChioClient
from chio_sdk.models import MonetaryAmount
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chio_durable import KernelRejected, as_transport
from chio_kernel import ApprovalNotFoundError, KernelInputError, SidecarClient, sign_approval_token
from chio_sidecar_harness import Sidecar, run_cli

PARAMS = {"order": "A-17", "amount": 250}
COST = MonetaryAmount(units=250, currency="USD")
GROUP = "chio.approval_wakers"


def _waker_site(root: Path) -> Path:
    """A distribution declaring the waker of engine ``filewake`` (appends the outcome to ``wake["path"]``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "chio_test_filewake.py").write_text(
        "import json\n"
        "def wake(wake, outcome):\n"
        "    with open(wake['path'], 'a', encoding='utf-8') as fh:\n"
        "        fh.write(json.dumps(dict(outcome)) + '\\n')\n"
        "    return 'woke file ' + wake['path']\n",
        encoding="utf-8",
    )
    info = root / "chio_test_filewake-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chio-test-filewake\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\nfilewake = chio_test_filewake:wake\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def approver() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, approver: tuple[Ed25519PrivateKey, str]) -> Iterator[Sidecar]:
    """A sidecar that has the ``filewake`` waker installed (and trusts ``approver``)."""
    site = _waker_site(tmp_path_factory.mktemp("site"))
    data_dir = tmp_path_factory.mktemp("wakes") / "kernel"
    data_dir.mkdir()
    trusted = run_cli("approvals", "trust", approver[1], "--data-dir", str(data_dir))
    assert trusted.returncode == 0, trusted.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p))
        proc = Sidecar(data_dir).start()
    try:
        yield proc
    finally:
        proc.stop()


def _pending(sidecar: Sidecar) -> str:
    """A fresh pending refund's approval id."""
    cap = "cap-wake-" + uuid.uuid4().hex[:10]
    resp = httpx.post(f"{sidecar.url}/v1/capabilities", json={
        "subject": "agent:refunds", "id": cap,
        "scope": {"grants": [{"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
                              "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}]}]},
    }, timeout=30)
    assert resp.status_code == 200, resp.text
    pending = httpx.post(f"{sidecar.url}/v1/evaluate", json={
        "capability_id": cap, "tool_server": "shop", "tool_name": "refund", "parameters": PARAMS,
        "cost": {"units": 250, "currency": "USD"}}, timeout=30).json()
    return str(pending["metadata"]["pending_approval"]["approval_id"])


def _outcomes(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_register_then_operator_respond_wakes_and_reports(sidecar: Sidecar, tmp_path: Path) -> None:
    aid = _pending(sidecar)
    out = tmp_path / "woken.jsonl"
    wake = {"engine": "filewake", "path": str(out)}
    for _ in range(2):  # a retried run registers again: one wake
        resp = httpx.post(f"{sidecar.url}/approvals/{aid}/wake", json={"wake": wake}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"approval_id": aid, "status": "pending", "woken": []}
    other = httpx.post(f"{sidecar.url}/approvals/{aid}/wake", json={"wake": {"engine": "nosuchengine"}}, timeout=30)
    assert other.status_code == 200, other.text
    assert _outcomes(out) == []

    answer = httpx.post(f"{sidecar.url}/approvals/{aid}/operator-respond",
                        json={"outcome": "approved", "reason": "ok"}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["approval"]["status"] == "approved"
    assert body["wakes"][0] == {"engine": "filewake", "ok": True, "message": f"woke file {out}"}
    assert body["wakes"][1]["ok"] is False and "no waker installed for engine nosuchengine" in body["wakes"][1]["message"]
    [outcome] = _outcomes(out)
    assert outcome["approval_id"] == aid and outcome["status"] == "approved"
    assert outcome["resolution_receipt_id"] == body["receipt"]["id"]


def test_registering_after_the_answer_wakes_at_once(sidecar: Sidecar, tmp_path: Path) -> None:
    aid = _pending(sidecar)
    out = tmp_path / "late.jsonl"
    denied = httpx.post(f"{sidecar.url}/approvals/{aid}/operator-respond", json={"outcome": "denied"}, timeout=30)
    assert denied.status_code == 200 and denied.json()["wakes"] == []
    resp = httpx.post(f"{sidecar.url}/approvals/{aid}/wake", json={"wake": {"engine": "filewake", "path": str(out)}}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "denied"
    assert resp.json()["woken"] == [{"engine": "filewake", "ok": True, "message": f"woke file {out}"}]
    assert [o["status"] for o in _outcomes(out)] == ["denied"]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/approvals/apr-unknown/wake", {"wake": {"engine": "filewake"}}, 404, "no approval"),
        ("/approvals/{aid}/wake", {"wake": {"engine": "Bad Engine"}}, 422, "a-z, 0-9"),
        ("/approvals/{aid}/wake", {"wake": {"engine": "t", "blob": "x" * 5000}}, 422, "at most 4096 bytes"),
        ("/approvals/{aid}/wake", {"wake": "temporal"}, 422, "'wake' is required"),
        ("/approvals/{aid}/wake", {}, 422, "'wake' is required"),
        ("/approvals/{aid}/wake", {"wake": {"engine": "t"}, "run": 1, "x": 2}, 422, "unknown fields ['run', 'x']"),
        ("/approvals/{aid}/wake", [1], 422, "expected a JSON object"),
    ],
)
def test_bad_wake_requests_get_a_4xx_with_a_reason(
    sidecar: Sidecar, path: str, body: Any, status: int, says: str
) -> None:
    aid = _pending(sidecar)
    resp = httpx.post(f"{sidecar.url}{path.format(aid=aid)}", json=body, timeout=30)
    assert resp.status_code == status, resp.text
    assert says in resp.json()["message"]
    answer = httpx.post(f"{sidecar.url}/approvals/{aid}/operator-respond", json={"outcome": "approved"}, timeout=30)
    assert answer.json()["wakes"] == []  # nothing was registered


def test_too_many_wakes_is_a_422(sidecar: Sidecar) -> None:
    aid = _pending(sidecar)
    for n in range(8):
        ok = httpx.post(f"{sidecar.url}/approvals/{aid}/wake", json={"wake": {"engine": "t", "n": n}}, timeout=30)
        assert ok.status_code == 200, ok.text
    resp = httpx.post(f"{sidecar.url}/approvals/{aid}/wake", json={"wake": {"engine": "t", "n": 8}}, timeout=30)
    assert resp.status_code == 422 and "the most it takes is 8" in resp.json()["message"]


async def test_sidecar_client_registers_answers_and_reports(
    sidecar: Sidecar, tmp_path: Path, approver: tuple[Ed25519PrivateKey, str]
) -> None:
    out = tmp_path / "client.jsonl"
    async with SidecarClient(sidecar.url, timeout=30) as client:
        aid = _pending(sidecar)
        answer = await client.register_approval_wake(aid, {"engine": "filewake", "path": str(out)})
        assert answer == {"approval_id": aid, "status": "pending", "woken": []}
        with pytest.raises(ApprovalNotFoundError):
            await client.register_approval_wake("apr-nope", {"engine": "filewake"})
        with pytest.raises(KernelInputError, match="engine"):
            await client.register_approval_wake(aid, {"engine": ""})
        approval = await client.get_approval(aid)
        assert approval is not None
        receipt = await client.respond_approval_token(sign_approval_token(approver[0], approval, "approved"))
        assert client.last_wake_report(aid) == [{"engine": "filewake", "ok": True, "message": f"woke file {out}"}]
        [outcome] = _outcomes(out)
        assert outcome["resolution_receipt_id"] == receipt.id and outcome["approver"] == approver[1]

        second = _pending(sidecar)
        await client.respond_approval(second, "denied", "no")
        assert client.last_wake_report(second) == []


async def test_transport_over_http_registers_or_falls_back(sidecar: Sidecar) -> None:
    aid = _pending(sidecar)
    async with SidecarClient(sidecar.url, timeout=30) as client:
        transport = as_transport(client)
        assert await transport.register_approval_wake(aid, {"engine": "t", "n": 1}) is True
        with pytest.raises(KernelRejected, match="no approval"):
            await transport.register_approval_wake("apr-nope", {"engine": "t"})
        with pytest.raises(KernelRejected):
            await transport.register_approval_wake(aid, {"engine": "NOPE"})
    # a sidecar without the route (here: a path prefix it does not serve) answers 404: fall back
    async with SidecarClient(f"{sidecar.url}/no-such-prefix", timeout=30) as old:
        assert await as_transport(old).register_approval_wake(aid, {"engine": "t", "n": 2}) is False
    async with ChioClient(sidecar.url, timeout=30) as stock:  # a stock ChioClient has no such call
        assert await as_transport(stock).register_approval_wake(aid, {"engine": "t", "n": 3}) is False
