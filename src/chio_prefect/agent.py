"""Deprecated path (one release): ``chio_prefect.agent`` became private; import ``ChioPrefectAgent``
from ``chio_prefect``. Every name the old module had still resolves here, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from typing import Any

from chio_prefect import _agent as _moved

warnings.warn(
    "chio_prefect.agent is deprecated and goes away in the next release: import ChioPrefectAgent from "
    "chio_prefect (ReceiptIdCachePolicy, prefect_run_identity and with_receipt_cache_key stay importable "
    "here until then)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["ChioPrefectAgent", "ReceiptIdCachePolicy", "prefect_run_identity", "with_receipt_cache_key"]


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
