"""The kernel's decision on one governed call, as every layer receives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chio_sdk.models import ChioReceipt

__all__ = ["Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """The kernel's answer for one call, normalised across client kinds."""

    allowed: bool
    receipt_id: str | None
    capability_id: str
    tool_server: str
    tool_name: str
    guard: str | None = None
    reason: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    receipt: ChioReceipt | None = None
    timestamp: int | None = None

    @classmethod
    def from_receipt(cls, receipt: ChioReceipt) -> Evaluation:
        return cls(
            allowed=receipt.decision.is_allowed,
            receipt_id=receipt.id,
            capability_id=receipt.capability_id,
            tool_server=receipt.tool_server,
            tool_name=receipt.tool_name,
            guard=receipt.decision.guard,
            reason=receipt.decision.reason,
            decision=receipt.decision.model_dump(exclude_none=True),
            receipt=receipt,
            timestamp=receipt.timestamp,
        )

    @classmethod
    def local_deny(cls, capability_id: str, tool_server: str, tool_name: str, guard: str, reason: str) -> Evaluation:
        """A deny decided without asking the kernel (no grant, outside the envelope): no receipt."""
        return cls(
            allowed=False,
            receipt_id=None,
            capability_id=capability_id,
            tool_server=tool_server,
            tool_name=tool_name,
            guard=guard,
            reason=reason,
            decision={"verdict": "deny", "guard": guard, "reason": reason},
        )

    @property
    def parameter_hash(self) -> str | None:
        """The signed receipt's ``action.parameter_hash`` (``None`` without a receipt)."""
        return self.receipt.action.parameter_hash if self.receipt is not None else None

    @property
    def content_hash(self) -> str | None:
        """The signed receipt's ``content_hash`` (its link in the kernel's chain), if any."""
        return getattr(self.receipt, "content_hash", None) if self.receipt is not None else None
