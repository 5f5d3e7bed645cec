"""What the kernel answers, checked: a refused request (KernelRejected) and receipts that answer the call.

Engine-neutral ``chio_durable.evaluate`` over the real embedded kernel, the real sidecar (driven by the
real ``chio_sdk.ChioClient``) and ``chio_sdk.testing`` mocks; then the Prefect mapping of a refusal
(``@chio_task`` and ``ChioPrefectAgent``): fails closed, not retried, clear message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_durable import KernelRejected, KernelUnavailable, evaluate, evaluate_sync
from chio_durable.agent import ChioGovernance
from chio_kernel import LocalChioClient, SidecarClient
from chio_kernel.testing import SidecarProcess

pytestmark = pytest.mark.prefect

NAN = float("nan")


def _grant(server: str, tool: str = "*") -> ToolGrant:
    return ToolGrant(server_id=server, tool_name=tool, operations=[Operation.INVOKE])


def _issue(kernel_dir: Path, cap_id: str, *grants: ToolGrant) -> str:
    LocalChioClient(data_dir=kernel_dir).kernel.create_capability(
        subject="answers-test", scope=ChioScope(grants=list(grants)), capability_id=cap_id
    )
    return cap_id


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One real sidecar for this module (its kernel holds capability ``cap-answers``: docs/*)."""
    home = tmp_path_factory.mktemp("answers-kernel")
    _issue(home, "cap-answers", _grant("docs"), _grant("model"))
    with SidecarProcess(home) as running:
        yield running


# --- a request the kernel refuses is KernelRejected (not retryable), never KernelUnavailable ---


def test_embedded_kernel_refusing_nan_is_kernel_rejected(chio_home: Path) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    cap = _issue(chio_home, "cap-nan", _grant("docs"))
    with pytest.raises(KernelRejected) as caught:
        evaluate_sync(chio, capability_id=cap, tool_server="docs", tool_name="read", parameters={"x": NAN})
    err = caught.value
    assert not isinstance(err, KernelUnavailable) and isinstance(err, ValueError)
    assert "NaN" in err.detail and "not JSON-able" in err.detail  # the kernel's own message
    assert "was not run" in str(err) and "Start the sidecar" not in str(err)
    assert err.url.startswith("embedded:")


@pytest.mark.parametrize("kind", ["sidecar-client", "stock-chio-client"])
async def test_sidecar_4xx_is_kernel_rejected(sidecar: SidecarProcess, kind: str) -> None:
    client = SidecarClient(sidecar.url) if kind == "sidecar-client" else ChioClient(sidecar.url)
    try:
        with pytest.raises(KernelRejected) as caught:
            await evaluate(client, capability_id="c" * 300, tool_server="docs", tool_name="read", parameters={})
        assert "422" in caught.value.detail and "longer than 256" in caught.value.detail
        # a stock ChioClient exposes no URL: it is named by its type
        assert caught.value.url == (sidecar.url if kind == "sidecar-client" else "chio_sdk.ChioClient")
        # NaN over the wire: refused before sending (the kernel would refuse it the same way)
        with pytest.raises(KernelRejected, match="NaN"):
            await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read",
                           parameters={"x": NAN})
        # and the same client still gets decisions for well-formed calls
        ok = await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read",
                            parameters={"x": 1.5})
        assert ok.allowed and ok.receipt_id
    finally:
        await client.close()


def test_kernel_rejected_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(KernelRejected("http://k", "bad input")))
    assert (err.url, err.detail) == ("http://k", "bad input")
    unavailable = pickle.loads(pickle.dumps(KernelUnavailable("http://k", "down")))
    assert (unavailable.url, unavailable.detail) == ("http://k", "down")


# --- Prefect: ChioRequestRejected, not retried ------------------------------------------


def test_chio_task_nan_parameter_fails_closed_without_retry(chio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chio_prefect import ChioRequestRejected, chio_flow, chio_task

    chio = LocalChioClient(data_dir=chio_home)
    _issue(chio_home, "cap-task-nan", _grant("docs"))
    asked: list[dict[str, Any]] = []
    real_evaluate = chio.kernel.evaluate

    def counting_evaluate(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[3])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(chio.kernel, "evaluate", counting_evaluate)
    ran: list[float] = []

    @chio_task(retries=2, retry_delay_seconds=0)
    def read(x: float) -> float:
        ran.append(x)
        return x

    @chio_flow(capability_id="cap-task-nan", tool_server="docs", chio_client=chio)
    def pipeline(x: float) -> Any:
        state = read(x, return_state=True)
        return state.is_failed(), state.result(raise_on_failure=False)

    failed, err = pipeline(NAN)
    assert failed and ran == []
    assert isinstance(err, ChioRequestRejected) and isinstance(err.__cause__, KernelRejected)
    assert "docs/read" in str(err) and "NaN" in str(err) and "not retried" in str(err)
    assert len(asked) == 1  # retries=2, but the same input is refused again: no retry
    # a well-formed call of the same task still runs
    assert pipeline(2.5) == (False, 2.5) and ran == [2.5]


# --- agents: the run fails closed; the tool never runs -----------------------------------


def _nan_script(calls: list[float]) -> Agent[None, str]:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("scale", {"x": NAN}, tool_call_id="call-nan")])

    def scale(x: float) -> float:
        calls.append(x)
        return x * 2

    return Agent(FunctionModel(model), name="scaler", tools=[scale])


