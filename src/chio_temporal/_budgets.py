"""Money budgets on Temporal: holds of costed activities, settling them, releasing them (sagas).

* An activity whose :meth:`ChioActivityInterceptor.activity_cost` is not ``None`` (a governed
  agent's model requests: the model's price x the request's token limit) declares that cost with
  its evaluation; the allow is a **hold**. Every attempt of one activity execution uses the same
  idempotency key, so a retry gets the same receipt back and never a second hold. When the body
  returns, the hold settles at :meth:`~ChioActivityInterceptor.settled_cost` (a model request: its
  actual usage; another activity: what it reported with :func:`chio_durable.report_cost`, else the
  declared cost). A body that fails leaves the hold open: the next attempt reuses it.
* A workflow that fails or compensates releases its open holds through the **release activity**
  (:func:`release_holds_activity`, registered on the worker; exempt from governance: freeing
  budget must work even after a revocation). Workflow code calls it with :func:`release_holds`
  (explicit receipt ids, or the open holds the worker recorded for the calling workflow run) or
  wraps a run in :func:`release_holds_on_failure`. Each release's ``op_id`` is derived from the
  receipt id (:func:`chio_durable.release_op_id`): a retried or repeated compensation releases
  exactly once. Holds nobody releases (a worker killed, a workflow terminated) expire by the
  kernel's TTL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import temporalio.activity
import temporalio.workflow
from chio_sdk.models import MonetaryAmount
from temporalio.common import RetryPolicy

from chio_durable import ChioClientLike, KernelRejected, ToolCost, as_transport
from chio_durable._engine import (
    COST_METADATA_KEY,
    HOLDS,
    check_cost,
    release_hold,
    reported_cost_scope,
    resolve_cost,
    settle_hold,
)

if TYPE_CHECKING:
    from temporalio.worker import ExecuteActivityInput

    from chio_durable import Evaluation
    from chio_temporal.interceptor import ActivityCall, ChioActivityInterceptor

__all__ = [
    "RELEASE_HOLDS_ACTIVITY",
    "ReleaseHolds",
    "hold_scope",
    "release_holds",
    "release_holds_activity",
    "release_holds_on_failure",
    "run_with_hold",
]

log = logging.getLogger("chio_temporal.budgets")

RELEASE_HOLDS_ACTIVITY = "chio_release_holds"
"""The release activity's name (never governed by a ``ChioActivityInterceptor``)."""


def hold_scope(workflow_id: str | None, run_id: str | None) -> str:
    """Where the worker records the open holds of one workflow run."""
    return f"temporal:{workflow_id or ''}/{run_id or ''}"


async def run_with_hold(
    interceptor: ChioActivityInterceptor,
    info: temporalio.activity.Info,
    input: ExecuteActivityInput,
    call: ActivityCall,
    evaluation: Evaluation,
    cost: MonetaryAmount,
    proceed: Callable[[], Awaitable[Any]],
) -> Any:
    """Run an allowed activity that declared ``cost`` (its allow is a hold), then settle the hold."""
    receipt_id = evaluation.receipt_id
    if receipt_id is None:
        return await interceptor.on_allowed(info, input, call, evaluation, proceed)
    HOLDS.opened(hold_scope(info.workflow_id, info.workflow_run_id), receipt_id, interceptor.transport)
    with reported_cost_scope() as report:
        result = await interceptor.on_allowed(info, input, call, evaluation, proceed)
    actual = interceptor.settled_cost(info, input, call, result, cost, report.amount)
    await settle_hold(interceptor.transport, receipt_id, actual)
    return result


def open_holds_of_run(workflow_id: str, run_id: str) -> list[str]:
    """The receipt ids of the open holds this process recorded for one workflow run: those of the
    worker's other costed activities (:func:`hold_scope`) and those of governed agent calls (scoped by
    the run identity ``<workflow id>/<run id>`` of :func:`chio_temporal._governance.temporal_run_identity`).

    Args:
        workflow_id: The workflow's id.
        run_id: The workflow run's id.

    Returns:
        The receipt ids, each once.
    """
    found = HOLDS.open_in(hold_scope(workflow_id, run_id)) + HOLDS.open_in(f"{workflow_id}/{run_id}")
    return list(dict.fromkeys(rid for rid, _ in found))


@dataclass
class ReleaseHolds:
    """The release activity's input: which holds and why.

    Attributes:
        receipt_ids: the allow receipts whose holds to release; None: the open holds the worker
            recorded for the calling workflow run.
        reason: why (recorded and signed in each release receipt).
    """

    receipt_ids: list[str] | None = None
    reason: str = "compensation"


def _already_closed(err: BaseException) -> bool:
    # HoldConflict (settled, expired or released otherwise) is a KernelRejected, as is "no such hold".
    return isinstance(err, KernelRejected)


