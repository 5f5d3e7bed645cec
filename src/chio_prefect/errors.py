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

__all__ = [
    "ChioPrefectConfigError",
    "ChioPermissionError",
    "ChioPrefectError",
    "ChioRequestRejected",
    "ChioSidecarUnavailable",
    "is_chio_denial",
]


class ChioPrefectError(Exception):
    """A chio policy decision that stopped a task or flow: the deny payload.

    Attributes:
        receipt_id: id of the signed deny receipt (``None`` when the call was stopped before it
            reached the kernel, e.g. by the flow-scope envelope).
        guard: name of the guard that denied (``"scope"``, ``"rate-limit-guard"``,
            ``"flow-scope"``...).
        reason: what was denied and why, in words.
        decision: the full decision dict of the receipt (``verdict``, ``guard``, ``reason``).
    """

    def __init__(
        self,
        receipt_id: str | None = None,
        guard: str | None = None,
        reason: str | None = None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        self.receipt_id = receipt_id
        self.guard = guard
        self.reason = reason
        self.decision: dict[str, Any] = dict(decision or {})
        super().__init__(reason or "denied by chio")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the payload across pickling (Prefect persists and ships exceptions in states).
        return (type(self), (self.receipt_id, self.guard, self.reason, self.decision))

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

    def __init__(self, message: str, *, at_call_time: bool = False) -> None:
        decision = {"verdict": "deny", "guard": self.GUARD, "reason": message} if at_call_time else None
        super().__init__(None, self.GUARD if at_call_time else None, message, decision)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_config_error, (self.reason, bool(self.decision)))


def _rebuild_config_error(message: str, at_call_time: bool) -> ChioPrefectConfigError:
    return ChioPrefectConfigError(message, at_call_time=at_call_time)


class _KernelCallFailed(Exception):
    """Shared shape of the two "no decision" errors: where it failed, why, for which call."""

    _message: str

    def __init__(self, url: str, detail: str, tool_server: str = "", tool_name: str = "") -> None:
        self.url = url
        self.detail = detail
        self.tool_server = tool_server
        self.tool_name = tool_name
        target = f" for {tool_server}/{tool_name}" if tool_server or tool_name else ""
        super().__init__(self._message.format(url=url, target=target, detail=detail))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.detail, self.tool_server, self.tool_name))


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
    """The ``PermissionError`` a chio deny raises; its ``__cause__`` is the :class:`ChioPrefectError`.

    A plain ``PermissionError`` subclass whose only addition is that the cause survives pickling
    (Prefect may persist a failed state's exception and load it back), so ``e.__cause__`` still
    carries the receipt id, guard and reason after a round trip.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_permission_error, (str(self), self.__cause__))


def _rebuild_permission_error(message: str, cause: BaseException | None) -> ChioPermissionError:
    err = ChioPermissionError(message)
    err.__cause__ = cause
    return err


def is_chio_denial(exc: BaseException | None) -> bool:
    """True for the exception a chio deny raises: ``PermissionError`` caused by a ChioPrefectError."""
    return isinstance(exc, PermissionError) and isinstance(exc.__cause__, ChioPrefectError)
