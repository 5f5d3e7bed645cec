"""Chio search attributes on governed workflows, so the Temporal UI and ``list_workflows`` can filter.

* ``ChioCapabilityId`` (Keyword): the capability the workflow's activities are evaluated with — the
  workflow grant registered for the run on the governing interceptor, else the agent's capability
  (``ChioTemporalAgent``). Set when the workflow starts.
* ``ChioDenyCount`` (Int): how many of the workflow's activities failed with
  ``ApplicationError(type="ChioCapabilityDenied")``. ``0`` at start, incremented on each such failure
  (an agent's tool deny told to the model, ``on_deny="tell_model"``, completes the activity and is not
  counted; its receipt is in the envelope).
* ``ChioPendingApproval`` (Bool): set from workflow code with :func:`set_pending_approval` while a
  call waits for a human approval (a pending verdict), cleared when it is decided.

Attributes are upserted from workflow code by a workflow interceptor (the public seam
``temporalio.worker.Interceptor.workflow_interceptor_class``), so they are part of the history and
replay deterministically. They must exist on the namespace first (``docs/temporal.md`` has the
``temporal operator search-attribute create`` commands); upserting an unknown attribute fails the
workflow task. Hence **opt-in**: ``build_chio_worker(..., search_attributes=True)`` checks the
namespace with the client and refuses to build the worker when one is missing (naming the command);
``ChioTemporalAgent(..., search_attributes=True)`` has no client at construction, so check with
``await require_search_attributes(client)`` where you build the worker. Without the flag nothing is
upserted and histories are unchanged. Enable it on one governing interceptor per worker (two would
count each deny twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import temporalio.workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from chio_temporal._approvals import ApprovalWaits
from chio_temporal.errors import DENIED_ERROR_TYPE, ChioTemporalConfigError

if TYPE_CHECKING:
    from temporalio.client import Client

    from chio_temporal.interceptor import ChioActivityInterceptor

__all__ = [
    "CAPABILITY_ID",
    "DENY_COUNT",
    "PENDING_APPROVAL",
    "SEARCH_ATTRIBUTES",
    "ChioSearchAttributes",
    "create_commands",
    "missing_search_attributes",
    "require_search_attributes",
    "set_pending_approval",
]

CAPABILITY_ID = SearchAttributeKey.for_keyword("ChioCapabilityId")
DENY_COUNT = SearchAttributeKey.for_int("ChioDenyCount")
PENDING_APPROVAL = SearchAttributeKey.for_bool("ChioPendingApproval")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (CAPABILITY_ID, DENY_COUNT, PENDING_APPROVAL)
"""The three keys, for ``WorkflowEnvironment.start_local(search_attributes=SEARCH_ATTRIBUTES)``."""

_CLI_TYPES = {"KEYWORD": "Keyword", "INT": "Int", "BOOL": "Bool"}


def create_commands(namespace: str = "default", keys: Sequence[SearchAttributeKey[Any]] = SEARCH_ATTRIBUTES) -> list[str]:
    """The ``temporal operator search-attribute create`` commands that register ``keys``."""
    return [
        f"temporal operator search-attribute create --namespace {namespace} "
        f"--name {key.name} --type {_CLI_TYPES[key.indexed_value_type.name]}"
        for key in keys
    ]


async def missing_search_attributes(client: Client) -> list[SearchAttributeKey[Any]]:
    """The Chio search attributes not registered on the client's namespace (operator service)."""
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    known = set(listed.custom_attributes) | set(listed.system_attributes)
    return [key for key in SEARCH_ATTRIBUTES if key.name not in known]


