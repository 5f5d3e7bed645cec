"""``build_chio_worker``'s workflow sandbox passes ``beartype`` through, on a real Temporal dev server.

fastmcp (which pydantic-ai's MCP toolsets import) brings py-key-value-aio, which installs beartype's
import hook for the whole process; Temporal's sandbox would then import all of beartype afresh for
every workflow run (docs/temporal.md, "The sandbox").
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import host_beartype  # noqa: F401 - on the host, before any sandbox runs
import key_value.aio  # noqa: F401 - what importing fastmcp does: beartype's import hook, process-wide
import pytest
from temporalio.worker import Worker

from chio_kernel import LocalChioClient
from chio_temporal import build_chio_worker
from chio_temporal_kit import scope, tool
from sandbox_probe import BeartypeProbe

pytestmark = pytest.mark.temporal


async def test_build_chio_workers_sandbox_gives_workflows_the_hosts_beartype(temporal_env: Any, chio_home: Path) -> None:
    client = temporal_env.client
    governed_id, plain_id = f"probe-{uuid.uuid4().hex}", f"probe-{uuid.uuid4().hex}"
    async with LocalChioClient(data_dir=chio_home) as chio:
        worker, _, _ = await build_chio_worker(
            client, task_queue=governed_id, workflows=[BeartypeProbe], chio_client=chio, workflow_id=governed_id,
            scope=scope(tool("probe", "*")), subject="agent:probe",
        )
        async with worker:
            assert await client.execute_workflow(BeartypeProbe.run, id=governed_id, task_queue=governed_id) is True
    # Temporal's default sandbox, on a plain worker, imports a copy: what this test tells apart
    async with Worker(client, task_queue=plain_id, workflows=[BeartypeProbe]):
        assert await client.execute_workflow(BeartypeProbe.run, id=plain_id, task_queue=plain_id) is False
