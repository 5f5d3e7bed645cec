"""Per-workflow aggregation of chio receipts: ``WorkflowReceipt`` and its ``WorkflowStepReceipt`` s.

A step is one kernel decision for one activity execution. Retry attempts of the same activity that
get the same receipt back (the kernel's idempotency key is workflow id + run id + activity id +
capability id) update that step's ``attempts`` instead of adding a step, so ``allow_count`` counts
authorisations, not attempts. An attempt that gets a *different* receipt (say, a deny after the
capability was revoked between attempts) adds a step.

The envelope (``WorkflowReceipt.to_envelope()``) is the ``chio-temporal/v1`` JSON object; timestamps
are RFC 3339 UTC strings. The signed receipts themselves stay in the chio receipt store; the envelope
names them by ``receipt_id`` (and carries each receipt's ``parameter_hash`` and ``content_hash``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from chio_durable import Decision

__all__ = ["ENVELOPE_VERSION", "Outcome", "WorkflowReceipt", "WorkflowStepReceipt"]

ENVELOPE_VERSION = "chio-temporal/v1"

Outcome = Literal["success", "failure", "cancelled"]
OUTCOMES: tuple[str, ...] = ("success", "failure", "cancelled")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class WorkflowStepReceipt:
    """One kernel decision for one activity of a workflow run."""

    activity_id: str
    activity_type: str
    attempt: int
    tool_server: str
    tool_name: str
    capability_id: str | None
    receipt_id: str | None
    verdict: str
    guard: str | None = None
    reason: str | None = None
    parameter_hash: str | None = None
    content_hash: str | None = None
    evaluated_at: datetime = field(default_factory=_now)
    attempts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.attempts:
            self.attempts = [self.attempt]

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def _repr_html_(self) -> str:
        """One row of the receipt table (the same table on every engine: ``ReceiptTable``)."""
        from chio_durable.agent._display import records_html

        return records_html([self])

    @classmethod
    def from_decision(cls, decision: Decision) -> WorkflowStepReceipt:
        """The step for one decision on an activity execution (``decision.where["info"]``: its ``Info``)."""
        info = decision.where["info"]
        evaluation = decision.evaluation
        return cls(
            activity_id=info.activity_id,
            activity_type=info.activity_type,
            attempt=info.attempt,
            tool_server=decision.call.tool_server,
            tool_name=decision.call.tool_name,
            capability_id=decision.capability_id,
            receipt_id=evaluation.receipt_id,
            verdict="allow" if evaluation.allowed else "deny",
            guard=evaluation.guard,
            reason=evaluation.reason,
            parameter_hash=evaluation.parameter_hash,
            content_hash=evaluation.content_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "activity_id": self.activity_id,
            "activity_type": self.activity_type,
            "attempt": self.attempt,
            "attempts": list(self.attempts),
            "tool_server": self.tool_server,
            "tool_name": self.tool_name,
            "capability_id": self.capability_id,
            "receipt_id": self.receipt_id,
            "verdict": self.verdict,
            "guard": self.guard,
            "reason": self.reason,
            "parameter_hash": self.parameter_hash,
            "content_hash": self.content_hash,
            "evaluated_at": _iso(self.evaluated_at),
        }


@dataclass
class WorkflowReceipt:
    """The in-flight (then finalised) receipt aggregate of one ``(workflow_id, run_id)``."""

    workflow_id: str
    run_id: str | None
    parent_workflow_ids: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=_now)
    completed_at: datetime | None = None
    outcome: str | None = None
    steps: list[WorkflowStepReceipt] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def step_count(self) -> int:
        return len(self.steps)

    @property
    def allow_count(self) -> int:
        return sum(1 for step in self.steps if step.allowed)

    @property
    def deny_count(self) -> int:
        return sum(1 for step in self.steps if not step.allowed)

    @property
    def finalized(self) -> bool:
        return self.outcome is not None

    def _repr_html_(self) -> str:
        """The envelope's steps as the receipt table (as an agent run's records show on Prefect)."""
        from chio_durable.agent._display import records_html

        title = f"workflow {self.workflow_id}" + (f" ({self.outcome})" if self.outcome else "")
        return records_html(self.steps, title)

    @property
    def receipt_ids(self) -> list[str]:
        return [step.receipt_id for step in self.steps if step.receipt_id is not None]

    def add_step(self, step: WorkflowStepReceipt) -> WorkflowStepReceipt:
        """Record ``step``; a retry attempt with an already recorded receipt only adds its attempt number."""
        if step.receipt_id is not None:
            for existing in self.steps:
                if existing.receipt_id == step.receipt_id and existing.activity_id == step.activity_id:
                    if step.attempt not in existing.attempts:
                        existing.attempts.append(step.attempt)
                    return existing
        self.steps.append(step)
        return step

    def finalize(self, outcome: str, metadata: dict[str, Any] | None = None) -> None:
        self.outcome = outcome
        self.completed_at = _now()
        if metadata:
            self.metadata.update(metadata)

    def to_envelope(self) -> dict[str, Any]:
        """The ``chio-temporal/v1`` envelope (JSON-able dict)."""
        return {
            "version": ENVELOPE_VERSION,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "parent_workflow_ids": list(self.parent_workflow_ids),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "outcome": self.outcome,
            "step_count": self.step_count,
            "allow_count": self.allow_count,
            "deny_count": self.deny_count,
            "steps": [step.to_dict() for step in self.steps],
            "metadata": dict(self.metadata),
        }
