"""The errors of "the kernel gave no decision": the governed call does not run either way.

One root for every layer, so ``except NoDecision`` catches them all, whichever engine raised::

    NoDecision                                    the kernel gave no decision; the call did not run
    ├── KernelUnavailable (RuntimeError)          no answer: unreachable, timed out, bad answer (retryable)
    ├── KernelRejected (ValueError)               the request was refused as malformed (not retryable)
    │   └── HoldConflict                          a budget hold was already closed by another operation
    ├── chio_prefect.ChioSidecarUnavailable (ConnectionError)   the Prefect task's form of the two:
    └── chio_prefect.ChioRequestRejected (ValueError)           its __cause__ is the core error

(The engines' own "no decision" errors derive from :class:`NoDecision` too; each engine's errors
module draws its tree.)

A deny is not here: it is a decision (a signed receipt), raised as ``PermissionError``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HoldConflict", "KernelRejected", "KernelUnavailable", "NoDecision"]


class NoDecision(Exception):
    """The kernel gave no decision on a governed call, so the call did not run.

    Attributes:
        url: Where the kernel was asked (a sidecar URL, or ``embedded:<dir>``).
        detail: What went wrong.
        tool_server: The governed call's server, when known.
        tool_name: The governed call's tool, when known.
    """

    _message: str = "Chio kernel at {url} gave no decision{target} ({detail}); the call was not run."

    def __init__(self, url: str, detail: str, tool_server: str = "", tool_name: str = "") -> None:
        self.url = url
        self.detail = detail
        self.tool_server = tool_server
        self.tool_name = tool_name
        target = f" for {tool_server}/{tool_name}" if tool_server or tool_name else ""
        super().__init__(self._message.format(url=url, detail=detail, target=target))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.detail, self.tool_server, self.tool_name))


_NoDecision = NoDecision  # the name before it was public


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
