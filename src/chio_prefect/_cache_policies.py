"""Caching: the cache key of a governed task carries the receipt id that authorized it.

This module subclasses Prefect's ``CachePolicy`` and ``Task``, so it imports Prefect when it is
imported; :mod:`chio_prefect.decorators` imports it on first use (``import chio_prefect`` stays
light). The classes present themselves as ``chio_prefect.decorators`` names, their public home,
which also resolves them (lazily) for pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import prefect
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.utilities.callables import parameters_to_args_kwargs
from prefect.utilities.hashing import hash_objects

if TYPE_CHECKING:
    from chio_prefect._task_governance import TaskGovernance

__all__ = ["ChioReceiptCachePolicy", "ChioTask", "caches", "wrap_cache_policy"]

PUBLIC_MODULE = "chio_prefect.decorators"


def caches(policy: Any) -> bool:
    """Whether ``policy`` can make Prefect serve a result without calling the task function."""
    # Prefect's "no cache" policies (NO_CACHE, NONE) are equal dataclass instances of one type.
    return isinstance(policy, CachePolicy) and policy != NO_CACHE


@dataclass
class ChioReceiptCachePolicy(CachePolicy):
    """THE receipt-id cache policy: a cached result is bound to the receipt that authorized it.

    One policy for both Prefect paths. On a ``@chio_task`` it wraps the task's cache policy and
    takes the decision itself (below). Around an agent's durable task (``ChioPrefectAgent``) the
    governed call has already been evaluated: the receipt id in force
    (``chio_durable.agent.current_receipt_id``) joins the key; alone (``inner=None``, as
    ``chio_prefect._agent.RECEIPT_ID`` composed into a policy) it contributes just that receipt id,
    and outside a governed call nothing, so the rest of the policy decides alone.

    On a ``@chio_task``: no cache lookup without a fresh chio allow.

    Prefect computes the cache key before it decides whether to call the task function, so
    that is where the evaluation must run for a cached task. ``compute_key`` evaluates the call
    (same client, capability, tool, parameters and idempotency key as the gate in the task
    body; never cached) and returns ``hash(inner key, receipt id)``: a cached result is bound
    to the receipt that authorized it. A retry of the same flow run gets the same receipt back,
    so it hits; another run gets another receipt, so it does not; a deny or an unreachable
    kernel gives ``None`` (no lookup) and the body's gate raises as without caching.
    Installed by ``ChioTask``; a task that does not persist results gets no key at all.
    """

    inner: CachePolicy | None = None

    @classmethod
    def wrapping(cls, inner: CachePolicy) -> ChioReceiptCachePolicy:
        """This policy around ``inner``, sharing its key storage, isolation level and lock manager."""
        # the engine reads key storage, isolation level and lock manager off the task's policy
        return cls(
            key_storage=inner.key_storage,
            isolation_level=inner.isolation_level,
            lock_manager=inner.lock_manager,
            inner=inner,
        )

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The inner key joined with the receipt id of a fresh allow (``None``: no cache lookup)."""
        governance = getattr(getattr(getattr(task_ctx, "task", None), "fn", None), "__chio_governance__", None)
        if governance is None:  # not a @chio_task: the receipt in force (an agent's governed call), if any
            return self._key_in_force(task_ctx, inputs, flow_parameters, **kwargs)
        return self._key_decided(governance, task_ctx, inputs, flow_parameters, **kwargs)

    def _key_in_force(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        """An agent's durable task: the inner key joined with the receipt id in force, if any."""
        from chio_durable._engine import current_receipt_id

        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs) if self.inner else None
        receipt_in_force = current_receipt_id()
        if receipt_in_force is None:
            return key
        # Computed inside the task run: the held allow event now links to it (chio_prefect._task_link).
        from chio_prefect._task_link import emit_in_task_run

        emit_in_task_run(task_ctx)
        parts = ("chio-receipt", receipt_in_force) if key is None else (key, "chio-receipt", receipt_in_force)
        return hash_objects(*parts, raise_on_failure=True)

    def _key_decided(
        self,
        governance: TaskGovernance,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """A ``@chio_task``: the inner key joined with the receipt id of the decision taken here."""
        if self.inner is None:
            return None
        inner_key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if inner_key is None or not task_ctx.persist_result:
            # Nothing is written, and a lookup would be an unchecked read: no key, no extra call.
            return None
        args, call_kwargs = parameters_to_args_kwargs(task_ctx.task.fn, inputs)
        receipt_id = governance.decide_before_cache(args, call_kwargs, str(task_ctx.task_run.id))
        if receipt_id is None:
            return None
        return hash_objects(inner_key, "chio-receipt", receipt_id, raise_on_failure=True)


class ChioTask(prefect.Task):  # type: ignore[type-arg]
    """The Prefect ``Task`` built by ``@chio_task``: its cache key carries the receipt id.

    A caching policy (``INPUTS``, ``DEFAULT``, a ``cache_key_fn``...) is wrapped in
    ``ChioReceiptCachePolicy``, at construction and again in ``with_options`` (where Prefect
    rebuilds a plain ``Task`` from the user's unwrapped policy).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        wrap_cache_policy(self)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """Prefect's ``with_options``, keeping this class and the receipt-id cache policy."""
        new = super().with_options(*args, **kwargs)
        new.__class__ = type(self)
        wrap_cache_policy(new)
        return new


def wrap_cache_policy(task: Any) -> None:
    """Wrap ``task``'s caching policy in :class:`ChioReceiptCachePolicy` (once)."""
    policy = task.cache_policy
    if caches(policy) and not isinstance(policy, ChioReceiptCachePolicy):
        task.cache_policy = ChioReceiptCachePolicy.wrapping(policy)


for _cls in (ChioReceiptCachePolicy, ChioTask):
    _cls.__module__ = PUBLIC_MODULE
