"""chio_durable's KernelTransport (chosen once per layer) and GovernedCall (parameters hashed once).

Real parts: the embedded kernel, and the real sidecar over HTTP (``chio_kernel.testing.SidecarProcess``)
driven by our ``SidecarClient`` and by a stock ``chio_sdk.ChioClient``; the ``chio_sdk.testing`` mocks
only where a mock is what the transport is about.
"""

from __future__ import annotations

import importlib

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chio_sdk import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from chio_sdk.testing import allow_all

import chio_durable._transport as transport_module
from chio_durable import GovernedCall, KernelRejected, KernelTransport, as_transport, call_key
from chio_durable._transport import EmbeddedTransport, HttpTransport, MockTransport
from chio_durable.agent import ChioGovernance
from chio_kernel import Kernel, LocalChioClient, SidecarClient
from chio_kernel.testing import SidecarProcess
from chio_temporal import ChioActivityInterceptor

SCOPE = ChioScope(grants=[ToolGrant(server_id="docs", tool_name="*", operations=[Operation.INVOKE])])


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    data_dir = tmp_path_factory.mktemp("transport-kernel")
    Kernel(data_dir).create_capability(subject="agent", scope=SCOPE, capability_id="cap-docs")
    with SidecarProcess(data_dir) as process:
        yield process


def test_each_client_kind_gets_its_transport(tmp_path: Path) -> None:
    local = LocalChioClient(tmp_path)
    embedded = as_transport(local)
    assert isinstance(embedded, EmbeddedTransport) and embedded.kernel is local.kernel
    assert embedded.url == local.base_url and embedded.sends_idempotency_keys
    assert isinstance(as_transport(local.kernel), EmbeddedTransport)
    sidecar = as_transport(SidecarClient("http://127.0.0.1:1"))
    assert isinstance(sidecar, HttpTransport) and sidecar.sends_idempotency_keys
    stock = as_transport(ChioClient("http://127.0.0.1:1"))
    assert isinstance(stock, HttpTransport) and not stock.sends_idempotency_keys
    mock = as_transport(allow_all())
    assert isinstance(mock, MockTransport) and not mock.sends_idempotency_keys
    for transport in (embedded, sidecar, stock, mock):
        assert isinstance(transport, KernelTransport) and as_transport(transport) is transport
    with pytest.raises(TypeError, match="LocalChioClient"):
        as_transport(object())


