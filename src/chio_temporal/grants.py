"""``WorkflowGrant``: a capability token pinned to a Temporal workflow id (and optionally one run).

Also the few kernel calls the Temporal layer makes besides evaluation (attenuate, mint, fetch by
id), written once for the three client kinds the project accepts: the real ``chio_sdk.ChioClient``
(remote sidecar; driven on the evaluation core's kernel loop, which owns its connections), our
``chio_kernel.LocalChioClient`` and the ``chio_sdk.testing`` mocks (called directly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from chio_sdk.errors import ChioError, ChioValidationError
from chio_sdk.models import CapabilityToken, ChioScope

from chio_durable import ChioClientLike, as_transport, client_url
from chio_durable._engine import EmbeddedTransport, HttpTransport
from chio_temporal.errors import ChioTemporalConfigError, ChioTemporalError

__all__ = ["WorkflowGrant", "fetch_capability", "mint_capability"]

T = TypeVar("T")


@dataclass(frozen=True)
class WorkflowGrant:
    """A capability token pinned to a Temporal ``workflow_id``.

    Attributes:
        workflow_id: the Temporal workflow id (or, for a prefix grant, the id prefix).
        token: the capability token.
        tool_server: the chio tool server the workflow's activities are evaluated against unless the
            interceptor's ``activity_tool_server_map`` names one for the activity type (see
            docs/temporal.md); None falls back to the interceptor's ``default_tool_server``.
        run_id: None makes the grant apply to every run of the workflow id (retries,
            continue-as-new, resets); a run id pins it to one execution and wins over an unpinned
            grant for that run.
    """

    workflow_id: str
    token: CapabilityToken
    tool_server: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workflow_id, str) or not self.workflow_id:
            raise ChioTemporalConfigError(
                f"WorkflowGrant needs workflow_id= the Temporal workflow id (a non-empty str), got {self.workflow_id!r}"
            )
        if not isinstance(self.token, CapabilityToken):
            raise ChioTemporalConfigError(
                "WorkflowGrant needs token= a chio_sdk.models.CapabilityToken "
                "(from `await chio.create_capability(...)`), "
                f"got {type(self.token).__name__}"
            )

    @property
    def capability_id(self) -> str:
        """The id of the grant's capability token (what every evaluation names)."""
        return self.token.id

    @property
    def scope(self) -> ChioScope:
        return self.token.scope

    def covers(self, other: WorkflowGrant) -> bool:
        """Tell whether another grant's scope is a subset of this grant's scope.

        Args:
            other: the grant to check.

        Returns:
            True if it is a subset.
        """
        return other.token.scope.is_subset_of(self.token.scope)

    async def attenuate_for_activity(
        self,
        chio: ChioClientLike,
        *,
        new_scope: ChioScope,
        tool_server: str | None = None,
    ) -> WorkflowGrant:
        """Mint a child grant with a strictly narrower scope through the kernel.

        The child keeps this grant's ``workflow_id`` and ``run_id``.

        Args:
            chio: the client of the kernel that issued this grant.
            new_scope: the child's scope; must be a subset of this grant's scope (checked before the
                kernel is asked; the kernel checks again).
            tool_server: the child's tool server (default: this grant's).

        Returns:
            The child grant.

        Raises:
            ChioTemporalConfigError: ``new_scope`` is not a subset, or the kernel refused it.
        """
        if not isinstance(new_scope, ChioScope):
            raise ChioTemporalConfigError(
                f"attenuate_for_activity needs new_scope= a chio_sdk.models.ChioScope, got {type(new_scope).__name__}"
            )
        if not new_scope.is_subset_of(self.token.scope):
            raise ChioTemporalConfigError(
                f"new_scope is not a subset of the scope of capability {self.token.id!r} granted to workflow "
                f"{self.workflow_id!r}: an attenuated grant may only narrow (same or fewer tools, servers, "
                f"operations; same or more constraints). Requested {_describe(new_scope)}; "
                f"granted {_describe(self.token.scope)}."
            )
        try:
            transport = as_transport(chio)
            remote: Any = transport.client
            if isinstance(transport, EmbeddedTransport) and remote is transport.kernel:  # a bare Kernel
                child = transport.kernel.attenuate_capability(self.token, new_scope)
            else:
                child = await transport.run(lambda: remote.attenuate_capability(self.token, new_scope=new_scope))
        except ChioValidationError as err:
            raise ChioTemporalConfigError(f"the kernel refused to attenuate {self.token.id!r}: {err}") from err
        except ChioError as err:
            raise ChioTemporalError(
                f"could not attenuate capability {self.token.id!r} through the kernel at {client_url(chio)}: {err}"
            ) from err
        except Exception as err:
            if type(err).__name__ == "CapabilityError":  # the embedded kernel's refusal
                raise ChioTemporalConfigError(f"the kernel refused to attenuate {self.token.id!r}: {err}") from err
            raise
        return replace(self, token=child, tool_server=tool_server if tool_server is not None else self.tool_server)


