"""The Prefect waker: the kernel's answer to an approval resumes the flow run paused on it.

A governed Prefect run waiting for a person pauses its flow run (``chio_prefect._approvals``) and
registers a wake on the approval with the kernel::

    {"engine": "prefect", "api_url": "<PREFECT_API_URL of the run, if set>", "flow_run_id": "<id>"}

When the person answers in the kernel (``chio-durable approvals approve|deny ID``, the sidecar's
operator-respond, a signed approval token), the kernel calls :func:`wake` (found by engine name:
registered in-process, or the ``chio.approval_wakers`` entry point ``prefect``). It resumes the paused
flow run through Prefect's public client with ``run_input={"decision": "approve", "reason": ...}``:
"wake up and ask the kernel again". The form never decides: the run re-evaluates the call under the
approval and only the kernel's allow runs it; after a kernel deny the re-evaluation is that deny.

The API the waker talks to is ``api_url`` when the run had one (a ``prefect server start`` or Prefect
Cloud), else the Prefect settings of the process answering. A run on Prefect's ephemeral API (no
``PREFECT_API_URL``) can therefore only be woken from a process that reaches the same API, in
practice the run's own process (an in-process kernel); answering from the CLI of another process
then finds nothing to resume, and the person resumes the run from the Prefect UI or it re-asks the
kernel when its pause times out (docs/prefect_agent.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from uuid import UUID

__all__ = ["ENGINE", "PAUSE_WAIT_SECONDS", "wake", "wake_fields"]

ENGINE = "prefect"
"""The ``engine`` of Prefect wakes (and the name of the ``chio.approval_wakers`` entry point)."""

PAUSE_WAIT_SECONDS = 8.0
"""How long :func:`wake` waits for a run that registered its wake but is not paused yet."""

_POLL = 0.2


def wake_fields(flow_run_id: Any, api_url: str | None) -> dict[str, Any]:
    """The wake a paused flow run registers with the kernel.

    Args:
        flow_run_id: The paused flow run.
        api_url: The Prefect API the run talks to (``PREFECT_API_URL``), or None (ephemeral API).

    Returns:
        ``{"engine": "prefect", "flow_run_id": ..., "api_url": ...}`` (``api_url`` only when set).
    """
    fields: dict[str, Any] = {"engine": ENGINE, "flow_run_id": str(flow_run_id)}
    if api_url:
        fields["api_url"] = api_url
    return fields


@contextmanager
def _api(api_url: str | None) -> Iterator[None]:
    """Prefect settings pointing at ``api_url`` (the process's own settings when None)."""
    if not api_url:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def _reason(outcome: Mapping[str, Any]) -> str:
    who = outcome.get("approver") or "someone"
    return (
        f"chio kernel: approval {outcome.get('approval_id')} {outcome.get('status')} by {who}; "
        "the run asks the kernel again"
    )[:500]


def wake(wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> str:
    """Resume the Prefect flow run ``wake`` names, now that its approval was answered in the kernel.

    Args:
        wake: ``{"engine": "prefect", "flow_run_id": ..., "api_url"?: ...}`` as the run registered it.
        outcome: The kernel's answer (``approval_id``, ``status``, ``approver``, ``reason``, ...).

    Returns:
        One line saying what was woken (or that the run had ended already).

    Raises:
        ValueError: ``wake`` names no valid flow run id.
        RuntimeError: The run did not pause in time, or Prefect refused to resume it.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    try:
        flow_run_id = UUID(str(wake["flow_run_id"]))
    except (KeyError, ValueError) as err:
        raise ValueError(f"a Prefect wake needs a flow_run_id, got {dict(wake)!r:.200}") from err
    api_url = wake.get("api_url") if isinstance(wake.get("api_url"), str) else None
    with _api(api_url), get_client(sync_client=True) as client:
        deadline = time.monotonic() + PAUSE_WAIT_SECONDS
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_paused():
                break
            if state is not None and state.is_final():
                return f"Prefect flow run {flow_run_id} is {state.name} already: nothing to resume"
            if time.monotonic() > deadline:  # registered its wake but has not paused (yet)
                raise RuntimeError(f"Prefect flow run {flow_run_id} is not paused ({state.name if state else 'no state'})")
            time.sleep(_POLL)
        response = client.resume_flow_run(flow_run_id, run_input={"decision": "approve", "reason": _reason(outcome)})
    if response.status != SetStateStatus.ACCEPT:
        raise RuntimeError(f"Prefect refused to resume flow run {flow_run_id}: {response.details}")
    return f"resumed Prefect flow run {flow_run_id}" + (f" at {api_url}" if api_url else "")
