"""The two "the kernel gave no decision" errors: the governed call does not run either way."""

from __future__ import annotations

from typing import Any

__all__ = ["HoldConflict", "KernelRejected", "KernelUnavailable"]


class _NoDecision(Exception):
    """Shared shape of the two "the kernel gave no decision" errors: where, and why."""

    _message: str

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(self._message.format(url=url, detail=detail))
        self.url = url
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.detail))


class KernelUnavailable(_NoDecision, RuntimeError):
    """The kernel could not decide: the governed call must not run.

    Retryable: the same call may succeed once the sidecar is reachable again.
    """

    _message = (
        "Chio kernel at {url} could not evaluate the call ({detail}); the call was not run. "
        "Start the sidecar (`chio-durable sidecar`) or pass chio_client=LocalChioClient()."
    )


class KernelRejected(_NoDecision, ValueError):
    """The kernel refused the *request* as malformed: the governed call was not run.

    Not retryable: the same input would be refused again. ``detail`` carries the kernel's own
    message (e.g. ``parameters are not JSON-able: ... NaN ...``).
    """

    _message = (
        "Chio kernel at {url} rejected the request as malformed ({detail}); the call was not run. "
        "Retrying the same input will not help: fix the call's parameters or identifiers."
    )


class HoldConflict(KernelRejected):
    """A settle/release of a budget hold was refused because the hold is already closed by a
    different operation (or the ``op_id`` was used for another one): HTTP 409 /
    ``chio_kernel.HoldConflictError``. Not retryable; a retry with the first ``op_id`` gets the
    first receipt back instead."""

    _message = (
        "Chio kernel at {url} refused the budget operation ({detail}); the hold was already closed by "
        "another operation."
    )
