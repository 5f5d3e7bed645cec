"""Money budgets on Prefect: declared task costs, settling their holds, releasing on failure.

* ``@chio_task(cost=...)``: the task's declared cost (an amount, or a callable of the task's
  arguments) goes with every evaluation of its attempts; an allow is then a **hold**. A retried
  attempt (same task run, same idempotency key) gets the same receipt back and never a second hold.
  When the body returns, the hold settles at what the body reported
  (:func:`chio_durable.report_cost`), else at the declared cost.
* Failure hooks release: a ``@chio_task`` whose run ends Failed/Crashed releases its open hold
  (its Prefect ``on_failure``/``on_crashed`` hooks), and a ``@chio_flow`` / ``ChioPrefectAgent``
  flow run that ends Failed/Crashed releases the open holds of every governed call of that flow
  run this process still has (agent model requests and tools included). Each release's ``op_id``
  is derived from the receipt id, so a hook that runs twice releases once. A process that dies
  before its hooks run leaves its holds to the kernel's TTL expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from chio_sdk.models import MonetaryAmount

from chio_durable import ToolCost
from chio_durable._engine import HOLDS, check_cost, reported_cost_scope, resolve_cost, run_on_kernel_loop, settle_hold

__all__ = [
    "FLOW_SCOPE_PREFIX",
    "declared_task_cost",
    "release_flow_run_holds",
    "release_task_run_holds",
    "task_hold_scope",
    "validate_task_cost",
    "with_release_hooks",
]

log = logging.getLogger("chio_prefect.budgets")

FLOW_SCOPE_PREFIX = "prefect-flow-run:"
"""Holds taken in a flow run are recorded under ``prefect-flow-run:<flow run id>:...`` (the agent's
run identity starts the same way), so the flow's failure hook finds them all."""


def validate_task_cost(cost: object, fn_name: str) -> None:
    """Decoration-time check of ``@chio_task(cost=...)`` (raises ``ChioPrefectConfigError``)."""
    from chio_prefect.errors import ChioPrefectConfigError

    if cost is None:
        return
    try:
        check_cost(cost, f"@chio_task on {fn_name}")
    except (TypeError, ValueError) as err:
        raise ChioPrefectConfigError(str(err)) from err


def declared_task_cost(cost: ToolCost | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> MonetaryAmount | None:
    """The cost one task call declares: ``cost`` or ``cost(*args, **kwargs)`` (the task's own arguments)."""
    return resolve_cost(cost, *args, **kwargs)


def task_hold_scope(flow_run_id: str | None, task_run_id: str | None) -> str:
    """Where a task's hold is recorded in the open-hold ledger."""
    return f"{FLOW_SCOPE_PREFIX}{flow_run_id or 'none'}:task-run:{task_run_id or 'none'}"


async def settle_task_async(transport: Any, receipt_id: str, amount: MonetaryAmount) -> None:
    await settle_hold(transport, receipt_id, amount)


def settle_task_sync(transport: Any, receipt_id: str, amount: MonetaryAmount) -> None:
    run_on_kernel_loop(settle_hold(transport, receipt_id, amount))


def _release(scope_prefix: str, reason: str) -> list[str]:
    released = run_on_kernel_loop(HOLDS.release_all(scope_prefix, reason))
    if released:
        log.info("chio: released %d open hold(s) of %s (%s)", len(released), scope_prefix, reason)
    return released


def release_task_run_holds(task: Any, task_run: Any, state: Any) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook of a ``@chio_task``: release its run's open hold."""
    scope = task_hold_scope(
        str(task_run.flow_run_id) if getattr(task_run, "flow_run_id", None) else None, str(task_run.id)
    )
    _release(scope, f"task run {task_run.id} ended {getattr(state, 'type', state)}")


def release_flow_run_holds(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook of a flow: release the open holds of its run."""
    _release(f"{FLOW_SCOPE_PREFIX}{flow_run.id}:", f"flow run {flow_run.id} ended {getattr(state, 'type', state)}")


def with_release_hooks(options: Mapping[str, Any], hook: Any) -> dict[str, Any]:
    """``options`` for ``prefect.task()`` / ``prefect.flow()`` with ``hook`` added to ``on_failure``
    and ``on_crashed`` (after the user's own hooks; ``on_crashed`` exists for flows only)."""
    merged = dict(options)
    names = ("on_failure", "on_crashed") if hook is release_flow_run_holds else ("on_failure",)
    for name in names:
        hooks = list(merged.get(name) or [])
        if hook not in hooks:
            hooks.append(hook)
        merged[name] = hooks
    return merged


__all__ += ["reported_cost_scope", "settle_task_async", "settle_task_sync"]


def _open(call: Any, receipt_id: str) -> None:
    HOLDS.opened(task_hold_scope(call.flow_run_id, call.task_run_id), receipt_id, call.transport)


async def run_costed_async(call: Any, receipt_id: str | None, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an allowed async task body that declared ``call.cost``, then settle its hold."""
    if receipt_id is None:
        return await fn(*args, **kwargs)
    _open(call, receipt_id)
    with reported_cost_scope() as report:
        result = await fn(*args, **kwargs)
    await settle_hold(call.transport, receipt_id, report.amount or call.cost)
    return result


def run_costed_sync(call: Any, receipt_id: str | None, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an allowed sync task body that declared ``call.cost``, then settle its hold."""
    if receipt_id is None:
        return fn(*args, **kwargs)
    _open(call, receipt_id)
    with reported_cost_scope() as report:
        result = fn(*args, **kwargs)
    settle_task_sync(call.transport, receipt_id, report.amount or call.cost)
    return result


__all__ += ["run_costed_async", "run_costed_sync"]
