"""Task governance: what one ``@chio_task`` declared, and the steps around every attempt of its body.

1. resolve the attempt (its Prefect runs, the enclosing flow's governance) and run the local checks:
   a tool server and a capability must be known, the task's scope must lie inside the flow's, and
   the tool inside the effective scope; a local deny is signed and chained by the kernel too;
2. build the governed call and its idempotency key (:mod:`chio_prefect._positions`);
3. ask the kernel (or take the decision :class:`ChioReceiptCachePolicy` took in this attempt),
   pausing for a person on ``pending_approval``;
4. mirror the decision to the observers; a deny raises ``PermissionError``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn

from chio_sdk.models import ChioScope, MonetaryAmount

from chio_durable import (
    Decision,
    DecisionObserver,
    Evaluation,
    GovernedCall,
    KernelRejected,
    KernelTransport,
    KernelUnavailable,
    ToolCost,
    bind_parameters,
    call_key,
)
from chio_durable._engine import deny_before_evaluation, evaluate_under, evaluate_under_sync, notify, run_metadata
from chio_prefect import _budgets
from chio_prefect._approvals import wait_for_approval, wait_for_approval_sync
from chio_prefect._artifact import collect_decision
from chio_prefect._clients import ClientSpec, default_transport
from chio_prefect._context import FlowGovernance, current_flow_governance, scope_allows
from chio_prefect._denials import TASK_SCOPE_GUARD, deny_message, envelope_error
from chio_prefect._positions import RunIds, call_position, run_ids
from chio_prefect.errors import (
    ChioPermissionError,
    ChioPrefectConfigError,
    ChioPrefectError,
    ChioRequestRejected,
    ChioSidecarUnavailable,
)
from chio_prefect.events import write_receipt_event

__all__ = ["TaskCall", "TaskGovernance", "govern_task", "observers"]


@dataclass(frozen=True)
class TaskCall:
    """One resolved task attempt: the governed call (parameters hashed once) and where it runs."""

    call: GovernedCall
    capability_id: str
    task_name: str
    transport: KernelTransport
    idempotency_key: str | None
    task_run_id: str | None
    task_run_name: str | None
    flow_run_id: str | None
    flow_run_name: str | None
    cost: MonetaryAmount | None = None  # declared by @chio_task(cost=...): an allow is a budget hold

    @property
    def where(self) -> dict[str, str | None]:
        """The Prefect run this attempt belongs to (``Decision.where``)."""
        return {
            "task_name": self.task_name,
            "task_run_id": self.task_run_id,
            "task_run_name": self.task_run_name,
            "flow_run_id": self.flow_run_id,
            "flow_run_name": self.flow_run_name,
        }


observers: list[DecisionObserver] = [write_receipt_event, collect_decision]
"""Who sees each task decision: the Prefect event writer (``chio.receipt.allow`` / ``.deny``) and
the flow run's receipt table (``chio_prefect._artifact``)."""


# --- the decision taken before Prefect's cache lookup ----------------------------------------------


@dataclass(frozen=True)
class _PreDecision:
    """A kernel decision taken by ``ChioReceiptCachePolicy`` for the gate of the same attempt."""

    task_run_id: str
    idempotency_key: str
    evaluation: Evaluation
    emitted: bool
    call: GovernedCall | None = None  # the call the policy asked about, parameters already hashed


_pre_decision: ContextVar[_PreDecision | None] = ContextVar("chio_prefect_pre_decision", default=None)


def _take_pre_decision(call: TaskCall) -> _PreDecision | None:
    """The policy's decision for exactly this call (same task run, same key), consumed once."""
    decided = _pre_decision.get()
    if decided is None or call.idempotency_key is None:
        return None
    _pre_decision.set(None)
    if decided.task_run_id != call.task_run_id or decided.idempotency_key != call.idempotency_key:
        return None
    return decided


