"""Per-workflow aggregation of chio receipts: ``WorkflowReceipt`` and its ``WorkflowStepReceipt`` s.

A step is one kernel decision for one activity execution. Retry attempts of the same activity that
get the same receipt back (the kernel's idempotency key is workflow id + run id + activity id +
capability id) update that step's ``attempts`` instead of adding a step, so ``allow_count`` counts
authorisations, not attempts. An attempt that gets a *different* receipt (say, a deny after the
capability was revoked between attempts) adds a step.

The envelope (``WorkflowReceipt.to_envelope()``) is the ``chio-temporal/v1`` JSON object; timestamps
are RFC 3339 UTC strings. The signed receipts themselves stay in the chio receipt store; the envelope
names them by ``receipt_id`` (and carries each receipt's ``parameter_hash`` and ``content_hash``).

Upstream chio-temporal's names work too (docs/upstream.md): ``WorkflowReceipt(workflow_id=...)``
without ``run_id``, ``record_step()``, ``finalize(outcome, completed_at=...)`` and ``to_json()`` (the
envelope as JSON text with upstream's Unix-second times); ``WorkflowStepReceipt(..., receipt=...)``
fills the step from a signed receipt. Times are accepted as ``datetime``, Unix seconds (int/float)
or RFC 3339 strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Union

from chio_temporal.errors import ChioTemporalConfigError

if TYPE_CHECKING:
    from chio_sdk.models import ChioReceipt

    from chio_durable import Decision

__all__ = ["ENVELOPE_VERSION", "Outcome", "WorkflowReceipt", "WorkflowStepReceipt"]

ENVELOPE_VERSION = "chio-temporal/v1"

Outcome = Literal["success", "failure", "cancelled"]
OUTCOMES: tuple[str, ...] = ("success", "failure", "cancelled")
IN_PROGRESS = "in_progress"  # upstream's outcome of a receipt not finalised yet (ours: None)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _unix_int(value: datetime | None) -> int | None:
    """Whole Unix seconds, upstream's number type for envelope times."""
    return None if value is None else int(value.timestamp())


TimeLike = Union[datetime, int, float, str]
"""A time as accepted on input: ``datetime`` (naive = UTC), Unix seconds (upstream's form) or RFC 3339."""


