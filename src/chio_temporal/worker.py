"""``build_chio_worker``: mint (or fetch) a capability, build the interceptor, register the grant, build the worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chio_sdk.models import ChioScope
from temporalio.client import Client
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from chio_durable import ChioClientLike
from chio_temporal.errors import ChioTemporalConfigError
from chio_temporal.grants import WorkflowGrant, fetch_capability, mint_capability
from chio_temporal.interceptor import ChioActivityInterceptor, ReceiptSink
from chio_temporal._sandbox import with_chio_passed_through
from chio_temporal._search_attributes import ChioSearchAttributes, require_search_attributes

__all__ = ["build_chio_worker"]


async def build_chio_worker(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Callable[..., Any]] = (),
    workflows: Sequence[type] = (),
    chio_client: ChioClientLike,
    workflow_id: str,
    capability_id: str | None = None,
    scope: ChioScope | None = None,
    subject: str | None = None,
    ttl_seconds: int = 3600,
    default_tool_server: str | None = None,
    activity_tool_server_map: Mapping[str, str] | None = None,
    receipt_sink: ReceiptSink | None = None,
    sidecar_url: str | None = None,
    run_id: str | None = None,
    interceptors: Sequence[Interceptor] = (),
    search_attributes: bool = False,
    **worker_kwargs: Any,
) -> tuple[Worker, ChioActivityInterceptor, WorkflowGrant]:
    """Build a governed Temporal ``Worker``, its chio interceptor and the workflow's grant.

    Pass either ``capability_id=`` (an already minted capability; its token is fetched from the
    kernel) or ``scope=`` + ``subject=`` (+ ``ttl_seconds=``) to mint one. The chio interceptor is
    added after any ``interceptors=`` you pass (innermost: nothing runs between the decision and the
    activity body).

    Args:
        client: the Temporal client.
        task_queue: the worker's task queue.
        activities: the activities to run, governed.
        workflows: the workflows to run.
        chio_client: the client of the kernel that evaluates (see :class:`ChioActivityInterceptor`).
        workflow_id: the workflow id the grant is pinned to.
        capability_id: an already minted capability (``LocalChioClient`` directly, a
            ``SidecarClient`` through the sidecar's ``GET /v1/capabilities/{id}``).
        scope: the scope of a capability to mint (with ``subject``).
        subject: who the minted capability is for.
        ttl_seconds: how long the minted capability is valid.
        default_tool_server: the grant's tool server, and the interceptor's fallback.
        activity_tool_server_map: activity type -> tool server id.
        receipt_sink: sync or async callable receiving each flushed ``chio-temporal/v1`` envelope.
        sidecar_url: the kernel's address, named in error messages.
        run_id: pin the grant to one run of ``workflow_id``.
        interceptors: your own worker interceptors (outside the chio one).
        search_attributes: upsert ``ChioCapabilityId`` / ``ChioDenyCount`` on each workflow; the
            namespace is checked first.
        **worker_kwargs: to ``temporalio.worker.Worker``; its ``workflow_runner`` (Temporal's sandbox
            by default) passes chio and ``beartype`` through (docs/temporal.md, "The sandbox").

    Returns:
        ``(worker, interceptor, grant)``.

    Raises:
        ChioTemporalConfigError: bad arguments, an unknown capability, or a search attribute not
            registered (the message names the ``temporal operator search-attribute create`` commands).
    """
    _check_worker_arguments(client, task_queue, workflow_id, chio_client, activities, workflows)
    token = await _capability_token(chio_client, capability_id, scope, subject, ttl_seconds)

    interceptor = ChioActivityInterceptor(
        chio_client=chio_client,
        sidecar_url=sidecar_url,
        default_tool_server=default_tool_server,
        activity_tool_server_map=activity_tool_server_map,
        receipt_sink=receipt_sink,
    )
    grant = WorkflowGrant(workflow_id=workflow_id, token=token, tool_server=default_tool_server, run_id=run_id)
    interceptor.register_workflow_grant(grant)
    extra: list[Interceptor] = []
    if search_attributes:
        await require_search_attributes(client)
        extra.append(ChioSearchAttributes(interceptor))
    runner = with_chio_passed_through(worker_kwargs.pop("workflow_runner", None) or SandboxedWorkflowRunner())
    worker = Worker(
        client, task_queue=task_queue, activities=list(activities), workflows=list(workflows),
        interceptors=[*interceptors, *extra, interceptor], workflow_runner=runner, **worker_kwargs,
    )
    return worker, interceptor, grant


def _check_worker_arguments(
    client: Any, task_queue: Any, workflow_id: Any, chio_client: Any,
    activities: Sequence[Callable[..., Any]], workflows: Sequence[type],
) -> None:
    """Refuse, with what to pass, the arguments a governed worker cannot be built from."""
    if not isinstance(client, Client):
        raise ChioTemporalConfigError(
            "build_chio_worker needs the temporalio Client first: "
            f"`await build_chio_worker(await Client.connect(...), ...)`, got {type(client).__name__}"
        )
    if not isinstance(task_queue, str) or not task_queue:
        raise ChioTemporalConfigError(f"task_queue= must be a non-empty str, got {task_queue!r}")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ChioTemporalConfigError(
            f"workflow_id= must be the id the workflow will be started with (non-empty str), got {workflow_id!r}"
        )
    if chio_client is None:
        raise ChioTemporalConfigError(
            "chio_client= is required: ChioClient('http://127.0.0.1:9090') for the sidecar, or LocalChioClient()"
        )
    if not activities and not workflows:
        raise ChioTemporalConfigError("pass activities= (the functions to govern) and/or workflows=")


async def _capability_token(
    chio_client: ChioClientLike, capability_id: str | None, scope: ChioScope | None, subject: str | None,
    ttl_seconds: int,
) -> Any:
    """The worker's capability token: fetched by ``capability_id``, or minted from ``scope`` + ``subject``."""
    if capability_id is not None and (scope is not None or subject is not None):
        raise ChioTemporalConfigError(
            "pass either capability_id= (reuse a minted capability) or scope= + subject= (mint one), not both"
        )
    if capability_id is not None:
        if not isinstance(capability_id, str) or not capability_id:
            raise ChioTemporalConfigError(f"capability_id= must be a non-empty str, got {capability_id!r}")
        return await fetch_capability(chio_client, capability_id)
    if scope is None or subject is None:
        missing = " and ".join(name for name, value in (("scope=", scope), ("subject=", subject)) if value is None)
        raise ChioTemporalConfigError(
            f"missing {missing}: pass capability_id='cap-...' to reuse a capability, or scope=ChioScope(...) "
            "and subject='agent:my-pipeline' (and ttl_seconds=) to mint one"
        )
    if not isinstance(scope, ChioScope):
        raise ChioTemporalConfigError(f"scope= must be a chio_sdk.models.ChioScope, got {type(scope).__name__}")
    if not isinstance(subject, str) or not subject:
        raise ChioTemporalConfigError(f"subject= must be a non-empty str, got {subject!r}")
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds <= 0:
        raise ChioTemporalConfigError(f"ttl_seconds= must be a positive int, got {ttl_seconds!r}")
    return await mint_capability(chio_client, subject=subject, scope=scope, ttl_seconds=ttl_seconds)
