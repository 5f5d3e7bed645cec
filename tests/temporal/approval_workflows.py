"""Workflow and activity of the chio_temporal approval tests (importable by the workflow sandbox)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from chio_temporal import current_evaluation

REFUNDS: list[tuple[str, int, str | None, str | None]] = []
"""(order, amount, receipt id, approval id) for every refund body that actually ran."""


@activity.defn
async def refund(order: str, amount: int) -> str:
    evaluation = current_evaluation()
    REFUNDS.append((order, amount, evaluation.receipt_id if evaluation else None, evaluation.approval_id if evaluation else None))
    return f"refunded {amount} on {order}"


@workflow.defn
class RefundWorkflow:
    @workflow.run
    async def run(self, order: str, amount: int) -> Any:
        return await workflow.execute_activity(
            refund,
            args=[order, amount],
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
