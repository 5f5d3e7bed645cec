"""Chio governance for Pydantic AI agents made durable with DBOS (``ChioDBOSAgent``).

See ``docs/dbos.md``: every model request, tool call and MCP call is evaluated by a Chio kernel
first, as a DBOS step recorded in the workflow, so a recovered workflow gets its decisions back.
"""

from chio_dbos._agent import (
    RECEIPT_METADATA_KEY,
    ChioDBOSAgent,
    dbos_run_identity,
    dbos_run_metadata,
    receipt_ids_in_messages,
)
from chio_dbos._approvals import WAKE_STEP
from chio_dbos._wake import approval_topic, wake, wake_fields
from chio_dbos.errors import ChioDBOSError, ChioDBOSPermissionError

__all__ = [
    "RECEIPT_METADATA_KEY",
    "WAKE_STEP",
    "ChioDBOSAgent",
    "ChioDBOSError",
    "ChioDBOSPermissionError",
    "approval_topic",
    "dbos_run_identity",
    "dbos_run_metadata",
    "receipt_ids_in_messages",
    "wake",
    "wake_fields",
]
