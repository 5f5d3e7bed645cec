"""LocalChioClient: the ChioClient API on the embedded kernel, and what chio_durable._evaluation sees."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from chio_sdk.client import ChioClient
from chio_sdk.errors import ChioValidationError
from chio_sdk.models import CapabilityToken, ChioReceipt, MonetaryAmount

from chio_durable._evaluation import client_url, evaluate, evaluate_sync
from chio_kernel import Kernel, LocalChioClient

from kernel_helpers import grant, scope


def test_has_every_chio_client_method_with_compatible_signature() -> None:
    for name, member in inspect.getmembers(ChioClient):
        if name.startswith("_") and name not in ("__aenter__", "__aexit__"):
            continue
        if not callable(member):
            continue
        assert hasattr(LocalChioClient, name), name
        ours = inspect.signature(getattr(LocalChioClient, name))
        theirs = inspect.signature(member)
        for pname, param in theirs.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            assert pname in ours.parameters or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.parameters.values()
            ), (name, pname)


async def test_client_round_trip(chio_home: Path) -> None:
    async with LocalChioClient(data_dir=chio_home) as client:
        assert client.base_url == f"embedded:{client.kernel.data_dir}"
        assert client_url(client) == client.base_url and client_url(client.kernel) == client.base_url
        health = await client.health()
        assert health["status"] == "ok" and health["kernel_key"] == client.kernel.public_key_hex
        token = await client.create_capability(subject="agent:a", scope=scope(grant(max_invocations=2)),
                                               ttl_seconds=600, capability_id="cap-client")
        assert isinstance(token, CapabilityToken) and token.id == "cap-client"
        assert await client.validate_capability(token) is True
        r1 = await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read",
                                             parameters={"p": "/x"}, idempotency_key="k")
        r2 = await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read",
                                             parameters={"p": "/x"}, idempotency_key="k")
        assert isinstance(r1, ChioReceipt) and r1.id == r2.id and r1.decision.verdict == "allow"
        assert await client.verify_receipt(r1) is True
        assert (await client.get_receipt(r1.id)).id == r1.id
        deny = await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="write",
                                               parameters={})
        assert deny.decision.verdict == "deny" and deny.decision.guard == "scope"
        listed = await client.list_receipts(capability_id=token.id)
        assert [r.id for r in listed] == [r1.id, deny.id]
        assert await client.verify_receipt_chain(listed) is True
        assert client.collect_evidence(listed) == []
        with pytest.raises(ChioValidationError):
            await client.attenuate_capability(token, new_scope=scope(grant("fs", "write")))
        child = await client.attenuate_capability(token, new_scope=scope(grant(max_invocations=1)))
        assert await client.validate_capability(child) is True
        assert await client.revoke_capability(token.id) == [token.id, child.id]
        assert await client.validate_capability(child) is False
        kernel = client.kernel
    with pytest.raises(RuntimeError, match="closed"):
        kernel.evaluate("cap-client", "fs", "read", {})


async def test_shared_kernel_is_not_closed_by_client(kernel: Kernel) -> None:
    async with LocalChioClient(kernel=kernel) as client:
        assert client.kernel is kernel
    assert kernel.health()["status"] == "ok"


async def test_engine_neutral_evaluate_uses_the_kernel_directly(kernel: Kernel) -> None:
    client = LocalChioClient(kernel=kernel)
    token = kernel.create_capability("agent:a", scope(grant(max_invocations=1)), 600)
    ev = await evaluate(client, capability_id=token.id, tool_server="fs", tool_name="read",
                        parameters={"a": 1}, idempotency_key="idem-1", cost=MonetaryAmount(units=1, currency="USD"))
    assert ev.allowed and ev.receipt is not None and ev.receipt_id == ev.receipt.id
    again = evaluate_sync(client, capability_id=token.id, tool_server="fs", tool_name="read",
                          parameters={"a": 1}, idempotency_key="idem-1", cost=MonetaryAmount(units=1, currency="USD"))
    assert again.receipt_id == ev.receipt_id
    denied = evaluate_sync(client, capability_id=token.id, tool_server="fs", tool_name="read", parameters={"a": 2})
    assert not denied.allowed and denied.guard == "max_invocations" and "invocation" in denied.reason


async def test_http_request_evaluation_in_process(kernel: Kernel) -> None:
    from chio_sdk.models import CallerIdentity, Operation, ToolGrant
    from chio_sdk.models import ChioScope as Scope

    token = kernel.create_capability(
        "agent:web", Scope(grants=[ToolGrant(server_id="http", tool_name="GET /items/{id}", operations=[Operation.INVOKE])]),
        600,
    )
    client = LocalChioClient(kernel=kernel)
    ok = await client.evaluate_http_request(
        request_id="req-1", method="get", route_pattern="/items/{id}", path="/items/7",
        caller=CallerIdentity.anonymous(), capability_id=token.id,
    )
    assert ok.verdict.is_allowed and ok.receipt.capability_id == token.id
    assert await client.verify_http_receipt(ok.receipt) is True
    tampered = ok.receipt.model_copy(update={"route_pattern": "/admin"})
    assert await client.verify_http_receipt(tampered) is False
    denied = await client.evaluate_http_request(
        request_id="req-2", method="DELETE", route_pattern="/items/{id}", path="/items/7",
        caller=CallerIdentity.anonymous(), capability_token=token.model_dump_json(),
    )
    assert denied.verdict.is_denied and denied.verdict.guard == "scope"
    # the underlying tool decisions are in the ordinary receipt chain
    assert [r.tool_name for r in kernel.list_receipts()] == ["GET /items/{id}", "DELETE /items/{id}"]


def test_importing_chio_kernel_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chio_kernel; "
        "heavy = [m for m in ('starlette', 'uvicorn', 'typer', 'prefect', 'temporalio', 'chio_kernel.sidecar') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out
