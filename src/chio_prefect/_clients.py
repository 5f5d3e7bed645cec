"""Client resolution for ``@chio_task`` / ``@chio_flow``: a configured client, a sidecar URL, or the default.

A sidecar URL gets one shared ``SidecarClient`` (a ``ChioClient`` that sends idempotency keys) and one
transport over it, so the connection pool is reused across tasks.
"""

from __future__ import annotations

import threading

from chio_sdk.client import ChioClient

from chio_durable import ChioClientLike, KernelTransport, as_transport

__all__ = [
    "DEFAULT_SIDECAR_URL",
    "ClientSpec",
    "client_for_url",
    "clients_by_url",
    "default_transport",
    "transport_for_url",
]

DEFAULT_SIDECAR_URL = "http://127.0.0.1:9090"
"""Where tasks send evaluations when no client is configured anywhere (seed 000's default)."""

clients_by_url: dict[str, ChioClient] = {}
_transports_by_url: dict[str, KernelTransport] = {}
_clients_lock = threading.Lock()


def client_for_url(url: str) -> ChioClient:
    """One shared ``SidecarClient`` (a ``ChioClient`` that sends idempotency keys) per sidecar URL.

    Its connection pool is reused across tasks.
    """
    from chio_kernel._client import SidecarClient  # lazy: keeps ``import chio_prefect`` light

    with _clients_lock:
        client = clients_by_url.get(url)
        if client is None:
            client = clients_by_url[url] = SidecarClient(url)
        return client


def transport_for_url(url: str) -> KernelTransport:
    """The one transport per sidecar URL, over its shared ``SidecarClient``."""
    transport = _transports_by_url.get(url)
    if transport is None:
        client = client_for_url(url)
        with _clients_lock:
            transport = _transports_by_url.setdefault(url, as_transport(client))
    return transport


def default_transport() -> KernelTransport:
    """The transport of the default sidecar (:data:`DEFAULT_SIDECAR_URL`, read at call time)."""
    return transport_for_url(DEFAULT_SIDECAR_URL)


class ClientSpec:
    """A client as configured on a decorator: its transport (chosen here, once), a sidecar URL, or nothing."""

    def __init__(self, client: ChioClientLike | None = None, sidecar_url: str | None = None) -> None:
        self.transport: KernelTransport | None = as_transport(client) if client is not None else None
        self.sidecar_url = sidecar_url

    @property
    def configured(self) -> bool:
        """Whether the decorator named a client or a sidecar URL."""
        return self.transport is not None or self.sidecar_url is not None

    def resolve(self) -> KernelTransport | None:
        """The configured transport, else the shared one of the sidecar URL, else ``None``."""
        if self.transport is not None:
            return self.transport
        if self.sidecar_url is not None:
            return transport_for_url(self.sidecar_url)
        return None