@contextmanager
def _kernel_errors(call: TaskCall) -> Iterator[None]:
    """The transport's errors as this layer's: unreachable (retryable) or rejected (not)."""
    try:
        yield
    except KernelUnavailable as err:
        raise ChioSidecarUnavailable(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
    except KernelRejected as err:
        raise ChioRequestRejected(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err


# --- one attempt, resolved locally --------------------------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    """One attempt being resolved: the enclosing flow's governance, its runs, and its arguments."""

    flow: FlowGovernance | None
    run: RunIds
    task_name: str
    metadata: dict[str, str] | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    quiet: bool

    @property
    def flow_capability(self) -> str | None:
        """The enclosing flow's capability, if any."""
        return self.flow.capability_id if self.flow else None

    @property
    def where(self) -> dict[str, str | None]:
        """The Prefect run this attempt belongs to (``Decision.where``)."""
        return {
            "task_name": self.task_name,
            "task_run_id": self.run.task_run_id,
            "task_run_name": self.run.task_run_name,
            "flow_run_id": self.run.flow_run_id,
            "flow_run_name": self.run.flow_run_name,
        }


class TaskGovernance:
    """What one ``@chio_task`` declared, and the per-call logic around its body."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        tool_name: str,
        tool_server: str | None,
        scope: ChioScope | None,
        capability_id: str | None,
        client: ClientSpec,
        cost: ToolCost | None = None,
    ) -> None:
        self.fn = fn
        self.cost = cost
        self.signature = inspect.signature(fn)
        self.tool_name = tool_name
        self.tool_server = tool_server
        self.scope = scope
        self.capability_id = capability_id
        self.client = client
        self.governed: Callable[..., Any] | None = None  # set once the wrapper exists

    # -- steps 1 and 2: resolve and check locally --------------------------------------------

    def prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, quiet: bool = False) -> TaskCall:
        """Resolve the call and run the local checks (``quiet``: a local deny emits no event)."""
        attempt = self._attempt(args, kwargs, quiet)
        tool_server = self._tool_server(attempt)
        capability_id = self._capability_id(attempt, tool_server)
        self._check_scopes(attempt, tool_server)
        return self._resolve(attempt, tool_server, capability_id)

    def _attempt(self, args: tuple[Any, ...], kwargs: dict[str, Any], quiet: bool) -> _Attempt:
        """Where this attempt runs: the enclosing flow's governance and the Prefect runs."""
        flow = current_flow_governance()
        run = run_ids(self.governed or self.fn)
        # The tool name is fixed at decoration; the task name is the running task's (with_options
        # may rename it).
        task_name = run.task_name or self.tool_name
        # signed into the receipt: `chio-durable receipts list --flow-run ID` finds it (docs/prefect.md)
        metadata = run_metadata(
            flow_run_id=run.flow_run_id, task_run_id=run.task_run_id, flow_name=flow.flow_name if flow else None,
            task_name=task_name,
        )
        return _Attempt(flow, run, task_name, metadata, args, kwargs, quiet)

    def _tool_server(self, attempt: _Attempt) -> str:
        """The task's tool server, else the flow's; with neither, a local deny."""
        flow = attempt.flow
        tool_server = self.tool_server or (flow.tool_server if flow else None)
        if tool_server is None:
            where = f"the enclosing flow {flow.flow_name!r}" if flow else "any enclosing @chio_flow"
            self._deny_locally(
                attempt,
                ChioPrefectConfigError(
                    f"task {attempt.task_name!r} has no tool server: neither @chio_task nor {where} "
                    f"declares one. Pass tool_server=... to @chio_task or to @chio_flow.",
                    at_call_time=True,
                ),
                "",
            )
        return tool_server

    def _capability_id(self, attempt: _Attempt, tool_server: str) -> str:
        """The task's capability, else the flow's; with neither, a local deny."""
        capability_id = self.capability_id or attempt.flow_capability
        if capability_id is not None:
            return capability_id
        if attempt.flow is None:
            message = (
                f"task {attempt.task_name!r} was called outside any @chio_flow and declares no "
                f"capability_id, so there is no capability to evaluate it against. Pass "
                f"capability_id=... to @chio_task, or call it inside a "
                f"@chio_flow(capability_id=...)."
            )
        else:
            message = (
                f"task {attempt.task_name!r} runs in flow {attempt.flow.flow_name!r}, but neither declares a "
                f"capability_id. Pass capability_id=... to @chio_flow or to @chio_task."
            )
        self._deny_locally(attempt, ChioPrefectConfigError(message, at_call_time=True), tool_server)

    def _check_scopes(self, attempt: _Attempt, tool_server: str) -> None:
        """The flow scope is the upper bound; a task scope may only narrow it; the tool must be in scope."""
        flow = attempt.flow
        envelope = flow.scope if flow else None
        if envelope is not None and self.scope is not None and not self.scope.is_subset_of(envelope):
            reason = (
                f"task {attempt.task_name!r} declares a scope that is not a subset of the scope of flow "
                f"{flow.flow_name!r} (its grants escape the flow envelope)"  # type: ignore[union-attr]
            )
            self._deny_locally(attempt, envelope_error(reason), tool_server)
        effective = self.scope if self.scope is not None else envelope
        if effective is not None and not scope_allows(effective, tool_server, self.tool_name):
            if self.scope is not None:
                reason = f"{tool_server}/{self.tool_name} (Invoke) is not granted by the task's own scope"
                self._deny_locally(attempt, envelope_error(reason, TASK_SCOPE_GUARD), tool_server, self.scope)
            reason = (
                f"{tool_server}/{self.tool_name} (Invoke) is not granted by the scope of flow "
                f"{flow.flow_name!r}"  # type: ignore[union-attr]
            )
            self._deny_locally(attempt, envelope_error(reason), tool_server, effective)

    def _deny_locally(
        self, attempt: _Attempt, error: ChioPrefectError, server: str, envelope: ChioScope | None = None
    ) -> NoReturn:
        """Deny before evaluation: signed and chained by the kernel, mirrored, raised as ``PermissionError``."""
        if attempt.quiet:
            raise ChioPermissionError(deny_message(attempt.task_name, server, self.tool_name, error)) from error
        capability = self.capability_id or attempt.flow_capability
        try:
            parameters = bind_parameters(self.signature, attempt.args, attempt.kwargs)
        except Exception:  # noqa: BLE001 - the deny stands; its receipt then names no parameters
            parameters = {}
        # The kernel signs and chains this deny too (chio_durable._denial_record): every attempt
        # is in the chain. With a mock or a stock ChioClient it stays local ("recorded": false).
        call = GovernedCall("task", server, self.tool_name, parameters, metadata=attempt.metadata)
        evaluation = deny_before_evaluation(
            self._transport(attempt.flow),
            call,
            capability,
            guard=error.guard or ChioPrefectConfigError.GUARD,
            reason=error.reason or "denied",
            envelope=envelope,
        )
        error.receipt_id = evaluation.receipt_id
        error.decision = dict(evaluation.decision)
        notify(observers, Decision(call, evaluation, None, capability_id=capability, where=attempt.where))
        raise ChioPermissionError(deny_message(attempt.task_name, server, self.tool_name, error)) from error

    def _resolve(self, attempt: _Attempt, tool_server: str, capability_id: str) -> TaskCall:
        """The governed call of a checked attempt, with its transport and idempotency key."""
        run = attempt.run
        transport = self._transport(attempt.flow)
        call = GovernedCall(
            "task", tool_server, self.tool_name, bind_parameters(self.signature, attempt.args, attempt.kwargs),
            metadata=attempt.metadata,
        )
        decided = _pre_decision.get()
        if decided is not None and decided.task_run_id == run.task_run_id and decided.call == call:
            call = decided.call  # the cache policy's call in this attempt (equal fields): hashed already
        idem = None
        if run.task_run_id is not None:  # the one key scheme; the call's parameter hash is computed once here
            position = call_position(run, call_key(run.task_key, "identity", capability_id, call))
            idem = call_key(run.flow_run_id, position, capability_id, call)
        return TaskCall(
            call=call,
            capability_id=capability_id,
            task_name=attempt.task_name,
            transport=transport,
            idempotency_key=idem,
            task_run_id=run.task_run_id,
            task_run_name=run.task_run_name,
            flow_run_id=run.flow_run_id,
            flow_run_name=run.flow_run_name,
            cost=_budgets.declared_task_cost(self.cost, attempt.args, attempt.kwargs),
        )

    def _transport(self, flow: FlowGovernance | None) -> KernelTransport:
        """The task's client, else the enclosing flow's, else the default sidecar's."""
        transport = self.client.resolve()
        if transport is None and flow is not None:
            transport = flow.client
        return transport if transport is not None else default_transport()

    # -- steps 3 and 4 ------------------------------------------------------------------------

    def evaluate_sync(self, call: TaskCall) -> Evaluation:
        """Ask the kernel about ``call`` (or take the cache policy's decision); raise on a deny."""
        decided = _take_pre_decision(call)
        if decided is not None:  # the cache policy already asked the kernel in this attempt
            if decided.evaluation.pending:
                return self._conclude(call, self._wait_sync(call, decided.evaluation, emit=not decided.emitted))
            return self._conclude(call, decided.evaluation, emit=not decided.emitted)
        with _kernel_errors(call):
            evaluation = self._ask(call)
        if evaluation.pending:  # the flow run pauses for a person (chio_prefect._approvals)
            evaluation = self._wait_sync(call, evaluation, emit=True)
        return self._conclude(call, evaluation)

    async def evaluate_async(self, call: TaskCall) -> Evaluation:
        """:meth:`evaluate_sync` for an async task."""
        decided = _take_pre_decision(call)
        if decided is not None:
            if decided.evaluation.pending:
                return self._conclude(call, await self._wait_async(call, decided.evaluation, emit=not decided.emitted))
            return self._conclude(call, decided.evaluation, emit=not decided.emitted)
        with _kernel_errors(call):
            evaluation = await call.transport.evaluate(
                call.call, capability_id=call.capability_id, idempotency_key=call.idempotency_key, cost=call.cost
            )
        if evaluation.pending:
            evaluation = await self._wait_async(call, evaluation, emit=True)
        return self._conclude(call, evaluation)

    def _wait_sync(self, call: TaskCall, evaluation: Evaluation, *, emit: bool) -> Evaluation:
        """Pause the flow run until a person resumes it; then the kernel's answer under the approval."""
        if emit:
            notify(observers, self._decision(call, evaluation))
        return wait_for_approval_sync(
            evaluation, label=call.task_name, observe=lambda ev: notify(observers, self._decision(call, ev)),
            reevaluate=lambda approval_id: self._reask_sync(call, approval_id), transport=call.transport,
        )

    async def _wait_async(self, call: TaskCall, evaluation: Evaluation, *, emit: bool) -> Evaluation:
        """:meth:`_wait_sync` for an async task."""
        if emit:
            notify(observers, self._decision(call, evaluation))

        async def reevaluate(approval_id: str) -> Evaluation:
            with _kernel_errors(call):
                return await evaluate_under(
                    call.transport, call.call, capability_id=call.capability_id,
                    idempotency_key=call.idempotency_key, approval_id=approval_id, cost=call.cost,
                )

        return await wait_for_approval(
            evaluation, label=call.task_name, observe=lambda ev: notify(observers, self._decision(call, ev)),
            reevaluate=reevaluate, transport=call.transport,
        )

    def _reask_sync(self, call: TaskCall, approval_id: str) -> Evaluation:
        with _kernel_errors(call):
            return self._ask(call, approval_id)

    def decide_before_cache(self, args: tuple[Any, ...], kwargs: dict[str, Any], task_run_id: str) -> str | None:
        """The chio decision taken before Prefect's cache lookup; the receipt id on allow, else ``None``.

        Same call, client and idempotency key as the body's gate. The decision is handed to that
        gate (:data:`_pre_decision`), so the body's attempt is not evaluated twice and a deny is not
        minted twice. An allow is mirrored here, because on a cache hit the body never runs.
        Anything but an allow (local deny, kernel deny, kernel unreachable, an error) gives
        ``None``: no cache lookup, and the body's gate decides and fails closed as without caching.
        """
        _pre_decision.set(None)
        try:
            call = self.prepare(args, kwargs, quiet=True)
            if call.idempotency_key is None or call.task_run_id != task_run_id:
                return None
            evaluation = self._ask(call)
        except Exception:  # noqa: BLE001 - the gate in the body decides again and raises properly
            return None
        if not evaluation.allowed or not evaluation.receipt_id:
            _pre_decision.set(_PreDecision(task_run_id, call.idempotency_key, evaluation, False, call.call))
            return None
        notify(observers, self._decision(call, evaluation))
        _pre_decision.set(_PreDecision(task_run_id, call.idempotency_key, evaluation, True, call.call))
        return evaluation.receipt_id

    @staticmethod
    def _ask(call: TaskCall, approval_id: str | None = None) -> Evaluation:
        return evaluate_under_sync(
            call.transport, call.call, capability_id=call.capability_id, idempotency_key=call.idempotency_key,
            approval_id=approval_id, cost=call.cost,
        )

    def _conclude(self, call: TaskCall, evaluation: Evaluation, *, emit: bool = True) -> Evaluation:
        """Mirror the decision (unless already mirrored); a deny raises ``PermissionError``."""
        if emit:
            notify(observers, self._decision(call, evaluation))
        if not evaluation.allowed:
            error = ChioPrefectError(
                receipt_id=evaluation.receipt_id,
                guard=evaluation.guard,
                reason=evaluation.reason,
                decision=evaluation.decision,
            )
            error.flow_run_id, error.task_run_id = call.flow_run_id, call.task_run_id
            raise ChioPermissionError(
                deny_message(call.task_name, call.call.tool_server, call.call.tool_name, error, call.capability_id)
            ) from error
        return evaluation

    @staticmethod
    def _decision(call: TaskCall, evaluation: Evaluation) -> Decision:
        return Decision(
            call.call, evaluation, call.idempotency_key, capability_id=call.capability_id, where=call.where
        )


def govern_task(fn: Callable[..., Any], governance: TaskGovernance) -> Callable[..., Any]:
    """``fn`` wrapped so that every call is evaluated first (a costed call runs under a budget hold).

    The wrapper keeps ``fn``'s name, docstring and signature and carries ``__chio_governance__``
    (read back by ``ChioReceiptCachePolicy``).
    """
    governed: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def governed_async(*args: Any, **kwargs: Any) -> Any:
            call = governance.prepare(args, kwargs)
            evaluation = await governance.evaluate_async(call)
            if call.cost is not None:  # a hold: settled when the body returns (chio_prefect._budgets)
                return await _budgets.run_costed_async(call, evaluation.receipt_id, fn, args, kwargs)
            return await fn(*args, **kwargs)

        governed = governed_async
    else:

        @functools.wraps(fn)
        def governed_sync(*args: Any, **kwargs: Any) -> Any:
            call = governance.prepare(args, kwargs)
            evaluation = governance.evaluate_sync(call)
            if call.cost is not None:
                return _budgets.run_costed_sync(call, evaluation.receipt_id, fn, args, kwargs)
            return fn(*args, **kwargs)

        governed = governed_sync

    governance.governed = governed
    setattr(governed, "__chio_governance__", governance)  # read back by ChioReceiptCachePolicy
    return governed
