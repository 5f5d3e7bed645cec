"""chio_kernel.SidecarClient against the real sidecar, and what a stock chio_sdk.ChioClient gets instead.

SidecarClient is a ChioClient on an httpx client of its own (no private chio_sdk name): it sends the
kernel's idempotency key and cost, a bearer token, and reads/revokes through the sidecar's endpoints.
A stock ChioClient goes through its public ``evaluate_tool_call``: no idempotency key (warned once),
and a call with a cost is refused rather than evaluated without it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chio_sdk import ChioClient
from chio_sdk.errors import ChioConnectionError, ChioError
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant

from chio_durable._evaluation import KernelRejected, KernelUnavailable, client_url, evaluate
from chio_kernel import SidecarClient
from chio_kernel._client import capability_id_from_token
from chio_kernel.testing import free_port
from chio_sidecar_harness import Sidecar


def _scope(**kw: Any) -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="docs", tool_name="*", operations=[Operation.INVOKE], **kw)])


def test_is_a_chio_client_with_every_method_and_signature() -> None:
    client = SidecarClient("http://127.0.0.1:1/")
    assert isinstance(client, ChioClient) and client.base_url == "http://127.0.0.1:1"
    assert client_url(client) == "http://127.0.0.1:1"
    for name, member in inspect.getmembers(ChioClient):
        if name.startswith("_") or not callable(member):
            continue
        ours, theirs = inspect.signature(getattr(SidecarClient, name)), inspect.signature(member)
        for pname, param in theirs.parameters.items():
            assert pname in ours.parameters, (name, pname)
            assert ours.parameters[pname].kind == param.kind, (name, pname)


def test_capability_id_from_token_is_the_token_id() -> None:
    assert capability_id_from_token(None) is None
    assert capability_id_from_token("not json") is None
    assert capability_id_from_token('{"id": "x"}') is None  # not a whole token


def test_capability_id_from_token_reads_a_real_token(tmp_path: Path) -> None:
    from chio_kernel import Kernel

    token = Kernel(tmp_path).create_capability(subject="a", scope=_scope(), capability_id="cap-json")
    assert capability_id_from_token(token.model_dump_json()) == "cap-json"


async def test_idempotency_key_and_cost_travel_on_the_wire(sidecar: Sidecar) -> None:
    # evaluate() drives remote clients on its own kernel loop: one client there, one on the test's loop
    client = SidecarClient(sidecar.url, timeout=30)
    async with SidecarClient(sidecar.url, timeout=30) as admin:
        budget = MonetaryAmount(units=10, currency="USD")
        await admin.create_capability(subject="agent:sc", scope=_scope(max_cost_per_invocation=budget,
                                      max_total_cost=budget), capability_id="cap-sc-idem")
        cost = MonetaryAmount(units=6, currency="USD")
        ask = dict(capability_id="cap-sc-idem", tool_server="docs", tool_name="read", parameters={"p": 1})
        first = await evaluate(client, **ask, idempotency_key="idem-sc-1", cost=cost)
        again = await evaluate(client, **ask, idempotency_key="idem-sc-1", cost=cost)
        assert first.allowed and again.receipt_id == first.receipt_id  # same key: same receipt, charged once
        other = await evaluate(client, **ask, idempotency_key="idem-sc-2", cost=cost)
        assert not other.allowed  # a second charge of 6 would exceed the total of 10: the cost was sent
        stored = await admin.get_receipt(first.receipt_id or "")
        assert stored is not None and stored.id == first.receipt_id
        listed = await admin.list_receipts("cap-sc-idem")
        assert [r.id for r in listed] == [first.receipt_id, other.receipt_id]
        assert [r.id for r in await admin.list_receipts("cap-sc-idem", limit=1)] == [first.receipt_id]


async def test_reads_and_revokes_through_the_sidecar(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=30) as client:
        token = await client.create_capability(subject="agent:sc", scope=_scope(), capability_id="cap-sc-rev")
        assert await client.validate_capability(token) is True
        fetched = await client.get_capability("cap-sc-rev")
        assert fetched is not None and fetched.signature == token.signature
        assert await client.get_capability("cap-sc-unknown/../x") is None  # one path segment, 404 → None
        assert await client.get_receipt("rcpt-unknown") is None
        assert await client.revoke_capability("cap-sc-rev") == ["cap-sc-rev"]
        assert await client.validate_capability(token) is False
        with pytest.raises(ChioError) as info:
            await client.revoke_capability("cap-sc-unknown")
        assert info.value.code == "HTTP_404"


@pytest.fixture
def token_sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    proc = Sidecar(tmp_path / "kernel", token="s3cret").start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_token_is_sent_on_every_request(token_sidecar: Sidecar) -> None:
    async with SidecarClient(token_sidecar.url, timeout=30, token="s3cret") as admin:
        assert (await admin.health())["status"] == "ok"
        await admin.create_capability(subject="agent:t", scope=_scope(), capability_id="cap-tok")
    client = SidecarClient(token_sidecar.url, timeout=30, token="s3cret")  # used on evaluate()'s own loop
    ok = await evaluate(client, capability_id="cap-tok", tool_server="docs", tool_name="read", parameters={})
    assert ok.allowed
    async with SidecarClient(token_sidecar.url, timeout=30) as anonymous:
        with pytest.raises(ChioError) as info:
            await anonymous.health()
        assert info.value.code == "HTTP_401"


async def test_unreachable_sidecar_fails_closed_with_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with SidecarClient(url, timeout=5) as client:
        with pytest.raises(ChioConnectionError):
            await client.health()
        with pytest.raises(KernelUnavailable) as info:
            await evaluate(client, capability_id="c", tool_server="docs", tool_name="read", parameters={})
        assert info.value.url == url


async def test_stock_chio_client_evaluates_without_a_key_and_says_so(sidecar: Sidecar) -> None:
    async with SidecarClient(sidecar.url, timeout=30) as admin:
        await admin.create_capability(subject="agent:s", scope=_scope(), capability_id="cap-stock")
    stock = ChioClient(sidecar.url, timeout=30)
    try:
        ask = dict(capability_id="cap-stock", tool_server="docs", tool_name="read", parameters={"p": 1})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = await evaluate(stock, **ask, idempotency_key="idem-stock")
            again = await evaluate(stock, **ask, idempotency_key="idem-stock")
        assert first.allowed and again.allowed
        assert first.receipt_id != again.receipt_id  # no key on the wire: each evaluation is new
        said = [w for w in caught if "SidecarClient" in str(w.message)]
        assert len(said) == 1 and issubclass(said[0].category, RuntimeWarning)  # once per client
        assert client_url(stock) == "chio_sdk.ChioClient"
        with pytest.raises(KernelRejected, match="cannot send a cost"):
            await evaluate(stock, **ask, cost=MonetaryAmount(units=1, currency="USD"))
    finally:
        await stock.close()