def test_layers_choose_the_transport_once_at_construction(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = LocalChioClient(tmp_path)
    governance = ChioGovernance(capability_id="cap-1", chio_client=local)
    interceptor = ChioActivityInterceptor(chio_client=allow_all(), default_tool_server="docs")
    assert isinstance(governance.transport, EmbeddedTransport)
    assert isinstance(interceptor.transport, MockTransport)

    def no_more_choosing(client: Any) -> KernelTransport:
        raise AssertionError("a transport was chosen again after construction")

    monkeypatch.setattr(transport_module, "as_transport", no_more_choosing)
    call = GovernedCall("tool", "docs", "read", {"path": "/a"})
    local.kernel.create_capability(subject="a", scope=SCOPE, capability_id="cap-1")
    for _ in range(3):
        assert governance.transport.evaluate_sync(call, capability_id="cap-1").allowed
    monkeypatch.undo()
    interceptor.chio_client = local  # assigning another client chooses its transport anew
    assert isinstance(interceptor.transport, EmbeddedTransport)


def _count_canonicalisations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Count the calls of the kernel's canonical JSON from where a governed call reads it
    (``chio_durable._call`` imports it at module level)."""
    canonical = importlib.import_module("chio_kernel.canonical")
    call_module = importlib.import_module("chio_durable._call")

    seen: list[object] = []
    real = canonical.canonical_json_str

    def counting(value: Any) -> str:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(call_module, "canonical_json_str", counting)
    return seen


def test_parameters_are_canonicalised_once_per_call_over_http(
    sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = as_transport(SidecarClient(sidecar.url))
    parameters = {"path": "/docs/a.md", "n": [1, 2.5], "big": 1e21}
    seen = _count_canonicalisations(monkeypatch)
    call = GovernedCall("task", "docs", "read", parameters)
    key = call_key("flow-run-1", "read#0", "cap-docs", call)
    evaluation = transport.evaluate_sync(call, capability_id="cap-docs", idempotency_key=key)
    again = transport.evaluate_sync(call, capability_id="cap-docs", idempotency_key=key)
    # one canonical form served the key and both receipt checks; the sidecar signed that very hash
    assert [value for value in seen if value is parameters] == [parameters]
    assert evaluation.allowed and again.receipt_id == evaluation.receipt_id
    assert evaluation.parameter_hash == call.wire_parameter_hash == call.parameter_hash


def test_parameters_are_canonicalised_and_hashed_once_per_call_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    kernel_module = importlib.import_module("chio_kernel._request")  # where the kernel canonicalises a call

    local = LocalChioClient(tmp_path)
    local.kernel.create_capability(subject="agent", scope=SCOPE, capability_id="cap-docs")
    transport = as_transport(local)
    parameters = {"path": "/docs/a.md", "n": [1, 2.5], "big": 1e21}
    seen = _count_canonicalisations(monkeypatch)
    counting = importlib.import_module("chio_durable._call").canonical_json_str
    monkeypatch.setattr(kernel_module, "canonical_json_str", counting)  # the kernel's own import of it, counted too
    hashed: list[bytes] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(data: bytes = b"", **kwargs: Any) -> Any:
        hashed.append(bytes(data))
        return real_sha256(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    call = GovernedCall("tool", "docs", "read", parameters)
    key = call_key("run-1", "read#0", "cap-docs", call)
    evaluation = transport.evaluate_sync(call, capability_id="cap-docs", idempotency_key=key)
    monkeypatch.undo()
    # the call's canonical form served the key and the kernel's receipt: one canonicalisation, one
    # sha256 of it (the kernel used to canonicalise and hash the parameters a second time)
    assert [value for value in seen if value is parameters] == [parameters]
    text = call.canonical_parameters
    assert text is not None and [h for h in hashed if h == text.encode()] == [text.encode()]
    receipt = local.kernel.get_receipt(evaluation.receipt_id or "")
    assert receipt is not None and local.kernel.verify_receipt(receipt)
    assert receipt.action.parameter_hash == call.wire_parameter_hash == call.parameter_hash
    assert receipt.action.parameters == parameters


def test_the_kernel_refuses_half_a_precomputed_parameter_hash(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    kernel.create_capability(subject="agent", scope=SCOPE, capability_id="cap-docs")
    with pytest.raises(ValueError, match="go together"):
        kernel.evaluate("cap-docs", "docs", "read", {"a": 1}, parameter_hash="0" * 64)
    with pytest.raises(ValueError, match="go together"):
        kernel.evaluate("cap-docs", "docs", "read", {"a": 1}, canonical_parameters='{"a":1}')
    kernel.close()


def test_a_stock_chio_client_is_warned_once_and_sends_no_key(sidecar: SidecarProcess) -> None:
    transport = as_transport(ChioClient(sidecar.url))
    call = GovernedCall("tool", "docs", "read", {"path": "/b"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = transport.evaluate_sync(call, capability_id="cap-docs", idempotency_key="idem-x")
        second = transport.evaluate_sync(call, capability_id="cap-docs", idempotency_key="idem-x")
    assert first.allowed and second.allowed and first.receipt_id != second.receipt_id  # no key reached it
    assert sum("cannot send idempotency keys" in str(w.message) for w in caught) == 1


def test_parameters_with_no_json_form_are_not_sent(sidecar: SidecarProcess) -> None:
    transport = as_transport(SidecarClient(sidecar.url))
    call = GovernedCall("tool", "docs", "read", {"x": float("nan")})
    assert call.wire_parameter_hash is None and call.parameter_hash  # a key can still be formed
    with pytest.raises(KernelRejected, match="JSON"):
        transport.evaluate_sync(call, capability_id="cap-docs")
