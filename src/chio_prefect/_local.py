"""Prefect defaults for a first run on a local machine: the demo, the examples and the notebooks.

Without ``PREFECT_API_URL`` Prefect starts a temporary local API server (its "ephemeral" server) and
gives it 20 s to answer. On a busy 2-core machine the first start (database migrations) can take
longer, and the run then fails. That server also sends analytics by default: offline, this prints
a red "Failed to send telemetry" line and sometimes a ``database is locked`` traceback.

:func:`use_local_prefect_defaults` raises the start limit and turns the analytics off, unless the
user set either value (environment or Prefect profile). :func:`ephemeral_start_hint` turns Prefect's
start timeout into a one-line hint that names the setting.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from chio_prefect.errors import is_chio_denial

__all__ = [
    "ANALYTICS_SETTING",
    "LOCAL_STARTUP_TIMEOUT_SECONDS",
    "STARTUP_TIMEOUT_SETTING",
    "ephemeral_start_hint",
    "quiet_expected_denials",
    "use_local_prefect_defaults",
]

STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
ANALYTICS_SETTING = "PREFECT_SERVER_ANALYTICS_ENABLED"
LOCAL_STARTUP_TIMEOUT_SECONDS = 120
"""Start limit for the temporary server: Prefect's 20 s is missed on a loaded 2-core machine."""

# The text of Prefect's RuntimeError when its temporary server does not answer in time
# (prefect.server.api.server.SubprocessASGIServer.start); matched to give the hint.
_START_TIMEOUT_TEXT = "Timed out while attempting to connect to ephemeral Prefect API server"


def use_local_prefect_defaults() -> dict[str, str]:
    """Give Prefect's temporary server a start limit of 120 s and turn its analytics off.

    A value the user set (environment variable or active Prefect profile) is kept, and nothing
    changes when a Prefect API is configured (``PREFECT_API_URL``: no temporary server starts).
    Works before or after ``prefect`` is imported: Prefect's global settings are re-read from the
    environment.

    Returns:
        The environment variables this call set (empty when it set none).
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return {}
    server = settings.server
    wanted: dict[str, str] = {}
    if STARTUP_TIMEOUT_SETTING not in os.environ and "startup_timeout_seconds" not in server.ephemeral.model_fields_set:
        wanted[STARTUP_TIMEOUT_SETTING] = str(LOCAL_STARTUP_TIMEOUT_SECONDS)
    if ANALYTICS_SETTING not in os.environ and "analytics_enabled" not in server.model_fields_set:
        # The temporary server runs in a subprocess that inherits this environment.
        wanted[ANALYTICS_SETTING] = "false"
    if wanted:
        os.environ.update(wanted)
        refresh_global_settings_context()
    return wanted


def ephemeral_start_hint(error: BaseException) -> str | None:
    """Explain Prefect's temporary-server start timeout in one line, if that is what an error is.

    Args:
        error: the exception raised by a flow run (its causes are searched too).

    Returns:
        A hint naming the setting to raise (or to point ``PREFECT_API_URL`` at a server), or None
        for any other error.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _START_TIMEOUT_TEXT in str(current):
            from prefect.settings import get_current_settings

            limit = get_current_settings().server.ephemeral.startup_timeout_seconds
            return (
                f"Prefect's temporary local server did not start within {limit} s. "
                f"Set {STARTUP_TIMEOUT_SETTING} higher (e.g. {STARTUP_TIMEOUT_SETTING}=300), "
                "or point PREFECT_API_URL at a running Prefect server."
            )
        current = current.__cause__ or current.__context__
    return None


_DENY_TEXT = "Chio capability denied"
_PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class _ExpectedDenials:
    """A ``logging`` filter: Prefect's error records about a chio deny (its traceback, its "failed
    with exception" line) are dropped; every other record passes untouched."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_chio_denial(exc):
            return False
        return not (record.levelno >= logging.WARNING and _DENY_TEXT in record.getMessage())


_QUIET = _ExpectedDenials()


def quiet_expected_denials() -> None:
    """Keep Prefect's task and flow run loggers from printing a traceback for each chio deny.

    For programs whose denies are expected and reported by the program itself in one line (the
    examples, the demo): Prefect logs a failed run's exception with its traceback at ERROR, which
    looks like a crash in a program that exits 0. The records dropped are those whose exception is
    a chio deny, or whose WARNING/ERROR text quotes one; the run's final state line stays, and so
    does every other error. Those records then do not reach the Prefect API's run logs either, so
    leave this off in a deployment. Calling it again changes nothing.
    """
    for name in _PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