async def test_governance_nan_tool_argument_is_kernel_rejected(chio_home: Path) -> None:
    chio = LocalChioClient(data_dir=chio_home)
    cap = _issue(chio_home, "cap-agent-nan", _grant("model"), _grant("scaler"))
    calls: list[float] = []
    agent = _nan_script(calls)
    with pytest.raises(KernelRejected, match="NaN"):
        await agent.run("go", capabilities=[ChioGovernance(capability_id=cap, chio_client=chio)])
    assert calls == []


async def test_prefect_agent_nan_tool_argument_is_chio_request_rejected(chio_home: Path) -> None:
    from chio_prefect import ChioRequestRejected
    from chio_prefect._agent import ChioPrefectAgent

    chio = LocalChioClient(data_dir=chio_home)
    cap = _issue(chio_home, "cap-pagent-nan", _grant("model"), _grant("scaler"))
    calls: list[float] = []
    governed = ChioPrefectAgent(_nan_script(calls), capability_id=cap, chio_client=chio)
    with pytest.raises(ChioRequestRejected) as caught:
        await governed.run("go")
    assert isinstance(caught.value.__cause__, KernelRejected)
    assert "scaler/scale" in str(caught.value) and "NaN" in str(caught.value)
    assert calls == []


# --- a remote receipt must answer the call that was asked --------------------------------


class _MisroutingClient(ChioClient):
    """A real ChioClient whose requests are altered on the way (a misrouting proxy, a replay)."""

    def __init__(self, url: str, **changes: Any) -> None:
        super().__init__(url)
        self.changes = changes

    async def _post(self, path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return await super()._post(path, {**body, **self.changes}, **kwargs)


async def test_real_receipt_for_other_parameters_is_not_a_decision(sidecar: SidecarProcess) -> None:
    client = _MisroutingClient(sidecar.url, parameters={"path": "/etc/shadow"})
    try:
        with pytest.raises(KernelUnavailable, match="parameter_hash") as caught:
            await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read",
                           parameters={"path": "/docs/a.md"})
        assert "does not answer the call" in str(caught.value)
    finally:
        await client.close()


async def test_real_receipt_for_another_tool_is_not_a_decision(sidecar: SidecarProcess) -> None:
    client = _MisroutingClient(sidecar.url, tool_name="write")
    try:
        with pytest.raises(KernelUnavailable, match=r"tool_name 'write' != 'read'"):
            await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read", parameters={})
    finally:
        await client.close()


class _MisroutingSidecarClient(SidecarClient):
    """The same misrouting, on the SidecarClient path (idempotency key on the wire)."""

    def __init__(self, url: str, **changes: Any) -> None:
        super().__init__(url)
        self.changes = changes

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return await super()._request(method, path, {**(body or {}), **self.changes}, **kw)


async def test_sidecar_client_receipt_for_another_call_is_not_a_decision(sidecar: SidecarProcess) -> None:
    for changes, expected in (({"parameters": {"path": "/etc/shadow"}}, "parameter_hash"),
                              ({"tool_name": "write"}, r"tool_name 'write' != 'read'")):
        client = _MisroutingSidecarClient(sidecar.url, **changes)
        try:
            with pytest.raises(KernelUnavailable, match=expected):
                await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read",
                               parameters={"path": "/docs/a.md"}, idempotency_key=f"idem-misroute-{expected}")
        finally:
            await client.close()


async def test_real_receipt_hash_matches_for_unicode_and_floats(sidecar: SidecarProcess) -> None:
    # the kernel's canonical JSON (UTF-8, ECMAScript numbers) — not json.dumps' ASCII escapes
    client = ChioClient(sidecar.url)
    params = {"q": "café ☕ 𝄞", "score": 1e21, "ratio": 0.1, "n": 10, "tags": ("a", "b"), "when": None}
    try:
        ok = await evaluate(client, capability_id="cap-answers", tool_server="docs", tool_name="read",
                            parameters=params)
        assert ok.allowed and ok.receipt is not None and len(ok.receipt.kernel_key) == 64
    finally:
        await client.close()


async def test_mock_receipts_are_checked_without_their_own_hash() -> None:
    from chio_sdk.testing import allow_all

    # a mock hashes with ensure_ascii JSON: its hash differs from the kernel's, and is not checked
    mock = allow_all()
    ok = await evaluate(mock, capability_id="cap-m", tool_server="docs", tool_name="read",
                        parameters={"q": "café", "x": 0.5})
    assert ok.allowed and ok.receipt is not None and ok.receipt.kernel_key == "mock-kernel-key"

    class WrongTool:
        """A duck-typed client answering with a receipt for another tool."""

        async def evaluate_tool_call(self, **body: Any) -> Any:
            return await mock.evaluate_tool_call(**{**body, "tool_name": "delete"})

    with pytest.raises(KernelUnavailable, match="tool_name 'delete' != 'read'"):
        await evaluate(WrongTool(), capability_id="cap-m", tool_server="docs", tool_name="read", parameters={})

    # a receipt that claims a real kernel's key is hash-checked, even from a duck-typed client
    class ForgedKey:
        async def evaluate_tool_call(self, **body: Any) -> Any:
            receipt = await mock.evaluate_tool_call(**body)
            return receipt.model_copy(update={"kernel_key": "ab" * 32})

    with pytest.raises(KernelUnavailable, match="parameter_hash"):
        await evaluate(ForgedKey(), capability_id="cap-m", tool_server="docs", tool_name="read",
                       parameters={"q": "café"})
