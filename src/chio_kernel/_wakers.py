"""Waking the run that waits for an approval (docs/approvals.md, "Waking the run").

A durable run waiting for a person registers a **wake** on its pending approval: a JSON object
``{"engine": "<name>", ...engine-specific fields}``. When the kernel commits the answer it calls the
**waker** of each registered wake, after the commit and outside every store lock. A wake is not
authority: it only wakes the run, which then asks the kernel again with the approval id; only the
kernel's allow of THAT re-evaluation runs the call.

Wakers are found by engine name: first those registered in this process (:func:`register_waker`),
then the Python entry points of group :data:`WAKER_GROUP` (entry point name = engine). The kernel
never imports an engine package itself: the engine packages declare their waker as an entry point.

A waker is ``wake(wake, outcome) -> str`` (a one-line description of what it woke), called in a
daemon thread with a timeout (:data:`WAKE_TIMEOUT_ENV`, default :data:`DEFAULT_WAKE_TIMEOUT`
seconds). An exception or a timeout is logged and reported as a failed wake; it never reaches the
person answering and never changes the answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from chio_kernel._errors import KernelInputError
from chio_kernel.canonical import canonical_json_str

__all__ = [
    "DEFAULT_WAKE_TIMEOUT",
    "MAX_WAKES",
    "MAX_WAKE_BYTES",
    "WAKER_GROUP",
    "WAKE_TIMEOUT_ENV",
    "Waker",
    "check_wake",
    "find_waker",
    "register_waker",
    "run_wakes",
    "unregister_waker",
    "wake_timeout",
]

#: The entry-point group where engine packages declare their waker (entry point name = engine).
WAKER_GROUP = "chio.approval_wakers"
#: Seconds one waker may take (default :data:`DEFAULT_WAKE_TIMEOUT`).
WAKE_TIMEOUT_ENV = "CHIO_WAKE_TIMEOUT"
DEFAULT_WAKE_TIMEOUT = 10.0
#: At most this many distinct wakes per approval.
MAX_WAKES = 8
#: At most this many bytes of canonical JSON per wake.
MAX_WAKE_BYTES = 4096
_ENGINE = re.compile(r"[a-z0-9_-]{1,32}")
_MAX_MESSAGE = 300

Waker = Callable[[Mapping[str, Any], Mapping[str, Any]], str]
"""``wake(wake, outcome) -> description``: wake the run described by ``wake``.

