"""``ChioActivityInterceptor``: every activity execution is evaluated by the chio kernel before it runs.

One Temporal worker ``Interceptor`` with two sides:

* the **activity side** (the enforcement point): for each activity execution it resolves the
  capability of the grant registered for the activity's ``(workflow_id, run_id)``, maps the
  execution to ``(tool_server, tool_name, parameters)``, asks the kernel (``chio_durable.evaluate``,
  fail closed) with the idempotency key ``(workflow_id, run_id, activity_id, capability_id)``, records
  a :class:`WorkflowStepReceipt`, and then either runs the activity body or fails it with the
  non-retryable ``ApplicationError(type="ChioCapabilityDenied")``. Retry attempts therefore reuse one
  allow receipt while the capability stays valid; a kernel that cannot decide gives the retryable
  ``ApplicationError(type="ChioSidecarError")`` and the body does not run.
* the **workflow side** only forwards the parent-workflow chain to activities and child workflows in a
  Temporal header (``chio-parent-workflow-ids``), so a child workflow's envelope can list its parents.
  It makes no network call, adds no command and no activity to any history (headers are not part of
  Temporal's replay determinism check), and root workflows get no header at all.

Extension points (stable; see docs/temporal.md) — override in a subclass:
:meth:`~ChioActivityInterceptor.governs`, :meth:`~ChioActivityInterceptor.resolve_grant`,
:meth:`~ChioActivityInterceptor.resolve_capability_id`, :meth:`~ChioActivityInterceptor.resolve_tool_server`,
:meth:`~ChioActivityInterceptor.activity_parameters`, :meth:`~ChioActivityInterceptor.map_activity`,
:meth:`~ChioActivityInterceptor.activity_idempotency_key`, :meth:`~ChioActivityInterceptor.on_allowed`,
:meth:`~ChioActivityInterceptor.on_denied`.
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
import threading
import typing
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import temporalio.activity
import temporalio.converter
import temporalio.workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    StartChildWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from chio_durable import (
    ChioClientLike,
    Decision,
    DecisionObserver,
    Evaluation,
    GovernedCall,
    KernelRejected,
    KernelUnavailable,
    bind_parameters,
    call_key,
    client_url,
    jsonable,
)
from chio_durable._engine import (
    TransportSlot,
    deny_before_evaluation_async,
    evaluate_under,
    is_client,
    notify,
    pending_approval,
    run_metadata,
)
from chio_sdk.models import MonetaryAmount

from chio_temporal import _budgets
from chio_temporal.errors import (
    CONFIG_ERROR_TYPE,
    DENIED_ERROR_TYPE,
    ActivityDeniedError,
    ChioTemporalConfigError,
    ChioTemporalError,
    denied_error,
    rejected_error,
    sidecar_error,
)
from chio_temporal._approvals import ApprovalWaits, approval_id_from_headers, pending_error, waiting_handle
from chio_temporal.grants import WorkflowGrant
from chio_temporal.receipt import OUTCOMES, WorkflowReceipt, WorkflowStepReceipt

__all__ = [
    "DEFAULT_MAX_PENDING_RECEIPTS",
    "DENIED_ERROR_TYPE",
    "CONFIG_GUARD",
    "NO_GRANT_GUARD",
    "OVERRIDE_GUARD",
    "PARENT_CHAIN_HEADER",
    "ActivityCall",
    "ActivityGrantOverride",
    "ChioActivityInterceptor",
    "ReceiptSink",
    "current_evaluation",
    "current_receipt_id",
]

ActivityGrantOverride = Callable[[temporalio.activity.Info], "WorkflowGrant | None"]
"""Per-activity-type hook: given the activity's ``Info``, return a narrower grant or ``None`` (use the workflow grant)."""

ReceiptSink = Callable[[dict[str, Any]], "Awaitable[Any] | Any"]
"""Where flushed ``chio-temporal/v1`` envelopes go: a sync or async callable taking the envelope dict."""

PARENT_CHAIN_HEADER = "chio-parent-workflow-ids"
"""Temporal header carrying the parent-workflow chain (root first) to activities and child workflows."""

DEFAULT_MAX_PENDING_RECEIPTS = 10_000
"""Default bound on the workflow receipts an interceptor keeps in memory until they are flushed."""

log = logging.getLogger("chio_temporal")

NO_GRANT_GUARD = "workflow-grant"
"""``guard`` of the deny given when no grant covers the workflow (signed by the kernel's ``record_denial``)."""

OVERRIDE_GUARD = "grant-override"
"""``guard`` of the signed deny recorded when an activity's grant override is refused (not a subset / not derived)."""

CONFIG_GUARD = "chio-temporal-config"
"""``guard`` of the signed deny recorded when an activity cannot be mapped (e.g. no tool server)."""

_current_evaluation: ContextVar[Evaluation | None] = ContextVar("chio_temporal_evaluation", default=None)


def current_evaluation() -> Evaluation | None:
    """Read, inside a governed activity body, the kernel's allow for this execution.

    Returns:
        The allow :class:`~chio_durable.Evaluation`, or None outside a governed activity.
    """
    return _current_evaluation.get()


def current_receipt_id() -> str | None:
    """Read, inside a governed activity body, the chio receipt id that authorised this execution.

    Activity results are not changed by the interceptor (that would change workflow histories); an
    activity that wants to return its receipt id reads it here. Works for async activities and sync
    activities on a thread pool (Temporal copies the context into the thread).

    Returns:
        The allow receipt's id, or None outside a governed activity.
    """
    evaluation = _current_evaluation.get()
    return evaluation.receipt_id if evaluation is not None else None


