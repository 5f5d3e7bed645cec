"""The default retry rule of ``@chio_task``: retry every failure except a chio deny or a refused request."""

from __future__ import annotations

from typing import Any

from chio_prefect.errors import ChioRequestRejected, is_chio_denial

__all__ = ["retry_unless_chio_denied"]


def retry_unless_chio_denied(task: Any, task_run: Any, state: Any) -> bool:
    """The ``retry_condition_fn`` installed when the user passes none.

    Prefect's default is "retry every failure while retries remain"; this keeps that, except for a
    chio deny: replaying a policy decision with the same inputs is pointless and spends evaluation
    budget; nor a request the kernel refused as malformed (``ChioRequestRejected``): the same input
    is refused again. A kernel that could not be reached (``ChioSidecarUnavailable``) is retried as usual.
    Pass your own ``retry_condition_fn`` to retry some denies (e.g. ``rate-limit-guard``).

    Args:
        task: the Prefect task (unused; part of Prefect's ``retry_condition_fn`` signature).
        task_run: the failed task run (unused, likewise).
        state: the failed state; its exception decides.

    Returns:
        ``True`` to let Prefect retry, ``False`` for a chio deny or a rejected request.
    """
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False, _sync=True)
        except Exception:  # noqa: BLE001 - an unreadable result is not a chio deny
            return True
    if isinstance(exc, ChioRequestRejected):
        return False
    return not is_chio_denial(exc if isinstance(exc, BaseException) else None)
