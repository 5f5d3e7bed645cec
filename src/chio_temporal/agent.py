"""Deprecated path (one release): ``chio_temporal.agent`` became private; import ``ChioTemporalAgent``
from ``chio_temporal``. Every name the old module had still resolves here, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from typing import Any

from chio_temporal import _agent as _moved

warnings.warn(
    "chio_temporal.agent is deprecated and goes away in the next release: import ChioTemporalAgent from "
    "chio_temporal (receipt_ids_in_messages and RECEIPT_METADATA_KEY stay importable here until then)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["RECEIPT_METADATA_KEY", "ChioTemporalAgent", "receipt_ids_in_messages"]


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
