"""Error types of the Temporal layer, and the ``ApplicationError`` shapes a workflow sees."""

from __future__ import annotations

from typing import Any, cast

from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory, FailureError

__all__ = [
    "CONFIG_ERROR_TYPE",
    "ActivityDeniedError",
    "DENIED_ERROR_TYPE",
    "REJECTED_ERROR_TYPE",
    "SIDECAR_ERROR_TYPE",
    "ChioTemporalConfigError",
    "ChioTemporalError",
    "denied_error",
    "rejected_error",
    "sidecar_error",
]

DENIED_ERROR_TYPE = "ChioCapabilityDenied"
"""``ApplicationError.type`` of a denied activity (non-retryable): saga code matches on it."""

SIDECAR_ERROR_TYPE = "ChioSidecarError"
"""``ApplicationError.type`` when the kernel could not decide (retryable: Temporal's retry policy applies)."""

REJECTED_ERROR_TYPE = "ChioRequestRejected"
"""``ApplicationError.type`` when the kernel refused the request as malformed (non-retryable: the same input
would be refused again), e.g. parameters with no JSON form such as NaN."""

CONFIG_ERROR_TYPE = "ChioTemporalConfigError"
"""``ApplicationError.type`` when a misconfiguration is only detectable while an activity runs (non-retryable)."""


class ChioTemporalError(Exception):
    """Base class of every error raised by ``chio_temporal``."""


class ChioTemporalConfigError(ChioTemporalError, ValueError):
    """The Temporal layer was configured wrongly; the message says what to pass instead."""


def denied_error(
    *,
    activity_type: str,
    tool_server: str,
    tool_name: str,
    workflow_id: str | None,
    run_id: str | None,
    capability_id: str | None,
    receipt_id: str | None,
    guard: str | None,
    reason: str | None,
) -> ApplicationError:
    """Build the non-retryable error a denied activity fails with.

    Its category is ``BENIGN``: a deny is an expected outcome, so the worker logs it at DEBUG
    without a traceback (not as a WARNING) and Temporal does not count it as an activity error.

    Args:
        activity_type: the activity type.
        tool_server: the tool server it was evaluated against.
        tool_name: the tool.
        workflow_id: the workflow id.
        run_id: the workflow run id.
        capability_id: the capability, if any.
        receipt_id: the deny receipt's id.
        guard: the check that denied.
        reason: why.

    Returns:
        The ``ApplicationError`` (``type="ChioCapabilityDenied"``); ``details[0]`` is a dict of these
        facts.
    """
    details: dict[str, Any] = {
        "receipt_id": receipt_id,
        "guard": guard,
        "reason": reason,
        "capability_id": capability_id,
        "tool_server": tool_server,
        "tool_name": tool_name,
        "activity_type": activity_type,
        "workflow_id": workflow_id,
        "run_id": run_id,
    }
    # Starts as upstream's deny does ("Chio capability denied: <reason>"), on both engines.
    message = (
        f"Chio capability denied: {reason or 'denied'} (activity {activity_type!r}, {tool_server}/{tool_name}, "
        f"workflow {workflow_id!r}) [guard={guard}, receipt_id={receipt_id}]"
    )
    return ApplicationError(
        message, details, type=DENIED_ERROR_TYPE, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )


def rejected_error(*, url: str, detail: str, activity_type: str) -> ApplicationError:
    """Build the non-retryable error of an activity whose evaluation request the kernel refused as malformed.

    Args:
        url: where the kernel is.
        detail: the kernel's reason.
        activity_type: the activity type.

    Returns:
        The ``ApplicationError``; retrying the same input will not help.
    """
    message = (
        f"Chio kernel at {url} rejected the evaluation request of activity {activity_type!r} as malformed "
        f"({detail}); the activity did not run. Retrying the same input will not help: fix the activity's "
        "arguments (they must have a JSON form: no NaN/Infinity) or identifiers."
    )
    return ApplicationError(
        message,
        {"sidecar_url": url, "detail": detail, "activity_type": activity_type},
        type=REJECTED_ERROR_TYPE,
        non_retryable=True,
    )


def sidecar_error(*, url: str, detail: str, activity_type: str) -> ApplicationError:
    """Build the retryable error of an activity whose evaluation could not be made (kernel unreachable).

    Args:
        url: where the kernel is.
        detail: what went wrong.
        activity_type: the activity type.

    Returns:
        The ``ApplicationError``; Temporal retries the activity.
    """
    message = (
        f"Chio sidecar at {url} could not evaluate activity {activity_type!r} ({detail}); the activity "
        f"did not run and will be retried. Start the sidecar (`chio-durable sidecar`) at {url}."
    )
    return ApplicationError(
        message,
        {"sidecar_url": url, "detail": detail, "activity_type": activity_type},
        type=SIDECAR_ERROR_TYPE,
        non_retryable=False,
    )


class ActivityDeniedError(ActivityError, ApplicationError):
    """What workflow code sees when a governed activity was denied: an ``ActivityError`` that is also the
    ``ApplicationError(type="ChioCapabilityDenied")``.

    Temporal's Python SDK raises ``ActivityError`` (with the activity's ``ApplicationError`` as its
    ``cause``) from ``workflow.execute_activity``. Seed 001's saga catches ``ApplicationError`` and
    matches ``exc.type == DENIED_ERROR_TYPE``; the interceptor's workflow side re-raises a denied
    activity's error as this class so both styles work: ``except ApplicationError`` (``.type``,
    ``.details``, ``.non_retryable`` of the deny) and ``except ActivityError`` (``.cause``,
    ``.activity_type``...). Re-raised from the workflow it fails the workflow with exactly the
    original activity failure (``failure`` is the original proto).
    """

    def __init__(self, error: ActivityError, denial: ApplicationError) -> None:
        FailureError.__init__(self, denial.message, failure=error.failure)
        self._scheduled_event_id = error.scheduled_event_id
        self._started_event_id = error.started_event_id
        self._identity = error.identity
        self._activity_type = error.activity_type
        self._activity_id = error.activity_id
        self._retry_state = error.retry_state
        self._details = tuple(denial.details)  # ApplicationError keeps its *details tuple
        self._type = denial.type
        self._non_retryable = denial.non_retryable
        self._next_retry_delay = denial.next_retry_delay
        self._category = denial.category
        self.__cause__ = denial

    @property
    def receipt_id(self) -> str | None:
        return self._detail("receipt_id")

    @property
    def guard(self) -> str | None:
        return self._detail("guard")

    @property
    def reason(self) -> str | None:
        return self._detail("reason")

    def _detail(self, key: str) -> str | None:
        first = self.details[0] if self.details else None
        # details[0] is denied_error's dict: its receipt_id/guard/reason are str or None
        return cast("str | None", first.get(key)) if isinstance(first, dict) else None

    @classmethod
    def surface(cls, error: BaseException) -> BaseException:
        """``error`` as an :class:`ActivityDeniedError` if it is a chio deny, else ``error`` itself."""
        if isinstance(error, ActivityError) and not isinstance(error, cls):
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type == DENIED_ERROR_TYPE:
                return cls(error, cause)
        return error
