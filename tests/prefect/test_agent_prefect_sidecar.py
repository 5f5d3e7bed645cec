"""ChioPrefectAgent through the real sidecar over HTTP, driven by the real ``chio_sdk.ChioClient``.

The idempotency keys travel on the wire (``/v1/evaluate``), so a flow retry gets the same receipts
from the sidecar and the cached model response is served; a revocation made through the sidecar's
own kernel denies the next run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import Kernel
from chio_prefect.agent import ChioPrefectAgent
from chio_prefect.errors import ChioPrefectError

pytestmark = pytest.mark.prefect


@pytest.fixture
def sidecar_url(chio_home: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "chio-durable"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "chio_kernel.cli"]
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_SIDECAR_TOKEN", "CHIO_HOME"}}
    log = (chio_home.parent / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [*cmd, "sidecar", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(chio_home)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (chio_home.parent / "sidecar.log").read_text()
            try:
                if httpx.get(url + "/chio/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sidecar did not become healthy"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_flow_retry_through_the_sidecar_replays_with_the_same_receipts(chio_home: Path, sidecar_url: str) -> None:
    kernel = Kernel(data_dir=chio_home)  # the sidecar's own data directory (processes may share it)
    invoke = [Operation.INVOKE]
    kernel.create_capability(
        subject="agent-test",
        scope=ChioScope(
            grants=[
                ToolGrant(server_id="model", tool_name="*", operations=invoke, max_invocations=2),
                ToolGrant(server_id="researcher", tool_name="search", operations=invoke),
            ]
        ),
        capability_id="cap-sidecar-agent",
    )
    counts = {"model": 0, "tool": 0}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        counts["model"] += 1
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart("search", {"query": "q"})])

    def search(query: str) -> str:
        counts["tool"] += 1
        if counts["tool"] == 1:
            raise RuntimeError("search backend hiccup")
        return "results"

    governed = ChioPrefectAgent(
        Agent(FunctionModel(model), name="researcher", tools=[search]),
        capability_id="cap-sidecar-agent",
        chio_client=ChioClient(sidecar_url),
        flow_options={"retries": 1, "retry_delay_seconds": 0},
    )

    result = governed.run_sync("go")

    assert result.output == "done"
    assert counts == {"model": 2, "tool": 2}  # the retry served the first model call from the cache
    ids = governed.receipt_ids_of(result)
    assert ids == [r.id for r in kernel.list_receipts(capability_id="cap-sidecar-agent")]

    kernel.revoke_capability("cap-sidecar-agent")
    with pytest.raises(PermissionError) as info:
        governed.run_sync("go")
    cause: Any = info.value.__cause__
    assert isinstance(cause, ChioPrefectError) and cause.guard == "revocation"
    assert counts["model"] == 2
