"""The sidecar's error mapping: known client errors are 4xx, anything else is a logged 500."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from chio_kernel import Kernel
from chio_kernel.sidecar import create_app

GRANT = {"grants": [{"server_id": "files", "tool_name": "read_file", "operations": ["Invoke"]}]}


class _Faulty:
    """A real kernel whose ``evaluate`` fails with the given exception (a bug of ours, simulated)."""

    def __init__(self, kernel: Kernel, exc: BaseException) -> None:
        self._kernel = kernel
        self._exc = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernel, name)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise self._exc


@pytest.mark.parametrize("exc", [ValueError("bug: bad unpack"), TypeError("bug: None is not callable"),
                                 RecursionError("bug"), OverflowError("bug")])
def test_an_internal_error_is_a_logged_500_not_a_client_error(
    tmp_path: Path, exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    with Kernel(tmp_path / "k") as kernel:
        token = kernel.create_capability("agent:a", GRANT, 600)
        client = TestClient(create_app(_Faulty(kernel, exc)))
        with caplog.at_level(logging.ERROR, logger="chio_kernel.sidecar"):
            r = client.post("/v1/evaluate", json={"capability_id": token.id, "tool_server": "files",
                                                  "tool_name": "read_file", "parameters": {}})
        assert r.status_code == 500 and r.json()["error"] == "internal_error", r.text
        assert any(rec.exc_info and rec.exc_info[1] is exc for rec in caplog.records)  # traceback logged
        assert client.get("/chio/health").status_code == 200  # still serving


def test_kernel_input_and_capability_errors_stay_4xx(tmp_path: Path) -> None:
    with Kernel(tmp_path / "k") as kernel:
        client = TestClient(create_app(kernel))
        token = kernel.create_capability("agent:a", GRANT, 600, capability_id="cap-taken")
        # the kernel refuses a NUL in a name (KernelInputError): a client error, said as such
        r = client.post("/v1/evaluate", json={"capability_id": token.id, "tool_server": "files",
                                              "tool_name": "read\u0000file", "parameters": {}})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
        assert "NUL" in r.json()["message"]
        other = {"grants": [{"server_id": "web", "tool_name": "search", "operations": ["Invoke"]}]}
        r = client.post("/v1/capabilities", json={"subject": "agent:a", "scope": other, "id": "cap-taken"})
        assert r.status_code == 400 and r.json()["error"] == "capability_error", r.text


@pytest.mark.parametrize("raw", [b'"\xed\xa0\x80"', b'"\\ud800"', b'"a\\udfff"'])
@pytest.mark.parametrize("path", ["/chio/evaluate", "/v1/capabilities", "/v1/evaluate", "/v1/receipts/verify"])
def test_a_lone_surrogate_anywhere_in_a_body_is_a_422(tmp_path: Path, raw: bytes, path: str) -> None:
    # found by the hostile-body fuzz test: json.loads lets these through, a later re-encode crashed (500)
    body = (b'{"request_id": "r", "method": "GET", "route_pattern": "/a", "path": "/a", "timestamp": 1, '
            b'"subject": "s", "capability_id": "c", "tool_server": "t", "tool_name": "n", "caller": ' + raw + b'}')
    with Kernel(tmp_path / "k") as kernel:
        r = TestClient(create_app(kernel)).post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.json()["message"], r.text
    ok = TestClient(create_app(Kernel(tmp_path / "k2"))).post(
        "/v1/capabilities", json={"subject": "s\U0001f600", "scope": GRANT})  # a valid pair is fine
    assert ok.status_code == 200, ok.text


class _StoreDown(Exception):
    """A store's own "could not be used" error (e.g. a lost database connection)."""


def test_the_stores_transient_errors_are_a_retryable_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Kernel(tmp_path / "k") as kernel:
        token = kernel.create_capability("agent:a", GRANT, 600)
        monkeypatch.setattr(kernel._store, "transient_errors", (_StoreDown,))
        client = TestClient(create_app(_Faulty(kernel, _StoreDown("connection lost"))))
        r = client.post("/v1/evaluate", json={"capability_id": token.id, "tool_server": "files",
                                              "tool_name": "read_file", "parameters": {}})
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text
        assert "retry" in r.json()["message"]
