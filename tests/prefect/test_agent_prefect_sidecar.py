"""ChioPrefectAgent through the real sidecar over HTTP, driven by ``chio_kernel.SidecarClient``.

``SidecarClient`` is a real ``chio_sdk.ChioClient`` (subclass) that sends the kernel's idempotency
keys on the wire (``/v1/evaluate``), so a flow retry gets the same receipts
from the sidecar and the cached model response is served; a revocation made through the sidecar's
own kernel denies the next run. The sidecar is the ``sidecar_url`` fixture of ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_kernel import Kernel, SidecarClient
from chio_prefect._agent import ChioPrefectAgent
from chio_prefect.errors import ChioPrefectError

pytestmark = pytest.mark.prefect


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
        chio_client=SidecarClient(sidecar_url),
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