def as_datetime(value: TimeLike, name: str = "time") -> datetime:
    """``value`` as an aware UTC ``datetime``; a clear ``ChioTemporalConfigError`` for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError) as err:
            raise ChioTemporalConfigError(f"{name}={value!r} is not a valid Unix time: {err}") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ChioTemporalConfigError(
                f"{name}={value!r} is not an RFC 3339 time (e.g. '2026-04-19T20:14:02Z') nor Unix seconds"
            ) from None
        return as_datetime(parsed, name)
    raise ChioTemporalConfigError(
        f"{name}= must be a datetime, Unix seconds (int/float) or an RFC 3339 string, got {type(value).__name__}"
    )


@dataclass
class WorkflowStepReceipt:
    """One kernel decision for one activity of a workflow run.

    Attributes:
        activity_id: the activity id.
        activity_type: the activity type.
        attempt: the attempt that was evaluated first.
        tool_server: the tool server it was evaluated against.
        tool_name: the tool (the activity type).
        capability_id: the capability it ran under.
        receipt_id: the signed receipt's id.
        verdict: ``"allow"`` or ``"deny"``.
        guard: the check that denied, on a deny.
        reason: why, on a deny.
        parameter_hash: the hash of the activity's arguments.
        content_hash: the receipt's content hash.
        evaluated_at: when (a datetime, Unix seconds or RFC 3339 on input).
        attempts: every attempt that got this receipt back.
        receipt: the signed receipt this step is about; it fills every field left unset.
    """

    activity_id: str
    activity_type: str
    attempt: int = 1
    tool_server: str = ""
    tool_name: str = ""
    capability_id: str | None = None
    receipt_id: str | None = None
    verdict: str = ""
    guard: str | None = None
    reason: str | None = None
    parameter_hash: str | None = None
    content_hash: str | None = None
    evaluated_at: datetime = field(default_factory=_now)
    attempts: list[int] = field(default_factory=list)
    receipt: ChioReceipt | Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    """Upstream's form: the signed receipt this step is about; it fills every field left unset."""

    def __post_init__(self) -> None:
        if self.receipt is not None:
            self._fill_from_receipt(self.receipt)
        if self.verdict not in ("allow", "deny"):
            raise ChioTemporalConfigError(
                f"WorkflowStepReceipt needs verdict='allow'|'deny' or receipt=<the signed ChioReceipt>, "
                f"got verdict={self.verdict!r}"
            )
        self.evaluated_at = as_datetime(self.evaluated_at, "evaluated_at")
        if not self.attempts:
            self.attempts = [self.attempt]

    def _fill_from_receipt(self, receipt: ChioReceipt | Mapping[str, Any]) -> None:
        from chio_sdk.models import ChioReceipt  # lazy: the workflow sandbox imports this module

        r = receipt if isinstance(receipt, ChioReceipt) else ChioReceipt.model_validate(dict(receipt))
        self.receipt = r
        self.tool_server = self.tool_server or r.tool_server
        self.tool_name = self.tool_name or r.tool_name
        self.capability_id = self.capability_id or r.capability_id
        self.receipt_id = self.receipt_id or r.id
        self.verdict = self.verdict or ("allow" if r.decision.is_allowed else "deny")
        self.guard = self.guard or r.decision.guard
        self.reason = self.reason or r.decision.reason
        self.parameter_hash = self.parameter_hash or r.action.parameter_hash
        self.content_hash = self.content_hash or r.content_hash
        self.evaluated_at = as_datetime(r.timestamp, "receipt.timestamp")

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def _repr_html_(self) -> str:
        """One row of the receipt table (the same table on every engine: ``ReceiptTable``)."""
        from chio_durable.agent import records_html

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
        """Give the step as the ``chio-temporal/v1`` envelope writes it.

        ``receipt`` is the signed receipt as a dict (upstream's key), or None when the step was built
        from a decision (the receipt then stays in the chio receipt store, named by ``receipt_id``);
        ``WorkflowStepReceipt(**step.to_dict())`` is the same step again.

        Returns:
            A JSON-able dict, ``evaluated_at`` in RFC 3339.
        """
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
            "receipt": self._receipt_dict(),
        }

    def _receipt_dict(self) -> dict[str, Any] | None:
        if self.receipt is None:
            return None
        if isinstance(self.receipt, Mapping):
            return dict(self.receipt)
        dumped: dict[str, Any] = self.receipt.model_dump(exclude_none=True)
        return dumped

    def to_upstream_dict(self) -> dict[str, Any]:
        """Give the step in upstream chio-temporal's form.

        Returns:
            :meth:`to_dict` with ``evaluated_at`` in whole Unix seconds (upstream's int).
        """
        return {**self.to_dict(), "evaluated_at": _unix_int(self.evaluated_at)}


