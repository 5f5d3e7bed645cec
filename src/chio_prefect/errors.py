"""Errors of the Prefect layer.

A chio deny surfaces as ``PermissionError(message)`` raised *from* a :class:`ChioPrefectError`
(its ``__cause__``), so code that catches ``PermissionError`` keeps working and code that wants the
receipt reads ``e.__cause__``::

    try:
        research_pipeline("sensitive query")
    except PermissionError as e:
        if isinstance(e.__cause__, ChioPrefectError):
            print(e.__cause__.receipt_id, e.__cause__.guard, e.__cause__.reason)
"""

from __future__ import annotations

from typing import Any

from chio_sdk.errors import ChioError

from chio_durable import NoDecision

__all__ = [
    "ChioPrefectConfigError",
    "ChioPermissionError",
    "ChioPrefectError",
    "ChioRequestRejected",
    "ChioSidecarUnavailable",
    "is_chio_denial",
]


class ChioPrefectError(ChioError):
    """A chio policy decision that stopped a task or flow: the deny payload.

    Attributes:
        receipt_id: id of the signed deny receipt (a deny decided before evaluation, e.g. by the
            flow-scope envelope, is signed too; ``None`` only where no kernel could record it: a
            mock, a stock ``ChioClient``, a denied sub-flow).
        guard: name of the guard that denied (``"scope"``, ``"rate-limit-guard"``,
            ``"flow-scope"``...).
        reason: what was denied and why, in words.
        decision: the full decision dict of the receipt (``verdict``, ``guard``, ``reason``).
    """

    code: str | None = "TASK_DENIED"
    """``chio_sdk.errors.ChioError.code`` as upstream chio-prefect 0.1.0 sets it."""

    def __init__(
        self,
        first: str | None = None,
        /,
        guard: str | None = None,
        reason: str | None = None,
        decision: dict[str, Any] | None = None,
        *,
        receipt_id: str | None = None,
        message: str | None = None,
        task_name: str | None = None,
        flow_run_id: str | None = None,
        task_run_id: str | None = None,
        capability_id: str | None = None,
        tool_server: str | None = None,
    ) -> None:
        # Ours: ChioPrefectError(receipt_id, guard, reason, decision). Upstream chio-prefect 0.1.0:
        # ChioPrefectError(message, *, task_name=..., guard=..., reason=..., receipt_id=...). A first
        # positional argument is upstream's message when an upstream-only keyword (or receipt_id=) is
        # given, or when it is the only argument and has a space in it (a receipt id never has one).
        # See docs/upstream.md.
        if first is not None:
            upstream_form = (
                receipt_id is not None
                or any(v is not None for v in (task_name, flow_run_id, task_run_id, capability_id, tool_server))
                or (guard is None and decision is None and " " in first)
            )
            if upstream_form and message is None:
                message = first
            elif receipt_id is None:
                receipt_id = first
        self.receipt_id = receipt_id
        self.guard = guard
        self.reason = reason if reason is not None else message
        self.decision: dict[str, Any] = dict(decision or {})
        self.message: str = message or self.reason or "denied by chio"
        self.task_name = task_name
        self.flow_run_id = flow_run_id
        self.task_run_id = task_run_id
        self.capability_id = capability_id
        self.tool_server = tool_server
        super().__init__(self.message, code=type(self).code)

    def to_dict(self) -> dict[str, Any]:
        """The populated fields as a JSON-able dict (upstream chio-prefect 0.1.0's shape)."""
        payload: dict[str, Any] = {"code": self.code, "message": self.message}
        for key in ("task_name", "flow_run_id", "task_run_id", "capability_id", "tool_server", "guard",
                    "reason", "receipt_id"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        if self.decision:
            payload["decision"] = dict(self.decision)
        return payload

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the payload across pickling (Prefect persists and ships exceptions in states).
        return (_rebuild_error, (type(self), self.__dict__.copy()))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(receipt_id={self.receipt_id!r}, guard={self.guard!r}, "
            f"reason={self.reason!r})"
        )


class ChioPrefectConfigError(ChioPrefectError, ValueError):
    """A ``@chio_task`` / ``@chio_flow`` was given arguments it cannot work with.

    Raised at decoration time for anything decoration can check (the message says what to pass).
    What only the call site can know (a task called outside any ``@chio_flow`` without a
    ``capability_id``, no ``tool_server`` anywhere) is a deny at call time: ``PermissionError``
    raised from this error, with ``guard="chio-prefect-config"``; the task body never runs.
    """

    GUARD = "chio-prefect-config"
    code: str | None = "PREFECT_CONFIG_ERROR"

    def __init__(self, message: str, *, at_call_time: bool = False) -> None:
        decision = {"verdict": "deny", "guard": self.GUARD, "reason": message} if at_call_time else None
        super().__init__(None, self.GUARD if at_call_time else None, message, decision)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.__dict__.copy()))