class ActivityCall(GovernedCall):
    """What the kernel is asked about for one activity execution.

    A :class:`~chio_durable.GovernedCall` of kind ``"activity"`` (parameters hashed once).

    Args:
        tool_server: the tool server the activity is evaluated against.
        tool_name: the activity type.
        parameters: the activity's arguments bound by name.
        kind: always ``"activity"``.
        metadata: where it ran (workflow id, run id...), signed into the receipt, not part of the call.
    """

    def __init__(
        self, tool_server: str, tool_name: str, parameters: dict[str, Any], kind: Any = "activity",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(kind, tool_server, tool_name, parameters, metadata)


def activity_run_metadata(info: temporalio.activity.Info) -> dict[str, str] | None:
    """The run context signed into an activity's receipt (``workflow_id``, ``run_id``,
    ``activity_type``), so ``chio-durable receipts list --workflow-id ID`` finds it (docs/temporal.md)."""
    return run_metadata(workflow_id=info.workflow_id, run_id=info.workflow_run_id, activity_type=info.activity_type)


_payload_converter = temporalio.converter.PayloadConverter.default


def _encode_chain(chain: list[str]) -> Payload:
    return _payload_converter.to_payloads([chain])[0]


def _decode_chain(headers: Mapping[str, Payload] | None) -> list[str]:
    if not headers or PARENT_CHAIN_HEADER not in headers:
        return []
    try:
        value = _payload_converter.from_payloads([headers[PARENT_CHAIN_HEADER]])[0]
    except Exception:  # a foreign header of the same name: ignore rather than fail the activity
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


class ChioActivityInterceptor(TransportSlot, Interceptor):
    """Worker interceptor that gates every activity execution through the chio kernel.

    Args:
        chio_client: a ``chio_kernel.SidecarClient`` (sidecar over HTTP, with idempotency keys), a
            ``chio_kernel.LocalChioClient`` (embedded kernel), a stock ``chio_sdk.ChioClient`` (no
            idempotency key: a retry gets a new receipt) or a ``chio_sdk.testing`` mock. ``None`` with
            ``sidecar_url`` builds a ``SidecarClient(sidecar_url)``.
        sidecar_url: the kernel's address, named in ``ChioSidecarError`` messages (defaults to the
            client's own base URL).
        default_tool_server: tool server id for activities whose tool server nothing else names.
        activity_tool_server_map: activity type -> tool server id.
        receipt_sink: sync or async callable receiving each flushed ``chio-temporal/v1`` envelope.
        surface_denials: workflow side: re-raise a denied activity's ``ActivityError`` as
            :class:`~chio_temporal.errors.ActivityDeniedError` (also an ``ApplicationError`` with the
            deny's ``type``), so seed 001's ``except ApplicationError`` saga works. ``False`` leaves
            Temporal's plain ``ActivityError`` (see docs/temporal.md for the replay note).
        max_pending_receipts: at most this many workflow runs' receipts are kept in memory until
            flushed (default 10 000); beyond it the least recently updated one is dropped with a
            WARNING (the signed receipts stay in the kernel's store; only the envelope is lost).

    Tool server precedence for an activity: an override grant's ``tool_server`` (from
    :meth:`register_activity_grant_override`), then ``activity_tool_server_map[activity_type]``, then the
    workflow grant's ``tool_server``, then ``default_tool_server``.
    """

    def __init__(
        self,
        chio_client: ChioClientLike | None = None,
        sidecar_url: str | None = None,
        default_tool_server: str | None = None,
        activity_tool_server_map: Mapping[str, str] | None = None,
        receipt_sink: ReceiptSink | None = None,
        *,
        surface_denials: bool = True,
        max_pending_receipts: int = DEFAULT_MAX_PENDING_RECEIPTS,
    ) -> None:
        if chio_client is None:
            if not sidecar_url:
                raise ChioTemporalConfigError(
                    "ChioActivityInterceptor needs chio_client= (SidecarClient('http://127.0.0.1:9090'), "
                    "LocalChioClient(), or a chio_sdk.testing mock) or sidecar_url= the sidecar's address"
                )
            # imported here: chio_temporal stays importable in the workflow sandbox without the kernel
            from chio_kernel._client import SidecarClient

            chio_client = SidecarClient(sidecar_url)
        if not is_client(chio_client):
            raise ChioTemporalConfigError(
                f"chio_client= must be a ChioClient, LocalChioClient or chio_sdk.testing mock, "
                f"got {type(chio_client).__name__}"
            )
        if activity_tool_server_map is not None and not isinstance(activity_tool_server_map, Mapping):
            raise ChioTemporalConfigError(
                "activity_tool_server_map= must be a mapping of activity type -> tool server id, "
                f"got {type(activity_tool_server_map).__name__}"
            )
        if receipt_sink is not None and not callable(receipt_sink):
            raise ChioTemporalConfigError(
                "receipt_sink= must be a callable taking the envelope dict (sync or async), "
                f"got {type(receipt_sink).__name__}"
            )
        if isinstance(max_pending_receipts, bool) or not isinstance(max_pending_receipts, int) or max_pending_receipts < 1:
            raise ChioTemporalConfigError(
                f"max_pending_receipts= must be a positive int (runs kept until flushed), got {max_pending_receipts!r}"
            )
        self.chio_client = chio_client  # its transport is chosen here, once (see the property)
        self.max_pending_receipts = max_pending_receipts
        self.sidecar_url: str = sidecar_url or client_url(chio_client)
        self.default_tool_server = default_tool_server
        self.activity_tool_server_map: dict[str, str] = dict(activity_tool_server_map or {})
        self.receipt_sink = receipt_sink
        self.surface_denials = surface_denials
        self._lock = threading.RLock()
        self._grants: dict[tuple[str, str | None], WorkflowGrant] = {}
        self._prefix_grants: dict[str, WorkflowGrant] = {}
        self._overrides: dict[str, ActivityGrantOverride] = {}
        # capability ids of override grants already checked against a workflow grant's capability
        self._checked_overrides: dict[tuple[str, str], bool] = {}
        # insertion/update order = least recently updated first (bounded by max_pending_receipts)
        self._receipts: OrderedDict[tuple[str, str | None], WorkflowReceipt] = OrderedDict()
        self._signatures: dict[Any, inspect.Signature | None] = {}
        # Who sees each decision: the envelope writer; append your own (an audit log, metrics...).
        self.decision_observers: list[DecisionObserver] = [self.write_envelope_step]

    # --- grants -------------------------------------------------------------------------------

    def register_workflow_grant(self, grant: WorkflowGrant) -> None:
        """Govern the activities of a workflow with a grant.

        Register before the workflow's first activity runs; a later registration for the same key
        replaces the earlier one (the next activity uses it).

        Args:
            grant: the grant for ``grant.workflow_id`` (one run if ``grant.run_id`` is set).

        Raises:
            ChioTemporalConfigError: ``grant`` is not a :class:`WorkflowGrant`.
        """
        if not isinstance(grant, WorkflowGrant):
            raise ChioTemporalConfigError(
                "register_workflow_grant needs a WorkflowGrant(workflow_id=..., token=..., tool_server=...), "
                f"got {type(grant).__name__}"
            )
        with self._lock:
            self._grants[(grant.workflow_id, grant.run_id)] = grant

    def unregister_workflow_grant(self, workflow_id: str, run_id: str | None = None) -> None:
        """Forget a grant: the workflow's next activity is denied (fail closed).

        Args:
            workflow_id: the workflow id the grant was registered for.
            run_id: the run it was pinned to, or None for an unpinned grant.
        """
        with self._lock:
            self._grants.pop((workflow_id, run_id), None)

    def register_workflow_grant_prefix(self, grant: WorkflowGrant) -> None:
        """Govern every workflow whose id starts with a prefix (e.g. ``"order-"``) with one grant.

        For many runs under one capability (ids made up per order, per ticket...). An exact
        :meth:`register_workflow_grant` always wins over a prefix; among prefixes the longest wins.

        Args:
            grant: the grant; its ``workflow_id`` is the prefix and its ``run_id`` must be None.

        Raises:
            ChioTemporalConfigError: not a :class:`WorkflowGrant`, or a ``run_id`` was set.
        """
        if not isinstance(grant, WorkflowGrant):
            raise ChioTemporalConfigError(
                "register_workflow_grant_prefix needs a WorkflowGrant(workflow_id=<prefix>, token=..., ...), "
                f"got {type(grant).__name__}"
            )
        if grant.run_id is not None:
            raise ChioTemporalConfigError("a prefix grant applies to many workflows: pass run_id=None")
        with self._lock:
            self._prefix_grants[grant.workflow_id] = grant

    def register_activity_grant_override(self, activity_type: str, override: ActivityGrantOverride) -> None:
        """Run activities of one type under a narrower grant.

        The override's scope must be a subset of the workflow grant's scope. A callable can only be
        checked when it returns a grant, so the check happens at the activity's first use (once per
        pair of capabilities); a non-subset fails that activity with the non-retryable
        ``ApplicationError(type="ChioTemporalConfigError")`` before the kernel is asked or the body runs.

        Args:
            activity_type: the activity type name.
            override: ``info -> WorkflowGrant | None``; None keeps the workflow grant.

        Raises:
            ChioTemporalConfigError: an empty activity type, or ``override`` is not callable.
        """
        if not isinstance(activity_type, str) or not activity_type:
            raise ChioTemporalConfigError(
                f"register_activity_grant_override needs the activity type name (str), got {activity_type!r}"
            )
        if not callable(override):
            raise ChioTemporalConfigError(
                "register_activity_grant_override needs a callable info -> WorkflowGrant | None "
                f"(e.g. `lambda info: narrower`), got {type(override).__name__}"
            )
        with self._lock:
            self._overrides[activity_type] = override

    def grant_for(self, workflow_id: str, run_id: str | None = None) -> WorkflowGrant | None:
        """Find the workflow grant that applies to a run: pinned run, any run, then the longest prefix.

        Args:
            workflow_id: the workflow id.
            run_id: the run id, or None.

        Returns:
            The grant, or None (the workflow's activities are denied).
        """
        with self._lock:
            grant = self._grants.get((workflow_id, run_id)) if run_id is not None else None
            if grant is None:
                grant = self._grants.get((workflow_id, None))
            if grant is None and self._prefix_grants:
                matches = [p for p in self._prefix_grants if workflow_id.startswith(p)]
                if matches:
                    grant = self._prefix_grants[max(matches, key=len)]
            return grant

    # --- extension points (override in a subclass; documented in docs/temporal.md) ------------

    def governs(self, info: temporalio.activity.Info, input: ExecuteActivityInput) -> bool:
        """Tell whether an activity execution is evaluated at all.

        Default: every one but the release activity, which only frees budget
        (``chio_temporal.release_holds_activity``).

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.

        Returns:
            True to evaluate it.
        """
        if info.activity_type == _budgets.RELEASE_HOLDS_ACTIVITY:
            return False
        return True

    def resolve_grant(self, info: temporalio.activity.Info) -> WorkflowGrant | None:
        """Find the grant this execution runs under: the workflow grant, narrowed by an override if one applies.

        Args:
            info: the activity's ``temporalio.activity.Info``.

        Returns:
            The grant, or None (no grant: the activity is denied).

        Raises:
            ChioTemporalConfigError: the override returned something other than a grant, or a grant
                that is not a subset of (or not derived from) the workflow grant.
        """
        workflow_id = info.workflow_id or info.activity_id
        workflow_grant = self.grant_for(workflow_id, info.workflow_run_id)
        if workflow_grant is None:
            return None
        override = self._overrides.get(info.activity_type)
        if override is None:
            return workflow_grant
        narrower = override(info)
        if narrower is None:
            return workflow_grant
        if not isinstance(narrower, WorkflowGrant):
            raise ChioTemporalConfigError(
                f"the grant override for activity {info.activity_type!r} returned {type(narrower).__name__}; "
                "it must return a WorkflowGrant (from `await grant.attenuate_for_activity(...)`) or None"
            )
        key = (workflow_grant.capability_id, narrower.capability_id)
        with self._lock:
            ok = self._checked_overrides.get(key)
            if ok is None:
                ok = narrower.capability_id == workflow_grant.capability_id or (
                    workflow_grant.covers(narrower) and _derives_from(narrower, workflow_grant)
                )
                self._checked_overrides[key] = ok
        if not ok:
            problem = (
                "is not a subset of"
                if not workflow_grant.covers(narrower)
                else "is not derived from (its delegation_chain does not name)"
            )
            raise ChioTemporalConfigError(
                f"the grant override for activity {info.activity_type!r} (capability {narrower.capability_id!r}) "
                f"{problem} the workflow grant (capability {workflow_grant.capability_id!r}) of "
                f"workflow {workflow_id!r}; return a grant made with "
                "`await workflow_grant.attenuate_for_activity(chio, new_scope=<narrower scope>)`"
            )
        return narrower

    def resolve_capability_id(self, info: temporalio.activity.Info, grant: WorkflowGrant | None) -> str | None:
        """Choose the capability id to evaluate with.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            grant: the grant the execution runs under, or None.

        Returns:
            The grant's capability id; None means no grant: the activity is denied.
        """
        return grant.capability_id if grant is not None else None

    def resolve_tool_server(self, info: temporalio.activity.Info, grant: WorkflowGrant | None) -> str:
        """Choose the tool server of an activity.

        Precedence: the override grant's ``tool_server`` > ``activity_tool_server_map`` > the workflow
        grant's > ``default_tool_server``.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            grant: the grant the execution runs under, or None.

        Returns:
            The tool server id.

        Raises:
            ChioTemporalConfigError: nothing names a tool server for this activity type.
        """
        if grant is not None and grant.tool_server and self._is_override(info, grant):
            return grant.tool_server
        mapped = self.activity_tool_server_map.get(info.activity_type)
        if mapped:
            return mapped
        if grant is not None and grant.tool_server:
            return grant.tool_server
        if self.default_tool_server:
            return self.default_tool_server
        raise ChioTemporalConfigError(
            f"no tool server for activity {info.activity_type!r}: pass default_tool_server= or "
            f"activity_tool_server_map={{{info.activity_type!r}: '<server id>'}} to ChioActivityInterceptor, "
            "or tool_server= to the WorkflowGrant"
        )

    def activity_parameters(self, info: temporalio.activity.Info, input: ExecuteActivityInput) -> dict[str, Any]:
        """Bind the activity's arguments by name to its function's signature.

        The function is ``input.fn``: the callable the worker registered for this activity type. A
        dynamic activity (``@activity.defn(dynamic=True)``) has no signature for the real type, so its
        raw arguments are sent as ``{"args": [...]}``.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input (``fn`` and ``args``).

        Returns:
            ``{parameter name: JSON-able value}``.
        """
        if _is_dynamic(input.fn, input.args):
            raw = input.args[0] if input.args else []
            values = []
            for item in raw:
                payload = getattr(item, "payload", None)
                values.append(
                    temporalio.activity.payload_converter().from_payload(payload) if payload is not None else item
                )
            return {"args": jsonable(values)}
        signature = self._signature(input.fn)
        if signature is None:
            return {"args": jsonable(list(input.args))}
        return bind_parameters(signature, tuple(input.args), {})

    def map_activity(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, grant: WorkflowGrant | None
    ) -> ActivityCall:
        """Map an activity execution to the call the kernel is asked about; tool name = the activity type.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.
            grant: the grant it runs under, or None.

        Returns:
            The :class:`ActivityCall`.
        """
        return ActivityCall(
            tool_server=self.resolve_tool_server(info, grant),
            tool_name=info.activity_type,
            parameters=self.activity_parameters(info, input),
        )

    def activity_idempotency_key(self, info: temporalio.activity.Info, capability_id: str) -> str:
        """Derive the idempotency key of an activity execution: the same for every attempt.

        Retries thus reuse one allow receipt. The one scheme (:func:`chio_durable.call_key`): run =
        workflow id / run id, position = activity id.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            capability_id: the capability it runs under.

        Returns:
            The key.
        """
        run = f"{info.workflow_id or ''}/{info.workflow_run_id or info.activity_run_id or ''}"
        return call_key(run, f"activity:{info.activity_id}", capability_id)

    def activity_cost(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, call: ActivityCall
    ) -> MonetaryAmount | None:
        """Declare the cost of an activity execution (override it; default: none).

        With a cost the allow is a budget hold, settled when the body returns (docs/budgets.md); every
        attempt declares the same one.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.
            call: the call the kernel is asked about.

        Returns:
            The cost, or None.
        """
        return None

    def settled_cost(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        result: Any,
        declared: MonetaryAmount,
        reported: MonetaryAmount | None,
    ) -> MonetaryAmount:
        """Choose what a costed execution's hold settles at (override it to compute from the result).

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.
            call: the call the kernel was asked about.
            result: what the body returned.
            declared: the cost declared by :meth:`activity_cost`.
            reported: what the body reported with ``chio_durable.report_cost``, or None.

        Returns:
            ``reported`` if any, else ``declared``.
        """
        return reported if reported is not None else declared

    async def on_allowed(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        evaluation: Evaluation,
        proceed: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run the activity body after an allow (override it to wrap the body).

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.
            call: the call the kernel allowed.
            evaluation: the kernel's allow.
            proceed: runs the body.

        Returns:
            The body's result, unchanged.
        """
        return await proceed()

    async def on_denied(
        self,
        info: temporalio.activity.Info,
        input: ExecuteActivityInput,
        call: ActivityCall,
        evaluation: Evaluation,
    ) -> Any:
        """Fail a denied activity with ``ApplicationError(type="ChioCapabilityDenied", non_retryable=True)``.

        Args:
            info: the activity's ``temporalio.activity.Info``.
            input: the execution's input.
            call: the call the kernel denied.
            evaluation: the kernel's deny.

        Returns:
            Nothing by default; a subclass may return a value instead: it becomes the activity's result
            and the body does not run.

        Raises:
            ApplicationError: the deny (:func:`~chio_temporal.errors.denied_error`).
        """
        raise denied_error(
            activity_type=info.activity_type,
            tool_server=call.tool_server,
            tool_name=call.tool_name,
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            capability_id=evaluation.capability_id or None,
            receipt_id=evaluation.receipt_id,
            guard=evaluation.guard,
            reason=evaluation.reason,
        )

    # --- the enforcement path -----------------------------------------------------------------

    async def govern(self, input: ExecuteActivityInput, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Evaluate one activity execution and run, or refuse, its body.

        Args:
            input: the execution's input.
            proceed: runs the body.

        Returns:
            The body's result (or what :meth:`on_denied` returns).

        Raises:
            ApplicationError: a deny (non-retryable), a configuration error (non-retryable), a request
                the kernel rejected (non-retryable), or a kernel that gave no decision (retryable).
        """
        info = temporalio.activity.info()
        if not self.governs(info, input):
            return await proceed()
        try:
            grant = self.resolve_grant(info)
            capability_id = self.resolve_capability_id(info, grant)
            call = self.map_activity(info, input, grant) if capability_id is not None else self._fallback_call(info, input)
        except ChioTemporalConfigError as err:
            # Still an attempt: the kernel signs and chains its deny (a bad override, no tool server)
            # before the activity fails with the non-retryable config error.
            await self._record_config_deny(info, input, err)
            raise ApplicationError(str(err), type=CONFIG_ERROR_TYPE, non_retryable=True) from err
        if call.metadata is None:  # where it ran, signed into the receipt (not part of the call)
            call = replace(call, metadata=activity_run_metadata(info))

        key = self.activity_idempotency_key(info, capability_id) if capability_id is not None else None
        cost, evaluation = await self._decide(info, input, call, capability_id, key)
        notify(
            self.decision_observers,
            Decision(call, evaluation, key, capability_id=capability_id, where={"info": info, "headers": input.headers}),
        )
        pending = pending_approval(evaluation)
        if pending is not None:  # the workflow waits for a person (chio_temporal._approvals)
            raise pending_error(
                pending=pending, activity_type=info.activity_type, tool_server=call.tool_server,
                tool_name=call.tool_name, workflow_id=info.workflow_id, run_id=info.workflow_run_id,
                capability_id=capability_id,
            )
        if not evaluation.allowed:
            return await self.on_denied(info, input, call, evaluation)
        token = _current_evaluation.set(evaluation)
        try:
            if cost is not None:  # a budget hold: settled when the body returns (chio_temporal._budgets)
                return await _budgets.run_with_hold(self, info, input, call, evaluation, cost, proceed)
            return await self.on_allowed(info, input, call, evaluation, proceed)
        finally:
            _current_evaluation.reset(token)

    async def _decide(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, call: ActivityCall,
        capability_id: str | None, key: str | None,
    ) -> tuple[MonetaryAmount | None, Evaluation]:
        """The kernel's decision on ``call`` (and its cost): a signed deny when no grant is registered."""
        if capability_id is None:
            workflow_id = info.workflow_id or info.activity_id
            # No capability to evaluate: the kernel signs the deny by the workflow-grant guard
            # (chio_durable._denial_record; local, receipt_id None, with a mock or a stock ChioClient).
            return None, await deny_before_evaluation_async(
                self.transport,
                call,
                None,
                guard=NO_GRANT_GUARD,
                reason=(
                    f"no WorkflowGrant is registered for workflow {workflow_id!r} (run {info.workflow_run_id!r}); "
                    "call interceptor.register_workflow_grant(WorkflowGrant(workflow_id=..., token=..., "
                    "tool_server=...)) before starting the workflow"
                ),
            )
        approval_id = approval_id_from_headers(input.headers)  # a re-run after a person's approval
        try:
            cost = self.activity_cost(info, input, call)
            return cost, await evaluate_under(
                self.transport, call, capability_id=capability_id, idempotency_key=key,
                approval_id=approval_id, cost=cost,
            )
        except KernelUnavailable as err:
            raise sidecar_error(
                url=self.sidecar_url or err.url, detail=err.detail, activity_type=info.activity_type
            ) from err
        except KernelRejected as err:  # the kernel answered: the request itself is bad, not retryable
            raise rejected_error(
                url=self.sidecar_url or err.url, detail=err.detail, activity_type=info.activity_type
            ) from err

    async def _record_config_deny(
        self, info: temporalio.activity.Info, input: ExecuteActivityInput, err: ChioTemporalConfigError
    ) -> None:
        """Sign and chain the deny of an activity refused for its configuration, and add it to the envelope."""
        workflow_grant = self.grant_for(info.workflow_id or info.activity_id, info.workflow_run_id)
        capability_id = workflow_grant.capability_id if workflow_grant is not None else None
        call = self._fallback_call(info, input)
        guard = OVERRIDE_GUARD if info.activity_type in self._overrides else CONFIG_GUARD
        try:
            evaluation = await deny_before_evaluation_async(
                self.transport, call, capability_id, guard=guard, reason=str(err)
            )
            notify(
                self.decision_observers,
                Decision(call, evaluation, None, capability_id=capability_id, where={"info": info, "headers": input.headers}),
            )
        except Exception:  # the config error is raised regardless
            log.exception("chio_temporal: could not record the config deny of activity %r", info.activity_type)

    def _fallback_call(self, info: temporalio.activity.Info, input: ExecuteActivityInput) -> ActivityCall:
        """The call named in a no-grant deny (the kernel is not asked; nothing here may fail)."""
        server = self.activity_tool_server_map.get(info.activity_type) or self.default_tool_server or ""
        try:
            parameters = self.activity_parameters(info, input)
        except Exception:
            parameters = {}
        return ActivityCall(
            tool_server=server, tool_name=info.activity_type, parameters=parameters,
            metadata=activity_run_metadata(info),
        )

    def _is_override(self, info: temporalio.activity.Info, grant: WorkflowGrant) -> bool:
        """Whether ``grant`` came from an activity override rather than the workflow's own grant."""
        workflow_grant = self.grant_for(info.workflow_id or info.activity_id, info.workflow_run_id)
        return workflow_grant is not None and grant.capability_id != workflow_grant.capability_id

    def _signature(self, fn: Any) -> inspect.Signature | None:
        # a bound method's signature (without ``self``) is the same for every instance
        key: tuple[Any, bool] | None = (getattr(fn, "__func__", fn), hasattr(fn, "__func__"))
        try:
            return self._signatures[key]
        except KeyError:
            pass
        except TypeError:  # unhashable callable: no cache
            key = None
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if key is not None:
            self._signatures[key] = signature
        return signature

    # --- workflow receipts --------------------------------------------------------------------

    def write_envelope_step(self, decision: Decision) -> None:
        """Add a decision as a step to its workflow run's receipt: the Temporal envelope writer, a decision observer.

        Args:
            decision: the decision (``where["info"]`` is the activity's info).
        """
        info: temporalio.activity.Info = decision.where["info"]
        step = WorkflowStepReceipt.from_decision(decision)
        workflow_id = info.workflow_id or info.activity_id
        run_id = info.workflow_run_id or info.activity_run_id
        with self._lock:
            aggregate = self._receipts.get((workflow_id, run_id))
            if aggregate is None:
                grant = self.grant_for(workflow_id, run_id)
                aggregate = WorkflowReceipt(
                    workflow_id=workflow_id,
                    run_id=run_id,
                    parent_workflow_ids=_decode_chain(decision.where.get("headers")),
                    metadata={
                        "workflow_type": info.workflow_type,
                        "namespace": info.namespace,
                        "task_queue": info.task_queue,
                        "capability_id": grant.capability_id if grant is not None else decision.capability_id,
                        "sidecar_url": self.sidecar_url,
                    },
                )
                self._keep(workflow_id, run_id, aggregate)
            else:
                self._receipts.move_to_end((workflow_id, run_id))
            aggregate.add_step(step)

    def _keep(self, workflow_id: str, run_id: str | None, receipt: WorkflowReceipt) -> None:
        """Hold a new receipt; beyond ``max_pending_receipts`` drop the least recently updated one (lock held)."""
        self._receipts[(workflow_id, run_id)] = receipt
        while len(self._receipts) > self.max_pending_receipts:
            (old_wid, old_rid), dropped = self._receipts.popitem(last=False)
            log.warning(
                "chio_temporal: dropped the unflushed receipt of workflow %r run %r (%d steps) from memory: more "
                "than max_pending_receipts=%d runs are held; finalise and flush receipts (the signed receipts are "
                "in the kernel's store)",
                old_wid, old_rid, len(dropped.steps), self.max_pending_receipts,
            )

    def _find_receipt_key(self, workflow_id: str, run_id: str | None) -> tuple[str, str | None] | None:
        if run_id is not None:
            return (workflow_id, run_id) if (workflow_id, run_id) in self._receipts else None
        keys = [key for key in self._receipts if key[0] == workflow_id]
        if len(keys) > 1:
            raise ChioTemporalConfigError(
                f"workflow {workflow_id!r} has receipts for several runs {[k[1] for k in keys]}; pass run_id="
            )
        return keys[0] if keys else None

    def get_workflow_receipt(self, workflow_id: str, run_id: str | None = None) -> WorkflowReceipt | None:
        """Read the in-flight (or finalised, not yet flushed) receipt of a workflow run.

        Args:
            workflow_id: the workflow id.
            run_id: the run id; None when exactly one run of the id has a receipt here.

        Returns:
            The receipt, or None if no activity of the run was evaluated on this worker.
        """
        with self._lock:
            key = self._find_receipt_key(workflow_id, run_id)
            return self._receipts.get(key) if key is not None else None

    def workflow_receipt(self, workflow_id: str, run_id: str | None = None) -> WorkflowReceipt | None:
        """Read a workflow run's receipt: upstream chio-temporal's name of :meth:`get_workflow_receipt`.

        Args:
            workflow_id: the workflow id.
            run_id: the run id, or None.

        Returns:
            The receipt, or None.
        """
        return self.get_workflow_receipt(workflow_id, run_id)

    def pending_workflow_receipts(self) -> list[WorkflowReceipt]:
        """List every workflow receipt held in memory (not yet flushed).

        Returns:
            The receipts, least recently updated first.
        """
        with self._lock:
            return list(self._receipts.values())

    def finalize_workflow(
        self,
        *,
        workflow_id: str,
        run_id: str | None = None,
        outcome: str,
        metadata: Mapping[str, Any] | None = None,
        completed_at: Any = None,
    ) -> WorkflowReceipt:
        """Close the receipt of a workflow run with its outcome.

        A run that evaluated no activity gets an empty receipt (``run_id`` required then). Finalising
        again with the same outcome is a no-op.

        Args:
            workflow_id: the workflow id.
            run_id: the run id; None is accepted when exactly one run of the id has a receipt.
            outcome: ``"success"``, ``"failure"`` or ``"cancelled"``.
            metadata: merged into the receipt's metadata.
            completed_at: a datetime, Unix seconds or RFC 3339 (default now).

        Returns:
            The finalised receipt.

        Raises:
            ChioTemporalConfigError: an unknown outcome, another outcome than the one recorded, or no
                receipt and no ``run_id``.
        """
        if outcome not in OUTCOMES:
            raise ChioTemporalConfigError(f"outcome= must be one of {list(OUTCOMES)}, got {outcome!r}")
        with self._lock:
            key = self._find_receipt_key(workflow_id, run_id)
            if key is None:
                if run_id is None:
                    raise ChioTemporalConfigError(
                        f"no activity of workflow {workflow_id!r} was evaluated on this worker; pass run_id= "
                        "to record an empty receipt for that run"
                    )
                key = (workflow_id, run_id)
                grant = self.grant_for(workflow_id, run_id)
                self._keep(
                    workflow_id,
                    run_id,
                    WorkflowReceipt(
                        workflow_id=workflow_id,
                        run_id=run_id,
                        metadata={
                            "capability_id": grant.capability_id if grant is not None else None,
                            "sidecar_url": self.sidecar_url,
                        },
                    ),
                )
            self._receipts.move_to_end(key)
            receipt = self._receipts[key]
            receipt.finalize(outcome, dict(metadata) if metadata else None, completed_at=completed_at)
            return receipt

    async def flush_workflow_receipt(self, *, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
        """Forward a finalised workflow receipt to ``receipt_sink``, then drop it from memory.

        Args:
            workflow_id: the workflow id.
            run_id: the run id, or None when exactly one run of the id has a receipt.

        Returns:
            The ``chio-temporal/v1`` envelope.

        Raises:
            ChioTemporalConfigError: no such receipt here, or it is not finalised yet.
            ChioTemporalError: the sink raised; the receipt stays in memory (nothing is lost): flush
                again once the sink is back.
        """
        with self._lock:
            key = self._find_receipt_key(workflow_id, run_id)
            receipt = self._receipts.get(key) if key is not None else None
            if receipt is None:
                raise ChioTemporalConfigError(
                    f"no receipt for workflow {workflow_id!r} run {run_id!r} on this worker (already flushed, "
                    "or no activity of it was evaluated here)"
                )
            if not receipt.finalized:
                raise ChioTemporalConfigError(
                    f"the receipt of workflow {workflow_id!r} run {receipt.run_id!r} is still open: call "
                    "interceptor.finalize_workflow(workflow_id=..., run_id=..., outcome='success'|'failure'|"
                    "'cancelled') first"
                )
            envelope = receipt.to_envelope()
        if self.receipt_sink is not None:
            try:
                result = self.receipt_sink(envelope)
                if inspect.isawaitable(result):
                    await result
            except Exception as err:
                raise ChioTemporalError(
                    f"receipt_sink failed for workflow {workflow_id!r} run {receipt.run_id!r}: {err}; the receipt "
                    "is kept, flush again"
                ) from err
        with self._lock:
            if key is not None and self._receipts.get(key) is receipt:
                del self._receipts[key]
        return envelope

    # --- temporalio.worker.Interceptor --------------------------------------------------------

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ChioActivityInbound(next, self)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _ChioWorkflowInbound if self.surface_denials else _ChioWorkflowInboundPlain


def _derives_from(child: WorkflowGrant, parent: WorkflowGrant) -> bool:
    """Whether ``child``'s token was attenuated from ``parent``'s (its delegation chain names it).

    A subset scope alone is not enough: an independent capability with a smaller scope would keep
    running overridden activities after the workflow's capability is revoked. A child made by
    :meth:`WorkflowGrant.attenuate_for_activity` names its parent in ``delegation_chain``, and the
    kernel's revocation of the parent covers it.
    """
    return any(link.capability_id == parent.capability_id for link in child.token.delegation_chain)


def _is_dynamic(fn: Any, args: Sequence[Any]) -> bool:
    """Whether this execution is of a dynamic activity (``@activity.defn(dynamic=True)``).

    Temporal requires a dynamic activity to take a single ``Sequence[temporalio.common.RawValue]``
    and hands it the undecoded arguments as ``RawValue``s: recognised by either, public types only.
    """
    if len(args) == 1 and isinstance(args[0], Sequence) and not isinstance(args[0], (str, bytes)):
        if args[0] and all(isinstance(item, RawValue) for item in args[0]):
            return True
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return False
    hints.pop("return", None)
    if len(hints) != 1:
        return False
    (hint,) = hints.values()
    return typing.get_origin(hint) is collections.abc.Sequence and typing.get_args(hint) == (RawValue,)


class _ChioActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ChioActivityInterceptor) -> None:
        super().__init__(next)
        self._root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        return await self._root.govern(input, lambda: self.next.execute_activity(input))


_ChioInboundInterceptor = _ChioActivityInbound
"""Upstream chio-temporal's name of the activity inbound interceptor (its tests build it directly as
``_ChioInboundInterceptor(next, root)``): kept importable, the same class."""


class _ChioWorkflowInbound(WorkflowInboundInterceptor):
    """Remembers the parent chain this workflow was started with (deterministic: header + info only)."""

    _inherited: list[str] | None = None
    surface_denials = True

    approvals: ApprovalWaits | None = None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_ChioWorkflowOutbound(outbound, self))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        self._inherited = _decode_chain(input.headers)
        self.approvals = ApprovalWaits.for_this_run()  # update chio_approval + query chio_pending_approvals
        return await super().execute_workflow(input)

    def parents(self) -> list[str]:
        """Root first, direct parent last; from the header, else the direct parent Temporal knows of."""
        if self._inherited:
            return list(self._inherited)
        parent = temporalio.workflow.info().parent
        return [parent.workflow_id] if parent is not None else []


async def _surface_denial(handle: temporalio.workflow.ActivityHandle[Any]) -> Any:
    try:
        return await handle
    except ActivityError as err:
        surfaced = ActivityDeniedError.surface(err)
        if surfaced is err:
            raise
        raise surfaced from err.cause


class _SurfacingActivityHandle(temporalio.workflow.ActivityHandle[Any]):
    """The activity handle workflow code gets: the real one, with a denial re-raised as ``ActivityDeniedError``.

    A task on the workflow's own deterministic event loop. ``cancel()`` goes to the real handle first,
    so an activity cancelled before this task ever ran is cancelled exactly as without chio (e.g. never
    scheduled when cancelled in the same workflow task).
    """

    def __init__(self, inner: temporalio.workflow.ActivityHandle[Any]) -> None:
        super().__init__(_surface_denial(inner))
        self._inner = inner

    def cancel(self, msg: Any | None = None) -> bool:
        self._inner.cancel(msg)
        return super().cancel(msg)


class _ChioWorkflowOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next: WorkflowOutboundInterceptor, inbound: _ChioWorkflowInbound) -> None:
        super().__init__(next)
        self._inbound = inbound

    def _with_chain(self, headers: Mapping[str, Payload], chain: list[str]) -> Mapping[str, Payload]:
        return {**headers, PARENT_CHAIN_HEADER: _encode_chain(chain)} if chain else headers

    def _surfaced(self, handle: temporalio.workflow.ActivityHandle[Any]) -> temporalio.workflow.ActivityHandle[Any]:
        return _SurfacingActivityHandle(handle) if self._inbound.surface_denials else handle

    def start_activity(self, input: StartActivityInput) -> Any:
        input.headers = self._with_chain(input.headers, self._inbound.parents())
        return self._surfaced(waiting_handle(input, super().start_activity, self._waits()))

    def start_local_activity(self, input: StartLocalActivityInput) -> Any:
        input.headers = self._with_chain(input.headers, self._inbound.parents())
        return self._surfaced(waiting_handle(input, super().start_local_activity, self._waits()))

    def _waits(self) -> ApprovalWaits:
        if self._inbound.approvals is None:  # an activity started before execute_workflow (a handler)
            self._inbound.approvals = ApprovalWaits.for_this_run()
        return self._inbound.approvals

    async def start_child_workflow(self, input: StartChildWorkflowInput) -> Any:
        chain = [*self._inbound.parents(), temporalio.workflow.info().workflow_id]
        input.headers = self._with_chain(input.headers, chain)
        return await super().start_child_workflow(input)


class _ChioWorkflowInboundPlain(_ChioWorkflowInbound):
    surface_denials = False