@dataclass
class WorkflowReceipt:
    """The in-flight (then finalised) receipt aggregate of one ``(workflow_id, run_id)``.

    Attributes:
        workflow_id: the workflow id.
        run_id: the run id.
        parent_workflow_ids: the parent workflows, outermost first (child workflows).
        started_at: when the first step was recorded.
        completed_at: when it was finalised, or None while open.
        outcome: ``"success"``, ``"failure"``, ``"cancelled"``, or None while open.
        steps: one :class:`WorkflowStepReceipt` per evaluated activity.
        metadata: workflow type, namespace, task queue, capability id, sidecar URL, and what the
            caller adds.
    """

    workflow_id: str
    run_id: str | None = None
    parent_workflow_ids: list[str] = field(default_factory=list)
    started_at: datetime = field(default_factory=_now)
    completed_at: datetime | None = None
    outcome: str | None = None
    steps: list[WorkflowStepReceipt] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.workflow_id, str) or not self.workflow_id:
            raise ChioTemporalConfigError(
                f"WorkflowReceipt.workflow_id must be a non-empty string, got {self.workflow_id!r}"
            )
        if self.outcome == IN_PROGRESS:  # upstream's name for "not finalised yet"
            self.outcome = None
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ChioTemporalConfigError(
                f"WorkflowReceipt.outcome must be one of {[IN_PROGRESS, *OUTCOMES]}, got {self.outcome!r}"
            )
        self.started_at = as_datetime(self.started_at, "started_at")
        if self.completed_at is not None:
            self.completed_at = as_datetime(self.completed_at, "completed_at")

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
        from chio_durable.agent import records_html

        title = f"workflow {self.workflow_id}" + (f" ({self.outcome})" if self.outcome else "")
        return records_html(self.steps, title)

    @property
    def receipt_ids(self) -> list[str]:
        return [step.receipt_id for step in self.steps if step.receipt_id is not None]

    def add_step(self, step: WorkflowStepReceipt) -> WorkflowStepReceipt:
        """Record a step; a retry attempt with an already recorded receipt only adds its attempt number.

        Args:
            step: the step.

        Returns:
            The recorded step (the existing one for a retry).
        """
        if step.receipt_id is not None:
            for existing in self.steps:
                if existing.receipt_id == step.receipt_id and existing.activity_id == step.activity_id:
                    if step.attempt not in existing.attempts:
                        existing.attempts.append(step.attempt)
                    return existing
        self.steps.append(step)
        return step

    def record_step(
        self,
        step: WorkflowStepReceipt | None = None,
        *,
        activity_type: str | None = None,
        activity_id: str | None = None,
        attempt: int = 1,
        receipt: ChioReceipt | Mapping[str, Any] | None = None,
    ) -> WorkflowStepReceipt:
        """Record a step: a :class:`WorkflowStepReceipt`, or upstream chio-temporal's keywords.

        Args:
            step: the step (then the keywords are not used); this is :meth:`add_step`.
            activity_type: upstream's form: the activity type (required, non-empty).
            activity_id: upstream's form: the activity id.
            attempt: upstream's form: the attempt number.
            receipt: upstream's form: the signed receipt of the step (required).

        Returns:
            The recorded step.

        Raises:
            ChioTemporalConfigError: no step and no (non-empty) ``activity_type`` and ``receipt``.
        """
        if step is None:
            if not activity_type or not isinstance(activity_type, str):
                raise ChioTemporalConfigError("record_step requires a non-empty activity_type")
            if receipt is None:
                raise ChioTemporalConfigError("record_step requires receipt= (the signed ChioReceipt of the step)")
            step = WorkflowStepReceipt(activity_id=activity_id or "", activity_type=activity_type,
                                       attempt=int(attempt), receipt=receipt)
        return self.add_step(step)

    def finalize(
        self,
        outcome: str = "success",
        metadata: dict[str, Any] | None = None,
        *,
        completed_at: TimeLike | None = None,
    ) -> None:
        """Close the receipt with its outcome.

        Finalising again with the same outcome changes nothing (idempotent: the first ``completed_at``
        stays), so a receipt never says two things.

        Args:
            outcome: ``"success"``, ``"failure"`` or ``"cancelled"``.
            metadata: merged into the receipt's metadata.
            completed_at: a datetime, Unix seconds or RFC 3339 (default now).

        Raises:
            ChioTemporalConfigError: an unknown outcome, or another outcome than the one recorded.
        """
        if outcome not in OUTCOMES:
            raise ChioTemporalConfigError(f"outcome= must be one of {list(OUTCOMES)}, got {outcome!r}")
        when = as_datetime(completed_at, "completed_at") if completed_at is not None else None
        if self.outcome is not None:
            if outcome != self.outcome:
                raise ChioTemporalConfigError(
                    f"the receipt of workflow {self.workflow_id!r} run {self.run_id!r} is already finalised "
                    f"with outcome {self.outcome!r}; refusing to change it to {outcome!r}"
                )
            if metadata:
                self.metadata.update(metadata)
            return
        self.outcome = outcome
        self.completed_at = when or _now()
        if metadata:
            self.metadata.update(metadata)

    def to_envelope(self) -> dict[str, Any]:
        """Give the ``chio-temporal/v1`` envelope.

        Returns:
            A JSON-able dict, times in RFC 3339.
        """
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

    def to_json(self, **dumps_kwargs: Any) -> str:
        """Give the envelope as JSON text in upstream chio-temporal's shape, byte-stable.

        Sorted keys, compact separators, ASCII; times in whole Unix seconds (int; ``completed_at`` null
        while in progress), ``outcome`` ``"in_progress"`` until finalised, each step with upstream's
        ``receipt``. Same fields and ``version`` as :meth:`to_envelope` (which keeps RFC 3339 strings,
        readable and unambiguous across time zones).

        Args:
            **dumps_kwargs: passed to ``json.dumps`` (defaults: ``sort_keys=True``, compact
                separators, ``ensure_ascii=True``).

        Returns:
            The JSON text.
        """
        envelope = self.to_envelope()
        envelope["started_at"] = _unix_int(self.started_at)
        envelope["completed_at"] = _unix_int(self.completed_at)  # null while in progress
        envelope["outcome"] = self.outcome or IN_PROGRESS
        envelope["steps"] = [step.to_upstream_dict() for step in self.steps]
        dumps_kwargs.setdefault("sort_keys", True)
        dumps_kwargs.setdefault("separators", (",", ":"))
        dumps_kwargs.setdefault("ensure_ascii", True)
        return json.dumps(envelope, default=str, **dumps_kwargs)
