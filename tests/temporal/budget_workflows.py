"""The workflows of ``test_budgets_temporal.py`` (in a module of their own: see ``agent_workflows.py``)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import budget_app as app
    from chio_temporal import release_holds, release_holds_on_failure


@workflow.defn
class SpendWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.governed_spender.run(prompt)).output


@workflow.defn
class SagaWorkflow:
    """Run the agent; when it fails, compensate: release the run's open holds (twice: a retried
    compensation must not release twice)."""

    @workflow.run
    async def run(self, prompt: str) -> dict[str, Any]:
        try:
            await app.governed_broken.run(prompt)
        except ActivityError:
            first = await release_holds(reason="order cancelled")
            again = await release_holds(first, reason="order cancelled")
            return {"first": first, "again": again}
        return {"first": [], "again": []}


@workflow.defn
class GuardedWorkflow:
    """The same failure, released by ``release_holds_on_failure`` (the workflow then fails)."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        async with release_holds_on_failure(reason="run failed"):
            return (await app.governed_broken.run(prompt)).output


@workflow.defn
class ShopWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.governed_shopper.run(prompt)).output
