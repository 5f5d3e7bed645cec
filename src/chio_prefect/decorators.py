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

This module is the public face; the parts live in private modules, one concern each:
``_options`` (decoration-time checks), ``_retry`` (the default retry rule), ``_clients`` (client
resolution), ``_denials`` (local denies), ``_positions`` (call positions), ``_task_governance``
(steps 1 to 5), ``_cache_policies`` (``ChioTask``, ``ChioReceiptCachePolicy``; imports Prefect, so
loaded on first use) and ``_flow_scope`` (``@chio_flow``'s scope).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from chio_sdk.models import ChioScope

from chio_durable import ChioClientLike, ToolCost
from chio_prefect import _budgets
from chio_prefect._clients import DEFAULT_SIDECAR_URL, ClientSpec
from chio_prefect._denials import FLOW_SCOPE_GUARD as FLOW_SCOPE_GUARD
from chio_prefect._denials import TASK_SCOPE_GUARD as TASK_SCOPE_GUARD
from chio_prefect._flow_scope import FlowConfig, govern_flow
from chio_prefect._options import (
    check_callable,
    check_common,
    check_options,
    check_positional,
    check_text,
    flow_option_names,
    task_option_names,
)
from chio_prefect._retry import retry_unless_chio_denied
from chio_prefect._task_governance import TaskGovernance, govern_task
from chio_prefect.errors import ChioPrefectConfigError

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

_LAZY_CLASSES = ("ChioReceiptCachePolicy", "ChioTask")


def __getattr__(name: str) -> Any:
    """``ChioReceiptCachePolicy`` and ``ChioTask``, from ``chio_prefect._cache_policies`` on first use.

    Prefect's base classes are imported on first use (``import chio_prefect`` stays light); this
    also lets pickle find the classes by module and name in a fresh process.
    """
    if name in _LAZY_CLASSES:
        from chio_prefect import _cache_policies

        return getattr(_cache_policies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the task ------------------------------------------------------------------------------------


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
    from chio_prefect._cache_policies import ChioTask  # imports Prefect

    check_callable(fn, "chio_task")
    check_options("chio_task", options, task_option_names())
    name = options.get("name")
    check_text(name, "name", "chio_task", "search_documents")
    governance = TaskGovernance(
        fn,
        tool_name=tool_name or name or fn.__name__,
        tool_server=tool_server,
        scope=scope,
        capability_id=capability_id,
        client=ClientSpec(chio_client, sidecar_url),
        cost=cost,
    )
    governed = govern_task(fn, governance)
    task_options = dict(options)
    if task_options.get("retry_condition_fn") is None:
        task_options["retry_condition_fn"] = retry_unless_chio_denied
    if cost is not None:  # a task run that ends Failed releases its hold
        task_options = _budgets.with_release_hooks(task_options, _budgets.release_task_run_holds)
    try:
        task: Task[Any, Any] = ChioTask(governed, **task_options)
        return task
    except (TypeError, ValueError) as err:
        raise ChioPrefectConfigError(
            f"Prefect rejected the options of @chio_task on {fn.__qualname__}: {err}"
        ) from err


# --- the flow ------------------------------------------------------------------------------------


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

    check_callable(fn, "chio_flow")
    check_options("chio_flow", options, flow_option_names())
    config = FlowConfig(
        options.get("name") or fn.__name__,
        scope,
        capability_id,
        tool_server,
        ClientSpec(chio_client, sidecar_url),
    )
    governed = govern_flow(fn, config)
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

    Returns:
        The Prefect ``Task`` (bare ``@chio_task``), or the decorator that makes one.

    Raises:
        ChioPrefectConfigError: at decoration time, for arguments it cannot work with.
    """
    check_text(tool_name, "tool_name", "chio_task", "search_documents")
    if tool_name is not None:
        task_options.setdefault("name", tool_name)
    check_common(
        "chio_task", scope=scope, capability_id=capability_id, tool_server=tool_server,
        chio_client=chio_client, sidecar_url=sidecar_url,
    )

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        _budgets.validate_task_cost(cost, getattr(fn, "__qualname__", repr(fn)))
        return _build_task(
            fn, cost=cost, tool_server=tool_server, scope=scope, capability_id=capability_id,
            chio_client=chio_client, sidecar_url=sidecar_url, options=task_options, tool_name=tool_name,
        )

    if __fn is None:
        return decorate
    check_positional(__fn, "chio_task", f" Did you mean @chio_task(tool_server={__fn!r})?")
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

    Returns:
        The Prefect ``Flow`` (bare ``@chio_flow``), or the decorator that makes one.

    Raises:
        ChioPrefectConfigError: at decoration time, for arguments it cannot work with.
    """
    check_common(
        "chio_flow", scope=scope, capability_id=capability_id, tool_server=tool_server,
        chio_client=chio_client, sidecar_url=sidecar_url,
    )

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return _build_flow(
            fn, scope=scope, capability_id=capability_id, tool_server=tool_server,
            chio_client=chio_client, sidecar_url=sidecar_url, options=flow_options,
        )

    if __fn is None:
        return decorate
    check_positional(__fn, "chio_flow")
    return decorate(__fn)