``outcome`` is ``{"approval_id", "status" ("approved" | "denied"), "approver", "reason",
"resolution_receipt_id"}``. It may block (up to the wake timeout) and raise; it returns one line
saying what it woke, e.g. ``"woke Temporal workflow wf-1"``."""

log = logging.getLogger("chio_kernel.wakers")
_registered: dict[str, Waker] = {}
_registered_lock = threading.Lock()


def _check_engine(engine: Any) -> str:
    if not isinstance(engine, str) or not _ENGINE.fullmatch(engine):
        raise KernelInputError(
            f"a wake's 'engine' must be 1 to 32 characters of a-z, 0-9, '_' or '-' (e.g. \"temporal\"), got {engine!r:.60}"
        )
    return engine


def register_waker(engine: str, fn: Waker) -> None:
    """Register ``fn`` as the waker of ``engine`` in this process (before any entry point).

    Args:
        engine: the engine name a wake names in its ``"engine"`` field.
        fn: ``fn(wake, outcome) -> str`` (see :data:`Waker`).

    Raises:
        KernelInputError: ``engine`` is not a short identifier or ``fn`` is not callable.
    """
    _check_engine(engine)
    if not callable(fn):
        raise KernelInputError(f"the waker of engine {engine!r} must be callable, got {type(fn).__name__}")
    with _registered_lock:
        _registered[engine] = fn


def unregister_waker(engine: str) -> None:
    """Forget the in-process waker of ``engine`` (entry points stay visible).

    Args:
        engine: the engine name passed to :func:`register_waker`.
    """
    with _registered_lock:
        _registered.pop(engine, None)


def find_waker(engine: str) -> Waker | None:
    """The waker of ``engine``: registered in-process, else the entry point of :data:`WAKER_GROUP`.

    Args:
        engine: the engine name.

    Returns:
        The waker, or None when no package provides one.

    Raises:
        Exception: whatever loading the entry point raises (its package is broken).
    """
    with _registered_lock:
        fn = _registered.get(engine)
    if fn is not None:
        return fn
    for ep in entry_points(group=WAKER_GROUP):
        if ep.name == engine:
            loaded: Waker = ep.load()
            return loaded
    return None


def check_wake(wake: Any) -> str:
    """Validate a wake object and return its canonical JSON text (what the store keeps and dedupes on).

    Args:
        wake: ``{"engine": "<name>", ...engine-specific JSON fields}``.

    Returns:
        The RFC 8785 canonical JSON text of ``wake``.

    Raises:
        KernelInputError: not a JSON object, no valid ``engine``, not JSON-able, or bigger than
            :data:`MAX_WAKE_BYTES` bytes.
    """
    if not isinstance(wake, Mapping):
        raise KernelInputError(
            f"a wake is a JSON object {{\"engine\": \"<name>\", ...}}, got {type(wake).__name__}"
        )
    if "engine" not in wake:
        raise KernelInputError("a wake needs an 'engine' field naming the engine that wakes the run (e.g. \"temporal\")")
    _check_engine(wake["engine"])
    try:
        text = canonical_json_str(dict(wake))
    except ValueError as err:
        raise KernelInputError(f"a wake must be plain JSON (objects, arrays, strings, numbers, booleans, null): {err}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_WAKE_BYTES:
        raise KernelInputError(
            f"a wake may take at most {MAX_WAKE_BYTES} bytes of canonical JSON, this one takes {size}; "
            "send only what the engine needs to find the run (an address, a workflow id, a token)"
        )
    return text


def wake_timeout() -> float:
    """Seconds one waker may take: ``$CHIO_WAKE_TIMEOUT`` if it is a positive number, else the default.

    Returns:
        The timeout in seconds.
    """
    raw = os.environ.get(WAKE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAKE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        log.warning("$%s=%r is not a number of seconds in (0, 3600]; using %s", WAKE_TIMEOUT_ENV, raw, DEFAULT_WAKE_TIMEOUT)
        return DEFAULT_WAKE_TIMEOUT
    return value


def _one_line(text: Any) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


class _WakeCall:
    """One waker running in its own daemon thread (a waker stuck past the timeout never holds up
    the person answering, nor the exit of a CLI process)."""

    def __init__(self, engine: str, fn: Waker, wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
        self.engine = engine
        self.result: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(fn, wake, outcome), name=f"chio-wake-{engine}", daemon=True
        )

    def _run(self, fn: Waker, wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
        try:
            self.result = _one_line(fn(wake, outcome))
        except BaseException as err:  # reported, never raised to the person answering
            self.error = err

    def start(self) -> None:
        self._thread.start()

    def join(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic); True if the waker finished."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()


def _failed(approval_id: str, engine: str, message: str) -> dict[str, Any]:
    log.warning("wake of approval %s (engine %s) failed: %s", approval_id, engine, message)
    return {"engine": engine, "ok": False, "message": message}


def _prepare(approval_id: str, text: str, outcome: Mapping[str, Any]) -> _WakeCall | dict[str, Any]:
    """The running call of one stored wake, or its failure report (no waker, broken package)."""
    wake = json.loads(text)
    engine = str(wake.get("engine", "?"))
    try:
        fn = find_waker(engine)
    except Exception as err:
        return _failed(approval_id, engine, f"the waker of engine {engine} could not be loaded: {_one_line(err)}")
    if fn is None:
        return _failed(
            approval_id, engine,
            f"no waker installed for engine {engine} (pip install the package that provides it); "
            "wake the run with the engine's own command",
        )
    call = _WakeCall(engine, fn, wake, outcome)
    call.start()
    return call


def run_wakes(approval_id: str, wakes: Sequence[str], outcome: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Call the waker of every wake (in parallel, each bounded by :func:`wake_timeout`).

    Args:
        approval_id: the approval answered (for the log).
        wakes: the stored wakes (canonical JSON texts, as :func:`check_wake` returns them).
        outcome: ``{"approval_id", "status", "approver", "reason", "resolution_receipt_id"}``.

    Returns:
        One report per wake, in order: ``{"engine": str, "ok": bool, "message": str}`` (``message``:
        the waker's description, or why the wake failed). Never raises for a waker's failure.
    """
    frozen = dict(outcome)
    started = [_prepare(approval_id, text, dict(frozen)) for text in wakes]
    timeout = wake_timeout()
    deadline = time.monotonic() + timeout
    reports: list[dict[str, Any]] = []
    for item in started:
        if isinstance(item, dict):
            reports.append(item)
        elif not item.join(deadline):
            reports.append(_failed(
                approval_id, item.engine,
                f"the waker of engine {item.engine} did not finish within {timeout:g} s "
                f"(${WAKE_TIMEOUT_ENV}); the run may still wake, or wake it with the engine's own command",
            ))
        elif item.error is not None:
            reports.append(_failed(
                approval_id, item.engine, f"{type(item.error).__name__}: {_one_line(item.error)}"
            ))
        else:
            reports.append({"engine": item.engine, "ok": True, "message": item.result or f"woke ({item.engine})"})
    return reports
