"""``@chio_task`` and ``@chio_flow``: Prefect's decorators with a chio evaluation before every task body.

Both are thin wrappers: the function is wrapped (``functools.wraps``, so its name, docstring and
signature are kept) and handed to ``prefect.task()`` / ``prefect.flow()`` together with every Prefect
option, verbatim. What the wrapper adds, for a task, on every attempt and before the body runs:

1. resolve the call: ``tool_server`` (the task's, else the enclosing flow's), ``tool_name`` (the
   task's name), the capability (the task's ``capability_id``, else the flow's) and the client;
2. checks before evaluation: the task's declared scope must be a subset of the enclosing flow's
   scope (the envelope), and ``tool_server/tool_name`` must lie inside the effective scope (the
   task's scope, else the flow's); a task called outside any ``@chio_flow`` without a
   ``capability_id`` is denied here too (see docs/prefect.md, "Standalone tasks"). Such a deny is
   still signed and chained by the kernel (``chio_durable._denial_record``);
3. ask the kernel (``chio_durable.evaluate``) with named parameters and an idempotency key built
   from the flow-run id, task-run id, capability, tool and parameter digest, so a Prefect retry of
   the same task run gets the same allow receipt back (no double budget charge);
4. mirror the decision as a ``chio.receipt.allow`` / ``chio.receipt.deny`` Prefect event;
5. deny: raise ``PermissionError`` from :class:`~chio_prefect.errors.ChioPrefectError`; kernel
   unreachable: raise :class:`~chio_prefect.errors.ChioSidecarUnavailable` (retryable); allow: run
   the body.

A task with a caching Prefect cache policy runs steps 1 to 4 earlier, in its cache policy (wrapped
in ``ChioReceiptCachePolicy`` by ``ChioTask``), so that the cache key carries the receipt id and
no cached result is served without a fresh allow; the body's gate then takes that decision over.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, overload

from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, MonetaryAmount

from chio_durable import KernelRejected, KernelUnavailable, bind_parameters
from chio_durable._approval import evaluate_under, evaluate_under_sync
from chio_durable._call import GovernedCall, call_key, run_metadata
from chio_durable._decision import Decision, DecisionObserver, notify
from chio_durable._denial_record import deny_before_evaluation
from chio_prefect._artifact import collect_decision, flow_run_receipts, flow_run_receipts_async
from chio_durable._transport import ChioClientLike, KernelTransport, as_transport, is_client
from chio_durable._evaluation import Evaluation
from chio_durable._metering import ToolCost
from chio_prefect import _budgets
from chio_prefect._approvals import wait_for_approval, wait_for_approval_sync
from chio_prefect._context import (
    FlowGovernance,
    current_flow_governance,
    scope_allows,
    use_flow_governance,
)
from chio_prefect.errors import (
    ChioPermissionError,
    ChioPrefectConfigError,
    ChioPrefectError,
    ChioRequestRejected,
    ChioSidecarUnavailable,
    is_chio_denial,
)
from chio_prefect.events import write_receipt_event

if TYPE_CHECKING:
    from prefect import Flow, Task

__all__ = [
    "ChioClientLike",
    "DEFAULT_SIDECAR_URL",
    "chio_flow",
    "chio_task",
    "retry_unless_chio_denied",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_SIDECAR_URL = "http://127.0.0.1:9090"
"""Where tasks send evaluations when no client is configured anywhere (seed 000's default)."""

FLOW_SCOPE_GUARD = "flow-scope"
"""Guard name of a deny decided by the flow-scope envelope (before evaluation; signed by ``Kernel.record_denial``)."""

TASK_SCOPE_GUARD = "task-scope"
"""Guard name of a deny because the task's own declared scope does not grant its tool."""


def _prefect_options(decorator: Callable[..., Any]) -> frozenset[str]:
    return frozenset(
        name for name in inspect.signature(decorator).parameters if not name.startswith("_")
    )


def _task_option_names() -> frozenset[str]:
    import prefect

    return _prefect_options(prefect.task)


def _flow_option_names() -> frozenset[str]:
    import prefect

    return _prefect_options(prefect.flow.__call__)


# --- the default retry condition ----------------------------------------------------------------


def retry_unless_chio_denied(task: Any, task_run: Any, state: Any) -> bool:
    """The ``retry_condition_fn`` installed when the user passes none.

    Prefect's default is "retry every failure while retries remain"; this keeps that, except for a
    chio deny: replaying a policy decision with the same inputs is pointless and spends evaluation
    budget; nor a request the kernel refused as malformed (``ChioRequestRejected``): the same input
    is refused again. A kernel that could not be reached (``ChioSidecarUnavailable``) is retried as usual.
    Pass your own ``retry_condition_fn`` to retry some denies (e.g. ``rate-limit-guard``).
    """
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False, _sync=True)
        except Exception:  # noqa: BLE001 - an unreadable result is not a chio deny
            return True
    if isinstance(exc, ChioRequestRejected):
        return False
    return not is_chio_denial(exc if isinstance(exc, BaseException) else None)


