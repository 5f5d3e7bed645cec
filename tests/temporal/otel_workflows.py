"""A workflow that waits for a signal between governed activities (the worker-restart telemetry test)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError


@workflow.defn
class GatedWorkflow:
    """``checkpoint("before")``; wait for the ``go`` signal; ``checkpoint("after")``; ``debit_account`` (denied)."""

    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.run
    async def run(self) -> list[str]:
        once = RetryPolicy(maximum_attempts=1)
        timeout = timedelta(seconds=30)
        out = [await workflow.execute_activity("checkpoint", args=["before"], start_to_close_timeout=timeout, retry_policy=once)]
        await workflow.wait_condition(lambda: self.go)
        out.append(await workflow.execute_activity("checkpoint", args=["after"], start_to_close_timeout=timeout, retry_policy=once))
        try:
            await workflow.execute_activity("debit_account", args=["a", 1], start_to_close_timeout=timeout, retry_policy=once)
        except ActivityError:
            out.append("debit denied")
        return out
