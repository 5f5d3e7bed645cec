"""Running the sidecar: uvicorn with a header-read timeout, and ``serve``."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any



__all__ = ["header_timeout_protocol", "serve"]


from chio_kernel.sidecar import (  # the package defines these before it imports this module
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_PENDING_HEADERS,
    DEFAULT_PORT,
    SidecarConfigError,
    check_bind,
    create_app,
)

log = logging.getLogger("chio_kernel.sidecar")


# --- running it -------------------------------------------------------------------------------


def header_timeout_protocol(
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_pending: int = DEFAULT_MAX_PENDING_HEADERS,
) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol plus a header-read timeout and a cap on connections waiting for headers.

    uvicorn has neither: its keep-alive timer stops at the first byte received, so a client that
    trickles a header byte now and then holds a connection (and a file descriptor) forever. Here a
    connection must deliver a request's complete headers within ``header_timeout`` seconds of
    starting to wait for one (on connecting, and after each response), else it is closed; and when
    more than ``max_pending`` connections wait at once, the one waiting longest is closed.

    This is the one adapter over uvicorn's protocol class (``uvicorn.protocols.http.h11_impl``): it
    overrides the ``asyncio.Protocol`` callbacks and ``on_response_complete``, and reads the request
    state from the connection's ``h11.Connection`` (``conn.their_state``, public h11 API). It
    raises ``RuntimeError`` if those hooks are missing, and :func:`serve` probes an instance before
    binding, so a uvicorn that moved them refuses to start instead of serving without the timeout.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    missing = [n for n in ("connection_made", "connection_lost", "data_received", "on_response_complete")
               if not callable(getattr(H11Protocol, n, None))]
    if missing:
        raise RuntimeError(
            f"uvicorn's H11Protocol lacks {missing}; the sidecar's header-read timeout cannot be installed "
            "(install a uvicorn version within chio-durable's tested range)"
        )
    if not header_timeout > 0 or max_pending < 1:
        raise SidecarConfigError("header_timeout must be > 0 seconds and max_pending >= 1")
    # connections waiting for headers, longest-waiting first (dicts keep insertion order)
    waiting: dict[Any, asyncio.TimerHandle] = {}

    class HeaderTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows BaseProtocol's type
            self._chio_wait()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self in waiting and self._chio_headers_read():
                self._chio_done()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._chio_headers_read():
                self._chio_wait()  # waiting for the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._chio_done()
            super().connection_lost(exc)

        def _chio_headers_read(self) -> bool:
            # h11 leaves IDLE once a request's headers are complete (SEND_BODY / DONE / ...)
            return self.conn.their_state is not h11.IDLE

        def _chio_wait(self) -> None:
            self._chio_done()
            waiting[self] = asyncio.get_running_loop().call_later(header_timeout, self._chio_expire)
            if len(waiting) > max_pending:
                next(iter(waiting))._chio_expire()

        def _chio_done(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()

        def _chio_expire(self) -> None:
            self._chio_done()
            if not self.transport.is_closing():
                log.debug("closing a connection that sent no complete request headers in time")
                self.transport.close()

    HeaderTimeoutH11Protocol.__qualname__ = HeaderTimeoutH11Protocol.__name__
    return HeaderTimeoutH11Protocol


def _probe_protocol(protocol: type[asyncio.Protocol], config: Any) -> None:
    """Build one protocol instance as uvicorn would and check the state the timeout reads exists."""
    import h11
    from uvicorn.server import ServerState

    async def build() -> Any:  # inside a running loop, as uvicorn builds it
        return protocol(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]

    probe = asyncio.run(build())
    if not isinstance(getattr(probe, "conn", None), h11.Connection):
        raise RuntimeError(
            "uvicorn's H11Protocol no longer keeps its h11.Connection in .conn; the sidecar's header-read "
            "timeout cannot work, so it refuses to start (install a uvicorn version within chio-durable's "
            "tested range)"
        )


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
    log_level: str = "warning",
    on_ready: Callable[[Any], None] | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_pending_headers: int = DEFAULT_MAX_PENDING_HEADERS,
) -> None:
    """Run the sidecar until interrupted. Raises :class:`SidecarConfigError` before binding if the
    configuration is refused (non-loopback host without a token), and
    :class:`chio_kernel._kernel.KernelKeyMissingError` if the data directory's store lost its key,
    ``KernelKeyRetiredError`` if the kernel's key was retired from its fleet store.

    ``header_timeout`` / ``max_pending_headers``: see :func:`header_timeout_protocol`."""
    import uvicorn

    check_bind(host, token)
    protocol = header_timeout_protocol(header_timeout, max_pending_headers)
    from chio_kernel._kernel import Kernel

    kernel = Kernel(data_dir=data_dir)
    check_key_active = getattr(kernel, "check_key_active", None)  # a fleet kernel: is its key still active?
    if check_key_active is not None:
        try:
            check_key_active()  # raises KernelKeyRetiredError: serving would answer every write with 503
        except BaseException:
            kernel.close()
            raise
    app = create_app(kernel, token=token)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        date_header=False,
        http=protocol,
    )
    config.load()
    _probe_protocol(protocol, config)
    server = uvicorn.Server(config)
    # bind here, not in uvicorn: a taken port becomes one clear error, and "listening" is printed
    # only once the port is really ours
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # then (with proto 0 every response waits ~40 ms on Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise SidecarConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    if on_ready is not None:
        on_ready(kernel)
    server.run(sockets=[sock])
