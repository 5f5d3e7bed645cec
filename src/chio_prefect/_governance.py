"""``PrefectGovernance``: ``ChioGovernance`` whose kernel evaluation is a task of the Prefect flow run.

``ChioPrefectAgent`` adds governance and ``PrefectDurability`` to each run (run capabilities: the
user's ``Agent`` is not rebuilt). pydantic-ai binds the ``@durable_operation`` methods of a
capability only when it is one of the agent's *construction-time* capabilities, so for a run
capability ``ChioGovernance.evaluate_in_kernel`` would run inline, asked again on every attempt of
the flow run. ``PrefectGovernance`` makes it durable itself, the way pydantic-ai's Prefect backend
does for a bound capability operation: each kernel evaluation is one Prefect task
(``<agent>__capability__chio__evaluate``) whose cache key is

    flow run id + idempotency key (+ approval id, cost) + a per-flow-run sequence number

so a retried (or crashed and restarted) attempt of the same flow run gets the recorded decision
back without asking the kernel again, while a NEW flow run asks the kernel afresh (and sees a
revocation). The sequence number tells repeated identical asks apart (an MCP listing re-checked at
every step, a pending approval re-asked after each pause): Prefect rebuilds the counters in the
same order on every attempt. Outside a flow run (``iter()`` used directly) or inside another task,
the evaluation runs inline, as the core does without durability.

Fail closed: the task fails when the kernel gives no decision (``KernelUnavailable``) and the
governed call, which waits for the answer, never runs; a failed task is never cached, so the next
attempt asks the kernel again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from chio_sdk.models import MonetaryAmount
from prefect import Task, task
from prefect.context import FlowRunContext, TaskRunContext
from pydantic_ai.tools import RunContext

from chio_durable import Evaluation, GovernedCall
from chio_durable._engine import evaluate_under
from chio_durable.agent import ChioGovernance

__all__ = ["PrefectGovernance", "evaluate_cache_key", "evaluate_task_name"]

_SEQUENCE_PREFIX = "chio:evaluate:"


def evaluate_task_name(agent_name: str, capability_id: str = "chio") -> str:
    """The Prefect task name of an agent's kernel evaluations (pydantic-ai's capability-operation naming)."""
    return f"{agent_name}__capability__{capability_id}__evaluate"


def evaluate_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The cache key of one evaluation task: flow run id + the ask's digest + its sequence number.

    Args:
        context: The task run whose key is computed (its flow run id scopes the key).
        parameters: The evaluation task's parameters (``unit`` digest and ``ordinal``).

    Returns:
        ``chio-evaluate-<flow run id>-<digest>-<ordinal>``.
    """
    flow_run_id = context.task_run.flow_run_id
    return f"chio-evaluate-{flow_run_id}-{parameters['unit']}-{parameters['ordinal']}"


def _unit(idempotency_key: str, approval_id: str | None, cost: MonetaryAmount | None) -> str:
    """A short digest of what is asked (the key already names flow run, position, capability, call)."""
    cost_part = cost.model_dump_json() if cost is not None else ""
    text = f"{idempotency_key}\x1f{approval_id or ''}\x1f{cost_part}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _next_sequence(context: FlowRunContext, unit: str) -> int:
    """The zero-based count of ``unit`` in this attempt of the flow run (rebuilt on each attempt)."""
    key = _SEQUENCE_PREFIX + unit
    sequence = context.task_run_dynamic_keys.get(key, 0)
    assert isinstance(sequence, int)
    context.task_run_dynamic_keys[key] = sequence + 1
    return sequence


class PrefectGovernance(ChioGovernance):
    """``ChioGovernance`` whose kernel evaluations are cached Prefect tasks of the flow run.

    Args:
        agent_name: The agent's name (names the evaluation task).
        **kwargs: Everything :class:`chio_durable.agent.ChioGovernance` takes.
    """

    def __init__(self, *, agent_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluate_task_name = evaluate_task_name(agent_name, self.id or "chio")
        self._evaluate_task: Task[..., Any] = self._build_evaluate_task()

    def _build_evaluate_task(self) -> Task[..., Any]:
        governance = self

        async def chio_evaluate(
            unit: str, ordinal: int, call: GovernedCall, idempotency_key: str,
            cost: MonetaryAmount | None, approval_id: str | None,
        ) -> Evaluation:
            return await evaluate_under(
                governance.transport, call, capability_id=governance.capability_id,
                idempotency_key=idempotency_key, approval_id=approval_id, cost=cost,
            )

        options = task(
            name=self.evaluate_task_name, cache_key_fn=evaluate_cache_key, persist_result=True, retries=0,
            log_prints=False,
        )
        built: Task[..., Any] = options(chio_evaluate)
        return built

    async def evaluate_in_kernel(
        self,
        ctx: RunContext[Any],
        call: GovernedCall,
        idempotency_key: str,
        cost: MonetaryAmount | None = None,
        approval_id: str | None = None,
    ) -> Evaluation:
        """Ask the kernel about ``call``, as a cached task of the flow run (inline outside one).

        Args:
            ctx: The run context.
            call: What is asked.
            idempotency_key: The call's key: the same key gets the same receipt back.
            cost: The estimated cost the call declares.
            approval_id: The kernel approval a pending call is re-asked under.

        Returns:
            The kernel's evaluation; on a retried attempt of the flow run, the recorded one.

        Raises:
            KernelUnavailable: The kernel gave no decision (the task fails; nothing is cached).
            KernelRejected: The kernel refused the request as malformed.
        """
        flow_context = FlowRunContext.get()
        if flow_context is None or flow_context.flow_run is None or TaskRunContext.get() is not None:
            return await super().evaluate_in_kernel(ctx, call, idempotency_key, cost, approval_id)
        unit = _unit(idempotency_key, approval_id, cost)
        ordinal = _next_sequence(flow_context, unit)
        evaluate: Callable[..., Any] = self._evaluate_task
        result: Evaluation = await evaluate(unit, ordinal, call, idempotency_key, cost, approval_id)
        return result