def release_holds_activity(chio_client: ChioClientLike) -> Callable[[ReleaseHolds], Awaitable[list[str]]]:
    """Build the release activity for a worker: ``Worker(..., activities=[release_holds_activity(chio)])``.

    A hold already settled, expired or unknown is skipped (logged); a kernel that cannot be reached
    fails the activity, so Temporal retries it.

    Args:
        chio_client: the client of the kernel that holds the budgets.

    Returns:
        The activity; it returns the receipt ids whose holds are released (now, or already by this
        same release).
    """
    transport = as_transport(chio_client)

    @temporalio.activity.defn(name=RELEASE_HOLDS_ACTIVITY)
    async def chio_release_holds(request: ReleaseHolds) -> list[str]:
        info = temporalio.activity.info()
        ids = request.receipt_ids
        if ids is None:
            ids = open_holds_of_run(info.workflow_id or "", info.workflow_run_id or "")
        released: list[str] = []
        for receipt_id in ids:
            try:
                await release_hold(transport, receipt_id, request.reason)
            except Exception as err:
                if not _already_closed(err):
                    raise
                log.info("chio: hold %s not released (%s: %s)", receipt_id, type(err).__name__, err)
                continue
            released.append(receipt_id)
        return released

    return chio_release_holds


async def release_holds(
    receipt_ids: Sequence[str] | None = None,
    *,
    reason: str = "compensation",
    start_to_close_timeout: timedelta = timedelta(seconds=30),
    retry_policy: RetryPolicy | None = None,
) -> list[str]:
    """Release open budget holds through the release activity, from workflow code.

    A saga's compensation step::

        try:
            await governed.run(prompt)
        except ActivityError:
            await release_holds(reason="order cancelled")
            raise

    Args:
        receipt_ids: the allow receipts whose holds to release; None releases the open holds the
            worker recorded for this workflow run (the holds of activities that failed or were
            compensated).
        reason: why (recorded and signed).
        start_to_close_timeout: the release activity's timeout.
        retry_policy: the release activity's retry policy (default: Temporal's).

    Returns:
        The receipt ids released.
    """
    ids = list(receipt_ids) if receipt_ids is not None else None
    result: list[str] = await temporalio.workflow.execute_activity(
        RELEASE_HOLDS_ACTIVITY,
        ReleaseHolds(ids, reason),
        start_to_close_timeout=start_to_close_timeout,
        retry_policy=retry_policy,
        result_type=list[str],
    )
    return result


@asynccontextmanager
async def release_holds_on_failure(reason: str = "workflow failed") -> AsyncIterator[None]:
    """Release this run's open holds if the block raises, then re-raise (workflow code).

    Use as ``async with release_holds_on_failure(): ...``.

    Args:
        reason: why (recorded and signed).

    Yields:
        Nothing; the block runs inside.
    """
    try:
        yield
    except Exception:
        await release_holds(reason=reason)
        raise


def tool_costs_of(agent: Any) -> dict[str, ToolCost]:
    """The declared costs of an agent's function tools: ``Tool(fn, metadata={"chio_cost": ...})``.

    Read once, where the ``ChioTemporalAgent`` is built, through public pydantic-ai names
    (``agent.toolsets``, ``AbstractToolset.apply``, ``FunctionToolset.tools``, ``Tool.metadata``): the
    activity side sees a tool call's name and arguments, not its metadata. Raises
    ``ChioTemporalConfigError`` for a value that cannot be a cost.
    """
    from pydantic_ai.toolsets import FunctionToolset

    from chio_temporal.errors import ChioTemporalConfigError

    leaves: list[Any] = []
    for toolset in getattr(agent, "toolsets", None) or ():
        toolset.apply(leaves.append)
    costs: dict[str, ToolCost] = {}
    for leaf in leaves:
        if not isinstance(leaf, FunctionToolset):
            continue
        for name, tool in leaf.tools.items():
            declared = (tool.metadata or {}).get(COST_METADATA_KEY)
            if declared is None:
                continue
            try:
                check_cost(declared, f"tool {name!r} metadata[{COST_METADATA_KEY!r}]")
            except (TypeError, ValueError) as err:
                raise ChioTemporalConfigError(str(err)) from err
            costs[name] = declared
    return costs


def tool_costs_by_name(costs: Mapping[str, ToolCost] | None) -> dict[str, ToolCost]:
    """``ChioTemporalAgent(tool_costs=...)`` checked (``ChioTemporalConfigError`` for a bad value)."""
    from chio_temporal.errors import ChioTemporalConfigError

    checked: dict[str, ToolCost] = {}
    for name, declared in (costs or {}).items():
        try:
            check_cost(declared, f"tool_costs[{name!r}]")
        except (TypeError, ValueError) as err:
            raise ChioTemporalConfigError(str(err)) from err
        checked[name] = declared
    return checked


def tool_call_cost(costs: Mapping[str, ToolCost], args: Sequence[Any]) -> MonetaryAmount | None:
    """The cost a function-tool activity declares, from its decoded ``(params, deps)`` arguments."""
    params = args[0] if args else None
    declared = costs.get(str(getattr(params, "name", "")))
    if declared is None:
        return None
    tool_args = getattr(params, "tool_args", None)
    return resolve_cost(declared, **(dict(tool_args) if isinstance(tool_args, Mapping) else {}))


__all__ += ["tool_call_cost", "tool_costs_by_name", "tool_costs_of"]
