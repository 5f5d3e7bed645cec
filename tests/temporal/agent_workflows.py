"""The workflows of ``test_agent.py``: what a user writes, ``await governed.run(prompt)``.

In a module of their own, not the test module: Temporal's sandbox imports a workflow's module afresh
for every workflow it runs (and validates), and a test module comes through pytest's assertion
rewriting, whose ``_pytest`` imports the sandbox would then import afresh too (about 1 s each time).
The agents live in ``test_agent_app.py``, passed through.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import test_agent_app as app


@workflow.defn
class SupportWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> dict[str, Any]:
        result = await app.governed_support.run(prompt)
        return {"output": result.output, "receipt_ids": app.governed_support.receipt_ids_of(result)}


@workflow.defn
class StrictWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.governed_strict.run(prompt)).output


@workflow.defn
class LegacyWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> dict[str, Any]:
        result = await app.governed_legacy.run(prompt)
        return {"output": result.output, "receipt_ids": app.governed_legacy.receipt_ids_of(result)}


@workflow.defn
class BareWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.bare_agent.run(prompt)).output


@workflow.defn
class TwoRunsWorkflow:
    """One agent run, wait for a signal, a second run (the capability is revoked in between)."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.go = False

    @workflow.run
    async def run(self, first: str, second: str) -> str:
        self.first = (await app.governed_support.run(first)).output
        await workflow.wait_condition(lambda: self.go)
        return (await app.governed_support.run(second)).output

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.query
    def first_output(self) -> str | None:
        return self.first


@workflow.defn
class MixedWorkflow:
    """A plain activity, then the agent: one interceptor governs both."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        note = await workflow.execute_activity(
            app.audit_note, prompt, start_to_close_timeout=timedelta(seconds=10)
        )
        return note + " / " + (await app.governed_mixed.run(prompt)).output


@workflow.defn
class StreamingWorkflow:
    @workflow.run
    async def run(self, prompt: str) -> dict[str, Any]:
        result = await app.governed_streaming.run(prompt)
        return {"output": result.output, "receipt_ids": app.governed_streaming.receipt_ids_of(result)}


@workflow.defn
class UserDurableWorkflow:
    """Calls the agent the user made durable directly (governance is then entirely the worker's)."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.user_durable_agent.run(prompt)).output


@workflow.defn
class LegacyDirectWorkflow:
    """Calls the user's TemporalAgent directly."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.legacy_agent.run(prompt)).output


WORKFLOWS = [
    SupportWorkflow, StrictWorkflow, LegacyWorkflow, BareWorkflow, TwoRunsWorkflow, MixedWorkflow, StreamingWorkflow,
    UserDurableWorkflow, LegacyDirectWorkflow,
]


# Workflows that list their agents for PydanticAIPlugin (kept off the shared WORKFLOWS list: the
# client's PydanticAIPlugin would register those agents' activities on every worker).
@workflow.defn
class ListedSupportWorkflow:
    __pydantic_ai_agents__ = [app.governed_support]

    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.governed_support.run(prompt)).output


@workflow.defn
class ListedUserDurableWorkflow:
    __pydantic_ai_agents__ = [app.user_durable_agent]

    @workflow.run
    async def run(self, prompt: str) -> str:
        return (await app.user_durable_agent.run(prompt)).output
