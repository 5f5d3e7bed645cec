"""Wake a DBOS workflow that waits for a person's answer to a Chio approval.

The kernel calls :func:`wake` (entry point ``dbos`` of group ``chio.approval_wakers``) after it
commits the answer to an approval a governed DBOS workflow registered a wake on. It sends one DBOS
message to the waiting workflow, on the topic the workflow receives on (``DBOS.recv``), through
DBOS's public client: only the system database is needed, no DBOS application in this process.

A wake is not authority: the woken workflow asks the kernel again under the approval id, and only
the kernel's allow runs the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ENGINE", "approval_topic", "wake", "wake_fields"]

ENGINE = "dbos"
"""The ``engine`` of a DBOS wake (the entry point name of :func:`wake`)."""


def approval_topic(approval_id: str) -> str:
    """Name the DBOS message topic a workflow waiting on an approval receives on.

    Args:
        approval_id: the kernel approval (``apr-...``).

    Returns:
        ``"chio-approval-<approval_id>"``.
    """
    return f"chio-approval-{approval_id}"


def wake_fields(system_database_url: str, workflow_id: str, approval_id: str) -> dict[str, Any]:
    """The wake a waiting workflow registers with the kernel.

    Args:
        system_database_url: The DBOS system database the workflow is recorded in.
        workflow_id: The waiting workflow.
        approval_id: The approval it waits on.

    Returns:
        ``{"engine": "dbos", "system_database_url", "workflow_id", "topic"}``.
    """
    return {
        "engine": ENGINE,
        "system_database_url": system_database_url,
        "workflow_id": workflow_id,
        "topic": approval_topic(approval_id),
    }


def wake(wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> str:
    """Send the approval's outcome to the waiting DBOS workflow (the kernel's waker for ``engine="dbos"``).

    Args:
        wake: What the workflow registered (:func:`wake_fields`).
        outcome: ``{"approval_id", "status", "approver", "reason", "resolution_receipt_id"}``.

    Returns:
        One line saying what was woken.

    Raises:
        ValueError: The wake lacks ``system_database_url``, ``workflow_id`` or ``topic``.
        Exception: Whatever DBOS raises when the system database cannot be reached (the kernel logs it).
    """
    url, workflow_id, topic = (wake.get(key) for key in ("system_database_url", "workflow_id", "topic"))
    if not (isinstance(url, str) and isinstance(workflow_id, str) and isinstance(topic, str)):
        raise ValueError(f"a DBOS wake needs system_database_url, workflow_id and topic (text), got {dict(wake)!r:.200}")
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url)
    try:
        message = {key: outcome.get(key) for key in ("approval_id", "status", "resolution_receipt_id")}
        key = f"chio-wake:{outcome.get('approval_id')}:{workflow_id}"
        client.send(workflow_id, message, topic, idempotency_key=key)
    finally:
        client.destroy()
    return f"woke DBOS workflow {workflow_id} ({topic})"
