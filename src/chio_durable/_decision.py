"""The kernel's decision on one governed call, as every layer receives it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chio_sdk.models import ChioReceipt

from chio_durable._call import GovernedCall

__all__ = ["PENDING_VERDICT", "Decision", "DecisionObserver", "Evaluation", "notify"]

log = logging.getLogger("chio_durable")


#: ``decision.verdict`` of a call that waits for a human (docs/approvals.md).
PENDING_VERDICT = "pending_approval"


@dataclass(frozen=True)
class Evaluation:
    """The kernel's answer for one call, normalised across client kinds.

    ``allowed`` is True only for the kernel's allow. ``pending`` is True when the call waits for a
    person (``decision.verdict == "pending_approval"``; ``allowed`` stays False, so a layer that knows
    only allow/deny fails closed); ``approval_id`` then names the approval to wait for, and re-evaluating
    the call with it (``KernelTransport.evaluate(..., approval_id=)``) is the only way to an allow. On
    the allow of such a re-evaluation ``approval_id`` names the approval used.

    Attributes:
        allowed: True only for the kernel's allow.
        receipt_id: the signed receipt's id; None for a deny decided without the kernel.
        capability_id: the capability the call ran under.
        tool_server: the call's server.
        tool_name: the call's tool.
        guard: the check that denied, on a deny.
        reason: why, on a deny or a pending approval.
        decision: the receipt's decision as JSON (``verdict``, ``reason``, ``guard``).
        receipt: the signed receipt, when the client returned one.
        timestamp: the receipt's time, unix seconds.
        pending: True when the call waits for a person's approval.
        approval_id: the approval to wait for (pending) or the one used (its allow).
    """

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
    pending: bool = False
    approval_id: str | None = None

    @classmethod
    def from_receipt(cls, receipt: ChioReceipt) -> Evaluation:
        """The evaluation a signed receipt states (allow, deny or pending approval)."""
        pending = receipt.decision.verdict == PENDING_VERDICT
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
            pending=pending,
            approval_id=_approval_id(receipt, pending),
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
    def pending_approval(self) -> dict[str, Any] | None:
        """The signed ``metadata.pending_approval`` (``approval_id``, ``parameter_hash``,
        ``expires_at``, ``summary``) of a pending receipt, else None."""
        if not self.pending or self.receipt is None or not self.receipt.metadata:
            return None
        value = self.receipt.metadata.get("pending_approval")
        return dict(value) if isinstance(value, Mapping) else None

    @property
    def parameter_hash(self) -> str | None:
        """The signed receipt's ``action.parameter_hash`` (``None`` without a receipt)."""
        return self.receipt.action.parameter_hash if self.receipt is not None else None

    @property
    def content_hash(self) -> str | None:
        """The signed receipt's ``content_hash`` (its link in the kernel's chain), if any."""
        return getattr(self.receipt, "content_hash", None) if self.receipt is not None else None


@dataclass(frozen=True)
class Decision:
    """One decision on one governed call, as every engine's writers observe it.

    Prefect's receipt events (``ReceiptEvent.from_decision``) and Temporal's envelope steps
    (``WorkflowStepReceipt.from_decision``) are views built from it by observers; the agent layer's
    ``GovernedRecord`` is one.

    Attributes:
        call: the governed call (parameters hashed once).
        evaluation: the kernel's :class:`Evaluation`.
        idempotency_key: the key the kernel was asked with, or None.
        capability_id: the capability the call ran under.
        where: the engine's own context (Prefect task and flow run ids and names; the Temporal
            activity's ``Info`` and headers).
    """

    call: GovernedCall
    evaluation: Evaluation
    idempotency_key: str | None
    capability_id: str | None = field(default=None, kw_only=True)
    where: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    @property
    def receipt_id(self) -> str | None:
        """The signed receipt's id (allow or deny); ``None`` for a deny decided without the kernel."""
        return self.evaluation.receipt_id

    @property
    def allowed(self) -> bool:
        return self.evaluation.allowed

    @property
    def pending(self) -> bool:
        """The call waits for a person's approval (``allowed`` is False meanwhile)."""
        return self.evaluation.pending

    @property
    def approval_id(self) -> str | None:
        """The approval a pending call waits for (or an approved re-evaluation used)."""
        return self.evaluation.approval_id


def _approval_id(receipt: ChioReceipt, pending: bool) -> str | None:
    """``metadata.pending_approval.approval_id`` of a pending receipt, ``metadata.approval_id`` of an
    allow under an approval; None otherwise (or if the metadata is not shaped so)."""
    meta = receipt.metadata or {}
    value: Any = meta.get("pending_approval") if pending else meta
    if pending and isinstance(value, Mapping):
        value = value.get("approval_id")
    elif not pending and receipt.decision.is_allowed:
        value = meta.get("approval_id")
    else:
        value = None
    return value if isinstance(value, str) else None


DecisionObserver = Callable[[Decision], object]
"""Called with every decision (an engine's event or envelope writer, a user's audit hook)."""


def notify(observers: Iterable[DecisionObserver], decision: Decision) -> None:
    """Hand ``decision`` to each observer; one failing is logged loudly and never hides the decision."""
    for observer in observers:
        try:
            observer(decision)
        except Exception:
            log.exception("chio: decision observer %r failed for receipt %s", observer, decision.receipt_id)