# --- clients --------------------------------------------------------------------------------------

_clients_by_url: dict[str, ChioClient] = {}
_transports_by_url: dict[str, KernelTransport] = {}
_clients_lock = threading.Lock()


def _client_for_url(url: str) -> ChioClient:
    """One shared ``SidecarClient`` (a ``ChioClient`` that sends idempotency keys) per sidecar URL.

    Its connection pool is reused across tasks.
    """
    from chio_kernel._client import SidecarClient  # lazy: keeps ``import chio_prefect`` light

    with _clients_lock:
        client = _clients_by_url.get(url)
        if client is None:
            client = _clients_by_url[url] = SidecarClient(url)
        return client


def _transport_for_url(url: str) -> KernelTransport:
    """The one transport per sidecar URL, over its shared ``SidecarClient``."""
    transport = _transports_by_url.get(url)
    if transport is None:
        client = _client_for_url(url)
        with _clients_lock:
            transport = _transports_by_url.setdefault(url, as_transport(client))
    return transport


class _ClientSpec:
    """A client as configured on a decorator: its transport (chosen here, once), a sidecar URL, or nothing."""

    def __init__(self, client: ChioClientLike | None = None, sidecar_url: str | None = None) -> None:
        self.transport: KernelTransport | None = as_transport(client) if client is not None else None
        self.sidecar_url = sidecar_url

    @property
    def configured(self) -> bool:
        return self.transport is not None or self.sidecar_url is not None

    def resolve(self) -> KernelTransport | None:
        if self.transport is not None:
            return self.transport
        if self.sidecar_url is not None:
            return _transport_for_url(self.sidecar_url)
        return None


# --- decoration-time validation -------------------------------------------------------------------


