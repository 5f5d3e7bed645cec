"""Workflows and activities of the chio_temporal integration tests.

Importable by Temporal's workflow sandbox (a plain module on ``sys.path``: pytest puts this directory
there). Activities record every real invocation in ``CALLS`` so tests can assert which bodies ran.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from chio_temporal import DENIED_ERROR_TYPE, current_receipt_id

CALLS: list[tuple[str, tuple[Any, ...], str | None]] = []
"""(activity type, args, receipt id seen inside the body) for every body that actually ran."""

FAIL_FIRST_ATTEMPTS: dict[str, int] = {}
"""tag -> how many first attempts of ``flaky`` raise."""

CHECKPOINT_HOOKS: dict[str, Callable[[], Any]] = {}
"""tag -> what ``checkpoint(tag)`` does in its body (e.g. revoke the capability mid-workflow)."""


def reset() -> None:
    CALLS.clear()
    FAIL_FIRST_ATTEMPTS.clear()
    CHECKPOINT_HOOKS.clear()


def calls_of(name: str) -> list[tuple[Any, ...]]:
    return [args for activity_type, args, _ in CALLS if activity_type == name]


# --- activities --------------------------------------------------------------------------------


@activity.defn
async def debit_account(account: str, amount: int) -> str:
    CALLS.append(("debit_account", (account, amount), current_receipt_id()))
    return f"debited {amount} from {account}"


@activity.defn
async def credit_account(account: str, amount: int) -> str:
    CALLS.append(("credit_account", (account, amount), current_receipt_id()))
    return f"credited {amount} to {account}"


@activity.defn
async def read_file(path: str, limit: int = 100) -> str:
    CALLS.append(("read_file", (path, limit), current_receipt_id()))
    return f"contents of {path}"[:limit]


@activity.defn
def send_email(to: str, body: str) -> str:
    """A sync activity (runs on the worker's thread pool)."""
    CALLS.append(("send_email", (to, body), current_receipt_id()))
    return f"sent to {to}"


@activity.defn
async def flaky(tag: str) -> str:
    info = activity.info()
    CALLS.append(("flaky", (tag, info.attempt), current_receipt_id()))
    if info.attempt <= FAIL_FIRST_ATTEMPTS.get(tag, 0):
        raise RuntimeError(f"transient failure on attempt {info.attempt}")
    return f"{tag} ok on attempt {info.attempt}"


@activity.defn
async def checkpoint(tag: str) -> str:
    CALLS.append(("checkpoint", (tag,), current_receipt_id()))
    hook = CHECKPOINT_HOOKS.get(tag)
    if hook is not None:
        result = hook()
        if hasattr(result, "__await__"):
            await result
    return tag


class Ledger:
    """A class-based activity: its bound method is what the worker registers."""

    def __init__(self, name: str) -> None:
        self.name = name

    @activity.defn(name="ledger_post")
    async def post(self, account: str, memo: str = "none") -> str:
        CALLS.append(("ledger_post", (account, memo), current_receipt_id()))
        return f"{self.name}: {account} {memo}"


@activity.defn(dynamic=True)
async def dynamic_tool(args: Sequence[RawValue]) -> str:
    name = activity.info().activity_type
    values = [activity.payload_converter().from_payload(a.payload) for a in args]
    CALLS.append((name, tuple(values), current_receipt_id()))
    return f"dynamic {name}"


ALL_ACTIVITIES = [
    debit_account,
    credit_account,
    read_file,
    send_email,
    flaky,
    checkpoint,
    Ledger("main").post,
    dynamic_tool,
]

FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.0, maximum_attempts=50)


# --- workflows ---------------------------------------------------------------------------------


@dataclass
class Transfer:
    source: str
    destination: str
    amount: int


@dataclass
class TransferResult:
    debit: str
    credit: str


@workflow.defn
class TransferWorkflow:
    """Seed 001's saga, as written there."""

    @workflow.run
    async def run(self, transfer: Transfer) -> TransferResult:
        compensations: list[tuple[str, list]] = []
        debit = await workflow.execute_activity(
            debit_account,
            args=[transfer.source, transfer.amount],
            start_to_close_timeout=timedelta(seconds=30),
        )
        compensations.append(("credit_account", [transfer.source, transfer.amount]))
        try:
            credit = await workflow.execute_activity(
                credit_account,
                args=[transfer.destination, transfer.amount],
                start_to_close_timeout=timedelta(seconds=30),
            )
        except ApplicationError as exc:
            if exc.type == DENIED_ERROR_TYPE:
                for name, args in reversed(compensations):
                    await workflow.execute_activity(
                        name,
                        args=args,
                        start_to_close_timeout=timedelta(seconds=30),
                    )
            raise
        return TransferResult(debit=debit, credit=credit)


@dataclass
class Step:
    activity: str
    args: list[Any] = field(default_factory=list)
    local: bool = False


@dataclass
class Plan:
    steps: list[Step]
    max_attempts: int = 1
    children: list[Plan] = field(default_factory=list)
    child_id_prefix: str = ""


@workflow.defn
class PlanWorkflow:
    """Runs ``plan.steps`` in order (each by activity name), then each child plan as a child workflow."""

    @workflow.run
    async def run(self, plan: Plan) -> list[Any]:
        results: list[Any] = []
        retry = RetryPolicy(
            initial_interval=timedelta(milliseconds=100),
            backoff_coefficient=1.0,
            maximum_attempts=plan.max_attempts,
        )
        for step in plan.steps:
            if step.local:
                results.append(
                    await workflow.execute_local_activity(
                        step.activity,
                        args=step.args,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=retry,
                    )
                )
                continue
            results.append(
                await workflow.execute_activity(
                    step.activity,
                    args=step.args,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=retry,
                )
            )
        for index, child in enumerate(plan.children):
            results.append(
                await workflow.execute_child_workflow(
                    PlanWorkflow.run,
                    child,
                    id=f"{plan.child_id_prefix or workflow.info().workflow_id}-child-{index}",
                )
            )
        return results


@activity.defn
async def slow(tag: str) -> str:
    CALLS.append(("slow", (tag,), current_receipt_id()))
    try:
        for _ in range(100):
            activity.heartbeat()
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        CALLS.append(("slow-cancelled", (tag,), None))
        raise
    return tag


ALL_ACTIVITIES.append(slow)


@workflow.defn
class CancelWorkflow:
    """Starts ``slow`` and cancels it: at once (``wait=0``) or after ``wait`` seconds."""

    @workflow.run
    async def run(self, wait: float) -> str:
        handle = workflow.start_activity(
            slow,
            "c",
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=timedelta(seconds=2),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if wait:
            await workflow.sleep(wait)
        handle.cancel()
        try:
            await handle
        except BaseException as err:  # noqa: BLE001 - report what the workflow saw
            return type(err).__name__ + ":" + type(getattr(err, "cause", None)).__name__
        return "not cancelled"
