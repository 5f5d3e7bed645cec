"""Human approval, engine-neutral: what every layer needs to recognise and re-ask a pending call.

The kernel answers a call that needs a human with a signed ``pending_approval`` receipt carrying
``metadata.pending_approval = {approval_id, parameter_hash, expires_at, summary}`` (docs/approvals.md).
An engine then waits (Temporal: a workflow update; Prefect: a paused flow run; pydantic-ai: deferred
tool requests) and sends the SAME call again with ``approval_id``: only the kernel's answer to that
re-evaluation decides whether the call runs. A wake-up (an update, a resume input, ``ToolApproved``)
never authorises anything by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chio_sdk.models import MonetaryAmount

from chio_durable._decision import PENDING_VERDICT, Evaluation
from chio_kernel._idempotency import approval_call_key

__all__ = ["PENDING_VERDICT", "PendingApproval", "approval_key", "evaluate_under", "evaluate_under_sync", "pending_approval"]



@dataclass(frozen=True)
class PendingApproval:
    """The facts of one pending approval, read from the kernel's signed pending receipt."""

    approval_id: str
    expires_at: int
    summary: str
    parameter_hash: str | None
    receipt_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (Temporal error details, Prefect pause keys, pydantic-ai deferred metadata)."""
        return {
            "approval_id": self.approval_id,
            "expires_at": self.expires_at,
            "summary": self.summary,
            "parameter_hash": self.parameter_hash,
            "receipt_id": self.receipt_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PendingApproval | None:
        """Back from :meth:`to_dict`; ``None`` for anything that is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("approval_id"), str):
            return None
        expires = data.get("expires_at")
        return cls(
            approval_id=data["approval_id"],
            expires_at=int(expires) if isinstance(expires, (int, float)) else 0,
            summary=str(data.get("summary") or ""),
            parameter_hash=data.get("parameter_hash") if isinstance(data.get("parameter_hash"), str) else None,
            receipt_id=data.get("receipt_id") if isinstance(data.get("receipt_id"), str) else None,
        )


def pending_approval(evaluation: Evaluation) -> PendingApproval | None:
    """The pending approval ``evaluation`` asks for, or ``None`` if it is an allow or a deny.

    Read from the signed receipt (``decision.verdict`` and ``metadata.pending_approval``), so it
    works for every transport that hands back the kernel's receipt. A pending verdict without an
    approval id cannot be waited on: callers treat it as a deny (it is not an allow either way).
    """
    facts = evaluation.pending_approval
    if facts is None or not isinstance(facts.get("approval_id"), str):
        return None
    return PendingApproval.from_dict({**facts, "receipt_id": evaluation.receipt_id})


def approval_key(key: str | None, approval_id: str) -> str | None:
    """The idempotency key of the re-evaluation under ``approval_id``: derived from the call's own key.

    Stable across retries (a retried re-evaluation gets its allow receipt back, charged once) and
    distinct from the key that answered "pending" (that one keeps answering the pending receipt).
    The kernel's one rule (``chio_kernel._idempotency``) owns it; this keeps the wire key every
    release sent, so runs spanning an upgrade find their receipts.
    """
    return approval_call_key(key, approval_id)


async def evaluate_under(
    transport: Any, call: Any, *, capability_id: str, idempotency_key: str | None, approval_id: str | None,
    cost: MonetaryAmount | None = None,
) -> Evaluation:
    """``transport.evaluate`` (declaring ``cost``), re-asking under ``approval_id`` when there is one
    (its own idempotency key; the same cost, which the approval is bound to)."""
    if approval_id is None:
        result: Evaluation = await transport.evaluate(
            call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost
        )
        return result
    result = await transport.evaluate(
        call, capability_id=capability_id, idempotency_key=approval_key(idempotency_key, approval_id),
        cost=cost, approval_id=approval_id,
    )
    return result


def evaluate_under_sync(
    transport: Any, call: Any, *, capability_id: str, idempotency_key: str | None, approval_id: str | None,
    cost: MonetaryAmount | None = None,
) -> Evaluation:
    """:func:`evaluate_under` for sync callers."""
    if approval_id is None:
        result: Evaluation = transport.evaluate_sync(
            call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost
        )
        return result
    result = transport.evaluate_sync(
        call, capability_id=capability_id, idempotency_key=approval_key(idempotency_key, approval_id),
        cost=cost, approval_id=approval_id,
    )
    return result