def _check_callable(fn: Any, decorator: str) -> None:
    if not callable(fn):
        raise ChioPrefectConfigError(
            f"@{decorator} decorates a function, got {type(fn).__name__} {fn!r}. Use it as "
            f"@{decorator}(tool_server=...) above a `def` or `async def`."
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ChioPrefectConfigError(
            f"@{decorator} does not govern generator functions ({fn.__qualname__}): the body would "
            f"start lazily, after the evaluation's context is gone. Return a list instead of yielding."
        )


def _check_text(value: Any, name: str, decorator: str, example: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ChioPrefectConfigError(
            f"@{decorator}({name}=...) must be a non-empty string, got {value!r}; "
            f"pass e.g. {name}={example!r}."
        )


def _check_common(
    decorator: str,
    *,
    scope: Any,
    capability_id: Any,
    tool_server: Any,
    chio_client: object,
    sidecar_url: object,
) -> None:
    if scope is not None and not isinstance(scope, ChioScope):
        raise ChioPrefectConfigError(
            f"@{decorator}(scope=...) must be a chio_sdk.models.ChioScope, got "
            f"{type(scope).__name__}; pass scope=ChioScope(grants=[ToolGrant(server_id=..., "
            f"tool_name=..., operations=[Operation.INVOKE])])."
        )
    _check_text(capability_id, "capability_id", decorator, "cap-research-pipeline")
    _check_text(tool_server, "tool_server", decorator, "search-srv")
    if chio_client is not None and sidecar_url is not None:
        raise ChioPrefectConfigError(
            f"@{decorator} got both chio_client= and sidecar_url=; pass one: chio_client= for a "
            f"client object (ChioClient, LocalChioClient, a chio_sdk.testing mock) or sidecar_url= "
            f"for the address of a running sidecar."
        )
    if chio_client is not None and not is_client(chio_client):
        raise ChioPrefectConfigError(
            f"@{decorator}(chio_client=...) must be a Chio client with evaluate_tool_call() "
            f"(chio_sdk.ChioClient, chio_kernel.LocalChioClient or a chio_sdk.testing mock), got "
            f"{type(chio_client).__name__}."
        )
    if sidecar_url is not None and (
        not isinstance(sidecar_url, str) or not sidecar_url.startswith(("http://", "https://"))
    ):
        raise ChioPrefectConfigError(
            f"@{decorator}(sidecar_url=...) must be an http(s) URL, got {sidecar_url!r}; "
            f"pass e.g. sidecar_url={DEFAULT_SIDECAR_URL!r}."
        )


def _check_options(decorator: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ChioPrefectConfigError(
            f"@{decorator} got unknown option(s) {', '.join(unknown)}. Chio options: scope, "
            f"capability_id, tool_server, chio_client, sidecar_url; every other option is passed "
            f"to Prefect, which accepts: {', '.join(sorted(allowed))}."
        )


# --- the task ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
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


_observers: list[DecisionObserver] = [write_receipt_event, collect_decision]
"""Who sees each task decision: the Prefect event writer (``chio.receipt.allow`` / ``.deny``) and
the flow run's receipt table (``chio_prefect._artifact``)."""


@dataclass(frozen=True)
class _RunIds:
    task_name: str | None = None
    task_key: str | None = None
    task_run_id: str | None = None
    task_run_name: str | None = None
    flow_run_id: str | None = None
    flow_run_name: str | None = None


def _run_ids(governed: Callable[..., Any]) -> _RunIds:
    """Ids and names of the Prefect task run and flow run calling ``governed`` (if any)."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_name = task_key = task_run_id = task_run_name = flow_run_id = flow_run_name = None
    task_ctx = TaskRunContext.get()
    # Only the task run of THIS task counts (``other_task.fn`` inside it is not that run).
    if task_ctx is not None and getattr(task_ctx.task, "fn", None) is governed:
        task_name = task_ctx.task.name
        task_key = task_ctx.task.task_key
        task_run_id = str(task_ctx.task_run.id)
        task_run_name = task_ctx.task_run.name
        if task_ctx.task_run.flow_run_id is not None:
            flow_run_id = str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        if flow_run_id is None or flow_run_id == str(flow_ctx.flow_run.id):
            flow_run_id = str(flow_ctx.flow_run.id)
            flow_run_name = flow_ctx.flow_run.name
    return _RunIds(task_name, task_key, task_run_id, task_run_name, flow_run_id, flow_run_name)


# --- call positions: what an idempotency key identifies --------------------------------------------


class _AttemptPositions:
    """Call positions handed out during one attempt of one flow run (one ``FlowRunContext``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_task_run: dict[str, int] = {}
        self.counts: dict[str, int] = {}


_attempts: dict[int, _AttemptPositions] = {}
_attempts_lock = threading.Lock()


def _attempt_positions(flow_ctx: Any) -> _AttemptPositions | None:
    key = id(flow_ctx)
    with _attempts_lock:
        table = _attempts.get(key)
        if table is None:
            try:
                # dropped with the context object, so its id is never reused for a stale table
                weakref.finalize(flow_ctx, _attempts.pop, key, None)
            except TypeError:  # not weak-referenceable: fall back to the task run id
                return None
            table = _attempts[key] = _AttemptPositions()
        return table


def _call_position(run: _RunIds, identity: str) -> str:
    """The call position of the running task run, the run part of its idempotency key.

    Inside a flow run: ``flow-run:<id>:<identity>#<n>``, ``n`` counting earlier task runs with the
    same identity (task, capability, tool, parameters) in this attempt of the flow run. Prefect
    gives every attempt of a flow run new task run ids (and random dynamic keys), so this is what
    lets a flow retry re-evaluate to the same receipt; a task retry (same task run) keeps its ``n``.
    Identical calls are interchangeable, so the order in which concurrent ones get their ``n``
    does not matter. Outside a flow run: ``task-run:<id>``.
    """
    from prefect.context import FlowRunContext

    flow_ctx = FlowRunContext.get()
    if (
        run.flow_run_id is None
        or flow_ctx is None
        or flow_ctx.flow_run is None
        or str(flow_ctx.flow_run.id) != run.flow_run_id
    ):
        return f"task-run:{run.task_run_id}"
    table = _attempt_positions(flow_ctx)
    if table is None:
        return f"task-run:{run.task_run_id}"
    with table.lock:
        n = table.by_task_run.get(run.task_run_id)  # type: ignore[arg-type]
        if n is None:
            n = table.counts.get(identity, 0)
            table.counts[identity] = n + 1
            table.by_task_run[run.task_run_id] = n  # type: ignore[index]
    return f"flow-run:{run.flow_run_id}:{identity}#{n}"


# --- the decision taken before Prefect's cache lookup ----------------------------------------------


@dataclass(frozen=True)
class _PreDecision:
    """A kernel decision taken by :class:`ChioReceiptCachePolicy` for the gate of the same attempt."""

    task_run_id: str
    idempotency_key: str
    evaluation: Evaluation
    emitted: bool
    call: GovernedCall | None = None  # the call the policy asked about, parameters already hashed


_pre_decision: ContextVar[_PreDecision | None] = ContextVar("chio_prefect_pre_decision", default=None)


def _take_pre_decision(call: _Call) -> _PreDecision | None:
    """The policy's decision for exactly this call (same task run, same key), consumed once."""
    decided = _pre_decision.get()
    if decided is None or call.idempotency_key is None:
        return None
    _pre_decision.set(None)
    if decided.task_run_id != call.task_run_id or decided.idempotency_key != call.idempotency_key:
        return None
    return decided


class _TaskGovernance:
    """What one ``@chio_task`` declared, and the per-call logic around its body."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        tool_name: str,
        tool_server: str | None,
        scope: ChioScope | None,
        capability_id: str | None,
        client: _ClientSpec,
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

    # -- step 1 and 2: resolve and check locally --------------------------------------------

    def prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, quiet: bool = False) -> _Call:
        """Resolve the call and run the local checks (``quiet``: a local deny emits no event)."""
        flow = current_flow_governance()
        run = _run_ids(self.governed or self.fn)
        task_run_id, task_run_name = run.task_run_id, run.task_run_name
        flow_run_id, flow_run_name = run.flow_run_id, run.flow_run_name
        # The tool name is fixed at decoration; the task name is the running task's (with_options
        # may rename it).
        task_name = run.task_name or self.tool_name
        # signed into the receipt: `chio-durable receipts list --flow-run ID` finds it (docs/prefect.md)
        context = run_metadata(
            flow_run_id=flow_run_id, task_run_id=task_run_id, flow_name=flow.flow_name if flow else None,
            task_name=task_name,
        )

        def deny_locally(error: ChioPrefectError, server: str, envelope: ChioScope | None = None) -> NoReturn:
            if quiet:
                raise ChioPermissionError(_deny_message(task_name, server, self.tool_name, error)) from error
            capability = self.capability_id or (flow.capability_id if flow else None)
            try:
                parameters = bind_parameters(self.signature, args, kwargs)
            except Exception:  # noqa: BLE001 - the deny stands; its receipt then names no parameters
                parameters = {}
            # The kernel signs and chains this deny too (chio_durable._denial_record): every attempt
            # is in the chain. With a mock or a stock ChioClient it stays local ("recorded": false).
            call = GovernedCall("task", server, self.tool_name, parameters, metadata=context)
            evaluation = deny_before_evaluation(
                self._transport(flow),
                call,
                capability,
                guard=error.guard or ChioPrefectConfigError.GUARD,
                reason=error.reason or "denied",
                envelope=envelope,
            )
            error.receipt_id = evaluation.receipt_id
            error.decision = dict(evaluation.decision)
            where = {
                "task_name": task_name,
                "task_run_id": task_run_id,
                "task_run_name": task_run_name,
                "flow_run_id": flow_run_id,
                "flow_run_name": flow_run_name,
            }
            notify(_observers, Decision(call, evaluation, None, capability_id=capability, where=where))
            raise ChioPermissionError(_deny_message(task_name, server, self.tool_name, error)) from error

        tool_server = self.tool_server or (flow.tool_server if flow else None)
        if tool_server is None:
            where = f"the enclosing flow {flow.flow_name!r}" if flow else "any enclosing @chio_flow"
            deny_locally(
                ChioPrefectConfigError(
                    f"task {task_name!r} has no tool server: neither @chio_task nor {where} "
                    f"declares one. Pass tool_server=... to @chio_task or to @chio_flow.",
                    at_call_time=True,
                ),
                "",
            )
        capability_id = self.capability_id or (flow.capability_id if flow else None)
        if capability_id is None:
            if flow is None:
                message = (
                    f"task {task_name!r} was called outside any @chio_flow and declares no "
                    f"capability_id, so there is no capability to evaluate it against. Pass "
                    f"capability_id=... to @chio_task, or call it inside a "
                    f"@chio_flow(capability_id=...)."
                )
            else:
                message = (
                    f"task {task_name!r} runs in flow {flow.flow_name!r}, but neither declares a "
                    f"capability_id. Pass capability_id=... to @chio_flow or to @chio_task."
                )
            deny_locally(ChioPrefectConfigError(message, at_call_time=True), tool_server)

        # The flow scope is the upper bound; a task scope may only narrow it.
        envelope = flow.scope if flow else None
        if envelope is not None and self.scope is not None and not self.scope.is_subset_of(envelope):
            reason = (
                f"task {task_name!r} declares a scope that is not a subset of the scope of flow "
                f"{flow.flow_name!r} (its grants escape the flow envelope)"  # type: ignore[union-attr]
            )
            deny_locally(_envelope_error(reason), tool_server)
        effective = self.scope if self.scope is not None else envelope
        if effective is not None and not scope_allows(effective, tool_server, self.tool_name):
            if self.scope is not None:
                reason = f"{tool_server}/{self.tool_name} (Invoke) is not granted by the task's own scope"
                deny_locally(_envelope_error(reason, TASK_SCOPE_GUARD), tool_server, self.scope)
            reason = (
                f"{tool_server}/{self.tool_name} (Invoke) is not granted by the scope of flow "
                f"{flow.flow_name!r}"  # type: ignore[union-attr]
            )
            deny_locally(_envelope_error(reason), tool_server, effective)

        transport = self._transport(flow)

        call = GovernedCall(
            "task", tool_server, self.tool_name, bind_parameters(self.signature, args, kwargs), metadata=context
        )
        decided = _pre_decision.get()
        if decided is not None and decided.task_run_id == task_run_id and decided.call == call:
            call = decided.call  # the cache policy's call in this attempt (equal fields): hashed already
        idem = None
        if task_run_id is not None:  # the one key scheme; the call's parameter hash is computed once here
            position = _call_position(run, call_key(run.task_key, "identity", capability_id, call))
            idem = call_key(flow_run_id, position, capability_id, call)
        return _Call(
            call=call,
            capability_id=capability_id,
            task_name=task_name,
            transport=transport,
            idempotency_key=idem,
            task_run_id=task_run_id,
            task_run_name=task_run_name,
            flow_run_id=flow_run_id,
            flow_run_name=flow_run_name,
            cost=_budgets.declared_task_cost(self.cost, args, kwargs),
        )

    def _transport(self, flow: FlowGovernance | None) -> KernelTransport:
        """The task's client, else the enclosing flow's, else the default sidecar's."""
        transport = self.client.resolve()
        if transport is None and flow is not None:
            transport = flow.client
        return transport if transport is not None else _transport_for_url(DEFAULT_SIDECAR_URL)

    # -- step 3 to 5 -------------------------------------------------------------------------

    def evaluate_sync(self, call: _Call) -> Evaluation:
        decided = _take_pre_decision(call)
        if decided is not None:  # the cache policy already asked the kernel in this attempt
            if decided.evaluation.pending:
                return self._conclude(call, self._wait_sync(call, decided.evaluation, emit=not decided.emitted))
            return self._conclude(call, decided.evaluation, emit=not decided.emitted)
        try:
            evaluation = self._ask(call)
        except KernelUnavailable as err:
            raise ChioSidecarUnavailable(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
        except KernelRejected as err:
            raise ChioRequestRejected(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
        if evaluation.pending:  # the flow run pauses for a person (chio_prefect._approvals)
            evaluation = self._wait_sync(call, evaluation, emit=True)
        return self._conclude(call, evaluation)

    async def evaluate_async(self, call: _Call) -> Evaluation:
        decided = _take_pre_decision(call)
        if decided is not None:
            if decided.evaluation.pending:
                return self._conclude(call, await self._wait_async(call, decided.evaluation, emit=not decided.emitted))
            return self._conclude(call, decided.evaluation, emit=not decided.emitted)
        try:
            evaluation = await call.transport.evaluate(
                call.call, capability_id=call.capability_id, idempotency_key=call.idempotency_key, cost=call.cost
            )
        except KernelUnavailable as err:
            raise ChioSidecarUnavailable(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
        except KernelRejected as err:
            raise ChioRequestRejected(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
        if evaluation.pending:
            evaluation = await self._wait_async(call, evaluation, emit=True)
        return self._conclude(call, evaluation)

    def _wait_sync(self, call: _Call, evaluation: Evaluation, *, emit: bool) -> Evaluation:
        """Pause the flow run until a person resumes it; then the kernel's answer under the approval."""
        if emit:
            notify(_observers, self._decision(call, evaluation))
        return wait_for_approval_sync(
            evaluation, label=call.task_name, observe=lambda ev: notify(_observers, self._decision(call, ev)),
            reevaluate=lambda approval_id: self._reask_sync(call, approval_id),
        )

    async def _wait_async(self, call: _Call, evaluation: Evaluation, *, emit: bool) -> Evaluation:
        if emit:
            notify(_observers, self._decision(call, evaluation))

        async def reevaluate(approval_id: str) -> Evaluation:
            try:
                return await evaluate_under(
                    call.transport, call.call, capability_id=call.capability_id,
                    idempotency_key=call.idempotency_key, approval_id=approval_id, cost=call.cost,
                )
            except KernelUnavailable as err:
                raise ChioSidecarUnavailable(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
            except KernelRejected as err:
                raise ChioRequestRejected(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err

        return await wait_for_approval(
            evaluation, label=call.task_name, observe=lambda ev: notify(_observers, self._decision(call, ev)),
            reevaluate=reevaluate,
        )

    def _reask_sync(self, call: _Call, approval_id: str) -> Evaluation:
        try:
            return self._ask(call, approval_id)
        except KernelUnavailable as err:
            raise ChioSidecarUnavailable(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err
        except KernelRejected as err:
            raise ChioRequestRejected(err.url, err.detail, call.call.tool_server, call.call.tool_name) from err

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
        notify(_observers, self._decision(call, evaluation))
        _pre_decision.set(_PreDecision(task_run_id, call.idempotency_key, evaluation, True, call.call))
        return evaluation.receipt_id

    @staticmethod
    def _ask(call: _Call, approval_id: str | None = None) -> Evaluation:
        return evaluate_under_sync(
            call.transport, call.call, capability_id=call.capability_id, idempotency_key=call.idempotency_key,
            approval_id=approval_id, cost=call.cost,
        )

    def _conclude(self, call: _Call, evaluation: Evaluation, *, emit: bool = True) -> Evaluation:
        if emit:
            notify(_observers, self._decision(call, evaluation))
        if not evaluation.allowed:
            error = ChioPrefectError(
                receipt_id=evaluation.receipt_id,
                guard=evaluation.guard,
                reason=evaluation.reason,
                decision=evaluation.decision,
            )
            error.flow_run_id, error.task_run_id = call.flow_run_id, call.task_run_id
            raise ChioPermissionError(
                _deny_message(call.task_name, call.call.tool_server, call.call.tool_name, error, call.capability_id)
            ) from error
        return evaluation

    @staticmethod
    def _decision(call: _Call, evaluation: Evaluation) -> Decision:
        return Decision(
            call.call, evaluation, call.idempotency_key, capability_id=call.capability_id, where=call.where
        )


def _envelope_error(reason: str, guard: str = FLOW_SCOPE_GUARD) -> ChioPrefectError:
    return ChioPrefectError(
        receipt_id=None,
        guard=guard,
        reason=reason,
        decision={"verdict": "deny", "guard": guard, "reason": reason},
    )


def _deny_message(
    task_name: str, tool_server: str, tool_name: str, error: ChioPrefectError, capability_id: str | None = None
) -> str:
    # Starts as upstream chio-prefect's does ("Chio capability denied: <reason>"); then what was called.
    target = f"{tool_server}/{tool_name}" if tool_server else tool_name
    with_cap = f" with capability {capability_id!r}" if capability_id else ""
    receipt = f", receipt {error.receipt_id}" if error.receipt_id else ""
    error.task_name = error.task_name or task_name
    error.tool_server = error.tool_server or tool_server or None
    error.capability_id = error.capability_id or capability_id
    return (
        f"Chio capability denied: {error.reason} (task {task_name!r} calling {target}{with_cap}; "
        f"guard {error.guard}{receipt})"
    )


# --- caching: the cache key carries the receipt id -----------------------------------------------


def _caches(policy: Any) -> bool:
    """Whether ``policy`` can make Prefect serve a result without calling the task function."""
    from prefect.cache_policies import NO_CACHE, CachePolicy

    # Prefect's "no cache" policies (NO_CACHE, NONE) are equal dataclass instances of one type.
    return isinstance(policy, CachePolicy) and policy != NO_CACHE


_LAZY_CLASSES = ("ChioReceiptCachePolicy", "ChioTask")


def __getattr__(name: str) -> Any:
    # Prefect's base classes are imported on first use (``import chio_prefect`` stays light);
    # this also lets pickle find the classes by module and name in a fresh process.
    if name in _LAZY_CLASSES:
        _define_prefect_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_prefect_classes() -> None:
    if "ChioTask" in globals():
        return
    import prefect
    from prefect.cache_policies import CachePolicy
    from prefect.utilities.callables import parameters_to_args_kwargs
    from prefect.utilities.hashing import hash_objects

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
            governance = getattr(getattr(getattr(task_ctx, "task", None), "fn", None), "__chio_governance__", None)
            if governance is None:  # not a @chio_task: the receipt in force (an agent's governed call), if any
                from chio_durable._scope import current_receipt_id

                key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs) if self.inner else None
                receipt_in_force = current_receipt_id()
                if receipt_in_force is None:
                    return key
                # Computed inside the task run: the held allow event now links to it (chio_prefect._task_link).
                from chio_prefect._task_link import emit_in_task_run

                emit_in_task_run(task_ctx)
                parts = ("chio-receipt", receipt_in_force) if key is None else (key, "chio-receipt", receipt_in_force)
                return hash_objects(*parts, raise_on_failure=True)
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
            _wrap_cache_policy(self, ChioReceiptCachePolicy)

        def with_options(self, *args: Any, **kwargs: Any) -> Any:
            new = super().with_options(*args, **kwargs)
            new.__class__ = type(self)
            _wrap_cache_policy(new, ChioReceiptCachePolicy)
            return new

    for cls in (ChioReceiptCachePolicy, ChioTask):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


def _wrap_cache_policy(task: Any, wrapper: Any) -> None:
    policy = task.cache_policy
    if _caches(policy) and not isinstance(policy, wrapper):
        task.cache_policy = wrapper.wrapping(policy)


def _build_task(
    fn: Callable[..., Any],
    *,
    tool_server: str | None,
    scope: ChioScope | None,
    capability_id: str | None,
    chio_client: ChioClientLike | None,
    sidecar_url: str | None,
    options: dict[str, Any],
    cost: ToolCost | None = None,
    tool_name: str | None = None,
) -> Task[Any, Any]:
    import prefect

    _check_callable(fn, "chio_task")
    _check_options("chio_task", options, _task_option_names())
    name = options.get("name")
    _check_text(name, "name", "chio_task", "search_documents")
    governance = _TaskGovernance(
        fn,
        tool_name=tool_name or name or fn.__name__,
        tool_server=tool_server,
        scope=scope,
        capability_id=capability_id,
        client=_ClientSpec(chio_client, sidecar_url),
        cost=cost,
    )

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
    task_options = dict(options)
    if task_options.get("retry_condition_fn") is None:
        task_options["retry_condition_fn"] = retry_unless_chio_denied
    if cost is not None:  # a task run that ends Failed releases its hold
        task_options = _budgets.with_release_hooks(task_options, _budgets.release_task_run_holds)
    try:
        _define_prefect_classes()
        task: Task[Any, Any] = globals()["ChioTask"](governed, **task_options)  # a prefect Task subclass
        return task
    except (TypeError, ValueError) as err:
        raise ChioPrefectConfigError(
            f"Prefect rejected the options of @chio_task on {fn.__qualname__}: {err}"
        ) from err


# --- the flow ------------------------------------------------------------------------------------


class _FlowConfig:
    def __init__(
        self,
        name: str,
        scope: ChioScope | None,
        capability_id: str | None,
        tool_server: str | None,
        client: _ClientSpec,
    ) -> None:
        self.name = name
        self.scope = scope
        self.capability_id = capability_id
        self.tool_server = tool_server
        self.client = client

    def enter(self) -> FlowGovernance:
        """This flow's effective governance, merged with (and bounded by) the enclosing flow's."""
        parent = current_flow_governance()
        if parent is not None and parent.scope is not None and self.scope is not None:
            if not self.scope.is_subset_of(parent.scope):
                reason = (
                    f"flow {self.name!r} declares a scope that is not a subset of the scope of its "
                    f"parent flow {parent.flow_name!r}"
                )
                raise ChioPermissionError(
                    f"Chio capability denied: {reason} (sub-flow {self.name!r}; guard {FLOW_SCOPE_GUARD})"
                ) from _envelope_error(reason)
        client = self.client.resolve()
        return FlowGovernance(
            flow_name=self.name,
            scope=self.scope if self.scope is not None else (parent.scope if parent else None),
            capability_id=self.capability_id or (parent.capability_id if parent else None),
            tool_server=self.tool_server or (parent.tool_server if parent else None),
            client=client if client is not None else (parent.client if parent else None),
            parent=parent,
        )


def _build_flow(
    fn: Callable[..., Any],
    *,
    scope: ChioScope | None,
    capability_id: str | None,
    tool_server: str | None,
    chio_client: ChioClientLike | None,
    sidecar_url: str | None,
    options: dict[str, Any],
) -> Flow[Any, Any]:
    import prefect

    _check_callable(fn, "chio_flow")
    _check_options("chio_flow", options, _flow_option_names())
    config = _FlowConfig(
        options.get("name") or fn.__name__,
        scope,
        capability_id,
        tool_server,
        _ClientSpec(chio_client, sidecar_url),
    )

    governed: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def governed_async(*args: Any, **kwargs: Any) -> Any:
            async with flow_run_receipts_async():
                with use_flow_governance(config.enter()):
                    return await fn(*args, **kwargs)

        governed = governed_async
    else:

        @functools.wraps(fn)
        def governed_sync(*args: Any, **kwargs: Any) -> Any:
            with flow_run_receipts(), use_flow_governance(config.enter()):
                return fn(*args, **kwargs)

        governed = governed_sync

    setattr(governed, "__chio_flow__", config)
    try:  # a flow run that ends Failed/Crashed releases its calls' open holds (chio_prefect._budgets)
        return prefect.flow(governed, **_budgets.with_release_hooks(options, _budgets.release_flow_run_holds))
    except (TypeError, ValueError) as err:
        raise ChioPrefectConfigError(
            f"Prefect rejected the options of @chio_flow on {fn.__qualname__}: {err}"
        ) from err


# --- public decorators ---------------------------------------------------------------------------


@overload
def chio_task(__fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def chio_task(
    __fn: None = None,
    /,
    *,
    tool_server: str | None = None,
    scope: ChioScope | None = None,
    capability_id: str | None = None,
    chio_client: ChioClientLike | None = None,
    sidecar_url: str | None = None,
    cost: ToolCost | None = None,
    tool_name: str | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def chio_task(
    __fn: Callable[P, R] | None = None,
    /,
    *,
    tool_server: str | None = None,
    scope: ChioScope | None = None,
    capability_id: str | None = None,
    chio_client: ChioClientLike | None = None,
    sidecar_url: str | None = None,
    cost: ToolCost | None = None,
    tool_name: str | None = None,
    **task_options: Any,
) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
    """A Prefect task whose every attempt is evaluated by the chio kernel before its body runs.

    Use as ``@chio_task(tool_server="search-srv")`` or bare ``@chio_task`` (the tool server then
    comes from the enclosing ``@chio_flow``).

    Args:
        tool_server: the tool server this task is (``server_id`` in grants); default: the flow's.
        scope: the task's own scope; must be a subset of the enclosing flow's scope, else every
            call is denied. Default: the flow's scope.
        capability_id: capability to evaluate against; default: the enclosing flow's. A task
            called outside any ``@chio_flow`` must name one (else its calls are denied).
        chio_client: a ``ChioClient``, ``LocalChioClient`` or ``chio_sdk.testing`` mock.
        sidecar_url: address of a running sidecar (exclusive with ``chio_client``). With neither,
            the flow's client is used, else ``ChioClient("http://127.0.0.1:9090")``.
        cost: what one call costs (docs/budgets.md): a ``MonetaryAmount`` or a callable of the
            task's arguments returning one. It goes with every evaluation, so a grant's cost limits
            apply and an allow is a budget hold; the hold settles at what the body reports with
            ``chio_durable.report_cost(...)``, else at this cost; a task run that ends Failed
            releases it. Retries reuse the hold.
        tool_name: the tool name evaluated (upstream chio-prefect's option); default: the task's
            ``name``, else the function's name. Also the Prefect task name unless ``name`` is given.
        **task_options: passed verbatim to ``prefect.task()`` (``retries``, ``retry_delay_seconds``,
            ``retry_condition_fn``, ``timeout_seconds``, ``tags``, ``cache_policy``, ``name``...).
            Without a ``retry_condition_fn``, :func:`retry_unless_chio_denied` is installed.

    Raises:
        ChioPrefectConfigError: at decoration time, for arguments it cannot work with.
    """
    _check_text(tool_name, "tool_name", "chio_task", "search_documents")
    if tool_name is not None:
        task_options.setdefault("name", tool_name)
    _check_common(
        "chio_task",
        scope=scope,
        capability_id=capability_id,
        tool_server=tool_server,
        chio_client=chio_client,
        sidecar_url=sidecar_url,
    )

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        _budgets.validate_task_cost(cost, getattr(fn, "__qualname__", repr(fn)))
        return _build_task(
            fn,
            cost=cost,
            tool_server=tool_server,
            scope=scope,
            capability_id=capability_id,
            chio_client=chio_client,
            sidecar_url=sidecar_url,
            options=task_options,
            tool_name=tool_name,
        )

    if __fn is None:
        return decorate
    if isinstance(__fn, str):
        raise ChioPrefectConfigError(
            f"@chio_task takes keyword arguments only; got the positional string {__fn!r}. "
            f"Did you mean @chio_task(tool_server={__fn!r})?"
        )
    return decorate(__fn)


@overload
def chio_flow(__fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def chio_flow(
    __fn: None = None,
    /,
    *,
    scope: ChioScope | None = None,
    capability_id: str | None = None,
    tool_server: str | None = None,
    chio_client: ChioClientLike | None = None,
    sidecar_url: str | None = None,
    **flow_options: Any,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def chio_flow(
    __fn: Callable[P, R] | None = None,
    /,
    *,
    scope: ChioScope | None = None,
    capability_id: str | None = None,
    tool_server: str | None = None,
    chio_client: ChioClientLike | None = None,
    sidecar_url: str | None = None,
    **flow_options: Any,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """A Prefect flow whose scope bounds every ``@chio_task`` called inside it.

    Args:
        scope: the envelope: a task may only call a ``tool_server/tool_name`` granted here, and a
            task's own scope must be a subset of it. A sub-flow's scope must be a subset of its
            parent's. Default: the parent flow's scope, else no envelope.
        capability_id: the capability enclosed tasks evaluate against unless they name their own.
        tool_server: tool server of enclosed tasks that do not name their own.
        chio_client: client enclosed tasks use unless they name their own.
        sidecar_url: address of a running sidecar (exclusive with ``chio_client``).
        **flow_options: passed verbatim to ``prefect.flow()`` (``name``, ``retries``,
            ``task_runner``, ``timeout_seconds``, ``log_prints``...).

    Raises:
        ChioPrefectConfigError: at decoration time, for arguments it cannot work with.
    """
    _check_common(
        "chio_flow",
        scope=scope,
        capability_id=capability_id,
        tool_server=tool_server,
        chio_client=chio_client,
        sidecar_url=sidecar_url,
    )

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return _build_flow(
            fn,
            scope=scope,
            capability_id=capability_id,
            tool_server=tool_server,
            chio_client=chio_client,
            sidecar_url=sidecar_url,
            options=flow_options,
        )

    if __fn is None:
        return decorate
    if isinstance(__fn, str):
        raise ChioPrefectConfigError(
            f"@chio_flow takes keyword arguments only; got the positional string {__fn!r}."
        )
    return decorate(__fn)