def _rebuild_error(cls: type[ChioPrefectError], state: dict[str, Any]) -> ChioPrefectError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message") or "denied by chio")
    err.__dict__.update(state)
    return err


def _rebuild_config_error(message: str, at_call_time: bool) -> ChioPrefectConfigError:
    return ChioPrefectConfigError(message, at_call_time=at_call_time)


class _KernelCallFailed(NoDecision):
    """The Prefect layer's "no decision" errors: where it failed, why, for which call."""


class ChioSidecarUnavailable(_KernelCallFailed, ConnectionError):
    """The chio kernel could not decide (sidecar unreachable, timed out, bad answer).

    The governed body did not run. This is *not* a deny, so Prefect retries it by the task's
    retry policy (``retries=`` / ``retry_delay_seconds=``), like any connection error. Its
    ``__cause__`` is :class:`chio_durable.KernelUnavailable`.

    Attributes:
        url: the sidecar URL (or ``embedded:<dir>`` for the in-process kernel) that failed.
        detail: what went wrong.
    """

    _message = (
        "chio sidecar at {url} is unavailable{target} ({detail}); the task body was not run. "
        "Start the sidecar (`chio-durable sidecar`), pass sidecar_url= with its "
        "address, or pass chio_client=LocalChioClient() to use the embedded kernel."
    )


class ChioRequestRejected(_KernelCallFailed, ValueError):
    """The chio kernel refused the call's *request* as malformed (e.g. a NaN parameter).

    The governed body did not run. This is neither a deny nor an outage: the same input would be
    refused again, so the default retry condition (:func:`~chio_prefect.retry_unless_chio_denied`)
    does not retry it. Its ``__cause__`` is :class:`chio_durable.KernelRejected`.

    Attributes:
        url: the sidecar URL (or ``embedded:<dir>``) whose kernel refused the request.
        detail: the kernel's own message.
    """

    _message = (
        "chio kernel at {url} rejected the request{target} as malformed ({detail}); the governed "
        "call was not run and is not retried (the same input would be refused again). Pass JSON "
        "parameters (no NaN or Infinity) and valid identifiers."
    )


class ChioPermissionError(PermissionError):
    """The ``PermissionError`` a chio deny raises; its ``__cause__`` (and ``.chio_error``) is the
    :class:`ChioPrefectError`. Its message starts ``"Chio capability denied: <reason>"``, as upstream's.

    A plain ``PermissionError`` subclass whose only addition is that the cause survives pickling
    (Prefect may persist a failed state's exception and load it back), so ``e.__cause__`` still
    carries the receipt id, guard and reason after a round trip.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_permission_error, (str(self), self.__cause__))

    @property
    def chio_error(self) -> ChioPrefectError | None:
        """The :class:`ChioPrefectError` of the deny (upstream chio-prefect 0.1.0's attribute; = ``__cause__``)."""
        cause = self.__cause__
        return cause if isinstance(cause, ChioPrefectError) else None


def _rebuild_permission_error(message: str, cause: BaseException | None) -> ChioPermissionError:
    err = ChioPermissionError(message)
    err.__cause__ = cause
    return err


def is_chio_denial(exc: BaseException | None) -> bool:
    """Tell whether an exception is the one a chio deny raises.

    Args:
        exc: an exception (e.g. a failed task run's), or None.

    Returns:
        True for a ``PermissionError`` caused by a ``ChioPrefectError``.
    """
    return isinstance(exc, PermissionError) and isinstance(exc.__cause__, ChioPrefectError)
