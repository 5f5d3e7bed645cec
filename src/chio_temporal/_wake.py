"""The kernel's waker for Temporal runs waiting on an approval (entry point ``chio.approval_wakers: temporal``).

A governed agent waiting for a person waits through pydantic-ai's external events; the
``approval_wake`` activity registered ``{"engine": "temporal", "target", "namespace", "token"}`` with
the kernel (:func:`chio_temporal._governance.temporal_wake_fields`). When the approval is answered
the kernel calls :func:`wake`, which resolves the wait with pydantic-ai's public
``resolve_external_event``. The wake only wakes the run: it asks the kernel again under the
approval id, and only the kernel's allow runs the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

__all__ = ["wake"]


async def _resolve(target: str, namespace: str, token: str, outcome: Mapping[str, Any]) -> None:
    from pydantic_ai.durable_exec.temporal import resolve_external_event
    from temporalio.client import Client

    client = await Client.connect(target, namespace=namespace)
    await resolve_external_event(client, token, dict(outcome))


def wake(wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> str:
    """Resolve the external-event wait named by ``wake`` with ``outcome``.

    Args:
        wake: ``{"engine": "temporal", "target": host:port, "namespace": ..., "token": ...}``.
        outcome: The kernel's answer (``approval_id``, ``status``, ``approver``, ``reason``,
            ``resolution_receipt_id``), sent as the event's payload.

    Returns:
        One line saying which workflow was woken.

    Raises:
        ValueError: A field is missing.
        temporalio.service.RPCError: The workflow is not running (e.g. already completed).
    """
    fields = {key: wake.get(key) for key in ("target", "namespace", "token")}
    missing = [key for key, value in fields.items() if not isinstance(value, str) or not value]
    if missing:
        raise ValueError(f"a temporal wake needs {missing} (got {sorted(wake)})")
    target, namespace, token = str(fields["target"]), str(fields["namespace"]), str(fields["token"])
    asyncio.run(_resolve(target, namespace, token, outcome))
    workflow_id = token.rpartition(":")[0]
    return f"woke Temporal workflow {workflow_id} ({namespace} at {target}) for approval {outcome.get('approval_id')}"
