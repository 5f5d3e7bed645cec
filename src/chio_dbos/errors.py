"""Errors of the DBOS layer.

A chio deny surfaces as ``ChioDBOSPermissionError`` (a ``PermissionError``) raised *from* a
:class:`ChioDBOSError` (its ``__cause__``), so code that catches ``PermissionError`` keeps working and
code that wants the receipt reads ``err.__cause__.receipt_id``. Both pickle (DBOS records a failed
workflow's exception in its system database).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ChioDBOSError", "ChioDBOSPermissionError"]


class ChioDBOSError(Exception):
    """The deny payload of a call a Chio kernel did not allow in a DBOS workflow.

    Attributes:
        receipt_id: id of the signed deny receipt.
        guard: the guard that denied (``"scope"``, ``"cost"``, ...).
        reason: what was denied and why, in words.
        decision: the full decision dict of the receipt.
    """

    def __init__(
        self, receipt_id: str | None, guard: str | None, reason: str | None, decision: dict[str, Any] | None = None
    ) -> None:
        super().__init__(receipt_id, guard, reason, decision)
        self.receipt_id = receipt_id
        self.guard = guard
        self.reason = reason
        self.decision = decision or {}

    def __str__(self) -> str:
        return f"Chio denied the call (guard: {self.guard}; receipt: {self.receipt_id}): {self.reason}"


class ChioDBOSPermissionError(PermissionError):
    """The ``PermissionError`` a denied call raises in a governed DBOS agent (cause: :class:`ChioDBOSError`)."""