async def require_search_attributes(client: Client) -> None:
    """Check that the Chio search attributes are registered on the client's namespace.

    Args:
        client: the Temporal client (its namespace is checked).

    Raises:
        ChioTemporalConfigError: one is not registered (the message gives the commands to run).
    """
    missing = await missing_search_attributes(client)
    if missing:
        commands = "\n  ".join(create_commands(client.namespace, missing))
        raise ChioTemporalConfigError(
            f"search attributes {[k.name for k in missing]} are not registered on namespace "
            f"{client.namespace!r}; upserting them would fail every governed workflow. Register them:\n  "
            f"{commands}\nor build the worker without search_attributes=True"
        )


def set_pending_approval(pending: bool) -> None:
    """Mark or clear ``ChioPendingApproval`` on this workflow, from workflow code.

    With search attributes enabled, the worker does this itself: ``True`` when the run starts waiting
    for a person (a ``pending_approval`` verdict), ``False`` when it waits on none. Call it yourself
    only for waits of your own. The attribute must be registered on the namespace.

    Args:
        pending: True to mark the workflow as waiting for a person, False to clear it.
    """
    temporalio.workflow.upsert_search_attributes([PENDING_APPROVAL.value_set(bool(pending))])


def _is_chio_deny(error: BaseException | None) -> bool:
    cause = error.cause if isinstance(error, ActivityError) else None
    return isinstance(cause, ApplicationError) and cause.type == DENIED_ERROR_TYPE


class ChioSearchAttributes(Interceptor):
    """Worker interceptor that upserts the Chio search attributes of each workflow it runs.

    Args:
        governing: The activity interceptor whose workflow grants (or agent capability) name the
            capability of each workflow.

    Usually added for you: ``build_chio_worker(..., search_attributes=True)`` or
    ``ChioTemporalAgent(..., search_attributes=True)``.
    """

    def __init__(self, governing: ChioActivityInterceptor) -> None:
        self.governing = governing

    def capability_of(self, workflow_id: str, run_id: str) -> str | None:
        """Name the capability governing a workflow run: its grant's, else the agent's.

        Args:
            workflow_id: the workflow id.
            run_id: the run id.

        Returns:
            The capability id, or None.
        """
        grant = self.governing.grant_for(workflow_id, run_id)
        if grant is not None:
            return grant.capability_id
        capability_id = getattr(self.governing, "capability_id", None)
        return capability_id if isinstance(capability_id, str) else None

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        owner = self

        class _Outbound(WorkflowOutboundInterceptor):
            def __init__(self, next: WorkflowOutboundInterceptor, inbound: _Inbound) -> None:
                super().__init__(next)
                self.inbound = inbound

            def start_activity(self, input: StartActivityInput) -> temporalio.workflow.ActivityHandle[Any]:
                handle = super().start_activity(input)
                handle.add_done_callback(self.inbound.count_if_denied)
                return handle

            def start_local_activity(
                self, input: StartLocalActivityInput
            ) -> temporalio.workflow.ActivityHandle[Any]:
                handle = super().start_local_activity(input)
                handle.add_done_callback(self.inbound.count_if_denied)
                return handle

        class _Inbound(WorkflowInboundInterceptor):
            deny_count = 0

            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(_Outbound(outbound, self))

            async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
                info = temporalio.workflow.info()
                updates: list[SearchAttributeUpdate[Any]] = [DENY_COUNT.value_set(0)]
                capability_id = owner.capability_of(info.workflow_id, info.run_id)
                if capability_id is not None:
                    updates.insert(0, CAPABILITY_ID.value_set(capability_id))
                temporalio.workflow.upsert_search_attributes(updates)
                # ChioPendingApproval follows the run's approval waits (chio_temporal._approvals)
                ApprovalWaits.for_this_run().listeners.append(set_pending_approval)
                return await super().execute_workflow(input)

            def count_if_denied(self, handle: Any) -> None:
                # Runs in the workflow's event loop when the activity resolves (same point on replay).
                if handle.cancelled() or not _is_chio_deny(handle.exception()):
                    return
                self.deny_count += 1
                temporalio.workflow.upsert_search_attributes([DENY_COUNT.value_set(self.deny_count)])

        return _Inbound
