"""The sidecar's hot path (/v1/evaluate straight to its handler, decided on the event loop, bodies
parsed with orjson) answers exactly as the ordinary path does."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from chio_kernel import Kernel
from chio_kernel.canonical import canonical_json
from chio_kernel.sidecar import create_app, header_timeout_protocol

GRANT = {"grants": [{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"]}]}


def _call(cap: str, **extra: Any) -> dict[str, Any]:
    return {"capability_id": cap, "tool_server": "files", "tool_name": "read_file", "parameters": {}, **extra}


def test_the_bearer_token_guards_the_hot_path(tmp_path: Path) -> None:
    with Kernel(tmp_path / "k") as kernel:
        cap = kernel.create_capability("agent:a", GRANT, 600).id
        client = TestClient(create_app(kernel, token="s3cret"))
        assert client.post("/v1/evaluate", json=_call(cap)).status_code == 401
        bad = client.post("/v1/evaluate", json=_call(cap), headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        ok = client.post("/v1/evaluate", json=_call(cap), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["decision"]["verdict"] == "allow", ok.text


def test_an_embedders_middleware_sees_evaluate_too(tmp_path: Path) -> None:
    seen: list[str] = []

    class Record:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope.get("path", ""))
            await self.app(scope, receive, send)

    with Kernel(tmp_path / "k") as kernel:
        cap = kernel.create_capability("agent:a", GRANT, 600).id
        app = create_app(kernel)
        app.add_middleware(Record)
        assert TestClient(app).post("/v1/evaluate", json=_call(cap)).status_code == 200
        assert seen == ["/v1/evaluate"]


def test_big_integers_keep_their_value_and_their_messages(tmp_path: Path) -> None:
    with Kernel(tmp_path / "k") as kernel:
        cap = kernel.create_capability("agent:a", GRANT, 600).id
        client = TestClient(create_app(kernel))
        params = {"n": 2**64, "m": -(2**70), "f": 0.1, "s": "é"}
        r = client.post("/v1/evaluate", content=f'{{"capability_id": "{cap}", "tool_server": "files", '
                        f'"tool_name": "read_file", "parameters": {{"n": {2**64}, "m": {-(2**70)}, "f": 0.1, '
                        '"s": "\\u00e9"}}'.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["action"]["parameter_hash"] == hashlib.sha256(canonical_json(params)).hexdigest()
        over = client.post("/v1/evaluate", content=(
            f'{{"capability_id": "{cap}", "tool_server": "files", "tool_name": "read_file", '
            f'"cost": {{"units": {2**64}, "currency": "USD"}}}}').encode())
        assert over.status_code == 422 and "2^63-1" in over.json()["message"], over.text
        for body, status in ((b'{"capability_id": NaN}', 400), (b'{"a": "\\ud800"}', 422), (b"[" * 100 + b"]" * 100, 422)):
            assert client.post("/v1/evaluate", content=body).status_code == status, body


@pytest.mark.skipif(importlib.util.find_spec("httptools") is None, reason="httptools not installed (the fast extra)")
def test_the_header_timeout_wraps_httptools_too() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(header_timeout_protocol(5.0, 8, http="httptools"), HttpToolsProtocol)


def test_the_evaluate_answer_is_the_model_dump(tmp_path: Path) -> None:
    """/v1/evaluate serialises its receipt without pydantic (receipt_json): the same JSON as
    dumps(dump_receipt(...)) (key order aside) for allows, denies, run context, Unicode and any other receipt."""
    import json

    from chio_sdk.models import ChioReceipt

    from chio_kernel.sidecar._responses import dump_receipt, dumps, receipt_json

    with Kernel(tmp_path / "k") as kernel:
        cap = kernel.create_capability("agent:a", GRANT, 600).id
        receipts = [
            kernel.evaluate(cap, "files", "read_file", {"path": "/d/é", "n": [1, 2.5, None], "deep": {"b": True}}),
            kernel.evaluate(cap, "files", "write_file", {}),  # a deny: guard and reason
            kernel.evaluate(cap, "files", "read_file", {}, metadata={"flow_run_id": "run-1", "task": "ünï"}),
            kernel.evaluate("cap-unknown", "files", "read_file", {"x": 1}),
        ]
        assert receipts[1].decision.verdict == "deny" and receipts[1].decision.guard
        data = receipts[0].model_dump()
        receipts.append(ChioReceipt.model_validate({**data, "evidence": [{"guard_name": "g", "verdict": True}]}))
        receipts.append(ChioReceipt.model_validate({**data, "metadata": {"nested": {"a": 1}}}))
        for receipt in receipts:
            fast, model = receipt_json(receipt), dumps(dump_receipt(receipt))
            assert json.loads(fast) == json.loads(model) and len(fast) == len(model), receipt
        client = TestClient(create_app(kernel))
        answer = client.post("/v1/evaluate", json=_call(cap, metadata={"flow_run_id": "run-2"}))
        assert answer.headers["content-type"] == "application/json"
        assert json.loads(answer.content) == json.loads(dumps(dump_receipt(ChioReceipt.model_validate(answer.json()))))