def _describe(scope: ChioScope) -> str:
    tools = [f"{g.server_id}/{g.tool_name}[{','.join(op.value for op in g.operations)}]" for g in scope.grants]
    return "{" + ", ".join(tools) + "}"


async def call_client(client: ChioClientLike, make_call: Callable[[], Awaitable[T]]) -> T:
    """Await one client call through the client's transport (a remote one runs it on the kernel loop)."""
    return await as_transport(client).run(make_call)


async def mint_capability(client: ChioClientLike, *, subject: str, scope: ChioScope, ttl_seconds: int) -> CapabilityToken:
    """Issue a capability on the kernel behind a client, whatever its transport.

    Args:
        client: a Chio client.
        subject: who the token is for.
        scope: the grants it carries.
        ttl_seconds: how long it is valid from now.

    Returns:
        The signed token.
    """
    transport = as_transport(client)
    if isinstance(transport, EmbeddedTransport):
        return transport.kernel.create_capability(subject=subject, scope=scope, ttl_seconds=ttl_seconds)
    remote: Any = transport.client
    token: CapabilityToken = await transport.run(
        lambda: remote.create_capability(subject=subject, scope=scope, ttl_seconds=ttl_seconds)
    )
    return token


async def fetch_capability(client: ChioClientLike, capability_id: str) -> CapabilityToken:
    """Fetch the token of an already-minted capability from the kernel behind a client.

    ``LocalChioClient`` / the embedded kernel answer directly; ``chio_kernel.SidecarClient`` asks
    the sidecar's ``GET /v1/capabilities/{id}``.

    Args:
        client: a Chio client.
        capability_id: the capability's id.

    Returns:
        The token.

    Raises:
        ChioTemporalConfigError: an unknown id, or a client that cannot look tokens up (a stock
            ``ChioClient`` or a mock: pass ``scope=``/``subject=`` instead).
    """
    transport = as_transport(client)
    token: Any = None
    if isinstance(transport, EmbeddedTransport):
        token = transport.kernel.get_capability(capability_id)
    elif isinstance(transport, HttpTransport) and transport.sends_idempotency_keys:  # chio_kernel.SidecarClient
        sidecar: Any = transport.client  # a chio_kernel.SidecarClient
        token = await transport.run(lambda: sidecar.get_capability(capability_id))
    else:
        raise ChioTemporalConfigError(
            f"{type(client).__name__} cannot look up capability {capability_id!r} by id (a stock chio_sdk.ChioClient "
            "has no such call); use chio_kernel.SidecarClient(url) or LocalChioClient, or pass scope=, subject= "
            "and ttl_seconds= so a capability is minted"
        )
    if token is None:
        raise ChioTemporalConfigError(
            f"capability {capability_id!r} is not known to the kernel at {client_url(client)}; mint it first "
            "(`chio-durable capability create` / `await chio.create_capability(...)`) or pass scope=, subject=, "
            "ttl_seconds= instead of capability_id="
        )
    if isinstance(token, CapabilityToken):
        return token
    return CapabilityToken.model_validate(token)
