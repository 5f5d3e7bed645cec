"""Running the sidecar: uvicorn with a header-read timeout, the fastest HTTP stack installed, ``serve``.

With the ``fast`` extra (``httptools``, ``uvloop``) installed, the sidecar serves with uvicorn's
httptools parser on a uvloop event loop; otherwise with h11 on asyncio. ``/chio/health`` says which
(``"server": {"http": ..., "loop": ...}``). Either way the header-read timeout below applies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chio_kernel._webhooks import WebhookSettings
from chio_kernel.inbox._app import InboxSettings
from chio_kernel.inbox._server import start_deliverer
from chio_kernel.sidecar._app import create_app
from chio_kernel.sidecar._auth import check_bind
from chio_kernel.sidecar._config import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_PENDING_HEADERS,
    DEFAULT_PORT,
)
from chio_kernel.sidecar._errors import SidecarConfigError

__all__ = ["header_timeout_protocol", "serve", "server_stack"]

log = logging.getLogger("chio_kernel.sidecar")

#: The sidecar process's GIL switch interval in seconds (CPython's default is 0.005).
SWITCH_INTERVAL = 0.0001
_HOOKS = ("connection_made", "connection_lost", "data_received", "on_response_complete")


def server_stack() -> dict[str, str]:
    """``{"http": "httptools" | "h11", "loop": "uvloop" | "asyncio"}``: what :func:`serve` will use
    (httptools / uvloop when importable: ``pip install 'chio-durable[fast]'``)."""
    def has(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    return {
        "http": "httptools" if has("httptools") else "h11",
        "loop": "uvloop" if has("uvloop") else "asyncio",
    }


class _HeaderDeadlines:
    """Connections waiting for request headers, each with its deadline, and ONE timer for them all.

    The timeout is the same for every connection, so insertion order is deadline order: the dict
    (re-inserted on every wait) is a queue whose front expires first, and a single timer set for the
    front's deadline sweeps it. Waiting costs a dict insert per request instead of a timer handle.

    The cap on waiting connections closes the longest-waiting of those that owe a request head: a new
    connection, or a kept-alive one that started sending its next head. A kept-alive connection idle
    since its last response (no byte of a next request) is never closed for the cap: a client may
    send on it at any moment, and closing it then resets a real request. It still closes at its
    deadline, like any keep-alive timeout."""

    def __init__(self, timeout: float, max_pending: int) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.waiting: dict[Any, float] = {}  # protocol -> deadline (loop time), earliest first
        self.owing: dict[Any, None] = {}  # the waiting ones the cap may close, longest-waiting first
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the timer is on

    def wait(self, proto: Any, *, idle: bool = False) -> None:
        """``proto`` waits for a request head; ``idle``: a kept-alive connection after a response."""
        self.waiting.pop(proto, None)
        loop = asyncio.get_running_loop()
        self.waiting[proto] = loop.time() + self.timeout
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(self.waiting[next(iter(self.waiting))], self._sweep)
        self.owing.pop(proto, None)
        if not idle:
            self._owe(proto)

    def started(self, proto: Any) -> None:
        """Bytes of a request head arrived on ``proto``: an idle kept-alive connection now owes its head."""
        if proto in self.waiting and proto not in self.owing:
            self._owe(proto)

    def _owe(self, proto: Any) -> None:
        self.owing[proto] = None
        if len(self.owing) > self.max_pending:
            self.expire(next(iter(self.owing)))

    def done(self, proto: Any) -> None:
        self.waiting.pop(proto, None)
        self.owing.pop(proto, None)

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.waiting:
            proto, deadline = next(iter(self.waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._sweep)
                return
            self.expire(proto)

    def expire(self, proto: Any) -> None:
        self.done(proto)
        if not proto.transport.is_closing():
            log.debug("closing a connection that sent no complete request headers in time")
            proto.transport.close()


def _h11_protocol(deadlines: _HeaderDeadlines) -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        # h11 leaves IDLE once a request's headers are complete (SEND_BODY / DONE / ...)
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows BaseProtocol's type
            deadlines.wait(self)

        def data_received(self, data: bytes) -> None:
            if data:
                deadlines.started(self)
            super().data_received(data)
            if self in deadlines.waiting and self.conn.their_state is not h11.IDLE:
                deadlines.done(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                deadlines.wait(self, idle=True)  # waiting for the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            deadlines.done(self)
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def _httptools_protocol(deadlines: _HeaderDeadlines) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutHttpToolsProtocol(HttpToolsProtocol):
        # requests whose headers are complete and whose response is not: none -> waiting for headers
        _chio_in_flight = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows BaseProtocol's type
            deadlines.wait(self)

        def data_received(self, data: bytes) -> None:
            if data:
                deadlines.started(self)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._chio_in_flight += 1
            deadlines.done(self)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._chio_in_flight = max(0, self._chio_in_flight - 1)
            super().on_response_complete()
            if not self.transport.is_closing() and not self._chio_in_flight:
                deadlines.wait(self, idle=True)  # waiting for the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            deadlines.done(self)
            super().connection_lost(exc)

    return HeaderTimeoutHttpToolsProtocol


def header_timeout_protocol(
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_pending: int = DEFAULT_MAX_PENDING_HEADERS,
    http: str = "h11",
) -> type[asyncio.Protocol]:
    """Build uvicorn's HTTP protocol with a header-read timeout and a cap on connections waiting for headers.

    uvicorn has neither: its keep-alive timer stops at the first byte received, so a client that
    trickles a header byte now and then holds a connection (and a file descriptor) forever. Here a
    connection must deliver a request's complete headers within ``header_timeout`` seconds of
    starting to wait for one (on connecting, and after each response), else it is closed; and when
    more than ``max_pending`` connections owe a request head at once (new, or kept alive and part-way
    through their next head), the one waiting longest is closed. A kept-alive connection idle since
    its last response is never closed for that cap (only at its deadline).

    This is the one adapter over uvicorn's protocol classes: it overrides the ``asyncio.Protocol``
    callbacks and ``on_response_complete`` (and, for httptools, the parser's ``on_headers_complete``);
    for h11 it reads the request state from ``conn.their_state`` (public h11 API). :func:`serve`
    probes an instance before binding, so a uvicorn that moved these hooks refuses to start instead
    of serving without the timeout.

    Args:
        header_timeout: seconds a connection has to deliver a request's complete headers.
        max_pending: connections allowed to wait for headers at once.
        http: uvicorn's protocol to extend, ``"h11"`` or ``"httptools"``.

    Returns:
        The protocol class, to pass as ``uvicorn.Config(http=...)``.

    Raises:
        SidecarConfigError: ``http`` is neither ``"h11"`` nor ``"httptools"``.
        RuntimeError: the installed uvicorn lacks the hooks this adapter overrides.
    """
    hooks: tuple[str, ...] = _HOOKS
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        hooks = (*_HOOKS, "on_headers_complete")
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    else:
        raise SidecarConfigError(f"http must be 'h11' or 'httptools', got {http!r}")
    missing = [n for n in hooks if not callable(getattr(base, n, None))]
    if missing:
        raise RuntimeError(
            f"uvicorn's {base.__name__} lacks {missing}; the sidecar's header-read timeout cannot be installed "
            "(install a uvicorn version within chio-durable's tested range)"
        )
    if not header_timeout > 0 or max_pending < 1:
        raise SidecarConfigError("header_timeout must be > 0 seconds and max_pending >= 1")
    deadlines = _HeaderDeadlines(header_timeout, max_pending)
    return _httptools_protocol(deadlines) if http == "httptools" else _h11_protocol(deadlines)


def _probe_protocol(protocol: type[asyncio.Protocol], config: Any) -> None:
    """Build one protocol instance as uvicorn would and check the state the timeout reads exists."""
    import h11
    from uvicorn.server import ServerState

    async def build() -> Any:  # inside a running loop, as uvicorn builds it
        return protocol(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]

    probe = asyncio.run(build())
    if hasattr(probe, "_chio_in_flight"):  # httptools: the parser must call back into the protocol
        ok = getattr(probe, "parser", None) is not None
    else:
        ok = isinstance(getattr(probe, "conn", None), h11.Connection)
    if not ok:
        raise RuntimeError(
            f"uvicorn's {type(probe).__mro__[1].__name__} no longer keeps the parser state the sidecar's "
            "header-read timeout reads; it refuses to start (install a uvicorn version within "
            "chio-durable's tested range)"
        )


def _open_kernel(data_dir: str | Path | None) -> Any:
    """The kernel to serve; a fleet kernel whose key was retired is refused before binding."""
    from chio_kernel._kernel import Kernel

    kernel = Kernel(data_dir=data_dir)
    check_key_active = getattr(kernel, "check_key_active", None)  # a fleet kernel: is its key still active?
    if check_key_active is not None:
        try:
            check_key_active()  # raises KernelKeyRetiredError: serving would answer every write with 503
        except BaseException:
            kernel.close()
            raise
    return kernel


def _bind(host: str, port: int) -> socket.socket:
    """Bind here, not in uvicorn: a taken port becomes one clear error, and "listening" is printed
    only once the port is really ours."""
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
    return sock


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
    auth: str | None = None,
    log_level: str = "warning",
    on_ready: Callable[[Any], None] | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_pending_headers: int = DEFAULT_MAX_PENDING_HEADERS,
    otel: bool = False,
    inbox: InboxSettings | None = None,
    webhooks: WebhookSettings | None = None,
) -> None:
    """Run the sidecar until interrupted.

    Args:
        host: the address to bind (a non-loopback one needs ``auth="roles"`` or ``token``).
        port: the TCP port.
        data_dir: the kernel's data directory (default ``$CHIO_HOME`` or ``~/.chio-durable``).
        token: the one bearer token of token mode (its holder is the operator), or None.
        auth: ``"roles"``, ``"open"`` or None (see ``create_app``; docs/security.md).
        log_level: uvicorn's log level.
        on_ready: called with the opened kernel once the socket is bound, before serving.
        header_timeout: see :func:`header_timeout_protocol`.
        max_pending_headers: see :func:`header_timeout_protocol` (``max_pending``).
        otel: export a span per request and the request latency over OTLP (``OTEL_EXPORTER_OTLP_*``),
            and trace the kernel's approval answers (docs/observability.md).
        inbox: the engine links of the inbox at ``/ui`` (docs/inbox.md).
        webhooks: send pending approvals to these URLs (the deliverer runs in this process; docs/inbox.md).

    Raises:
        SidecarConfigError: the configuration is refused before binding (open mode on a non-loopback
            host, an unknown mode, a mode that takes no token given one).
        KernelKeyMissingError: the data directory's store lost its key.
        KernelKeyRetiredError: the kernel's key was retired from its fleet store.
        TelemetryMissing: ``otel`` without the ``otel`` extra (one line naming the install command).
    """
    import uvicorn

    if otel:
        from chio_kernel._telemetry import configure_otlp, instrument_kernel

        configure_otlp()
        instrument_kernel()

    check_bind(host, token, auth)
    stack = server_stack()
    protocol = header_timeout_protocol(header_timeout, max_pending_headers, http=stack["http"])
    kernel = _open_kernel(data_dir)
    app = create_app(kernel, token=token, auth=auth, inbox=inbox)
    app.state.health = {**app.state.health, "server": stack}
    asgi: Any = app
    if otel:
        from chio_kernel._telemetry import request_telemetry

        asgi = request_telemetry(app)  # outermost: every request, its latency, whatever answers it
    config = uvicorn.Config(
        asgi, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
        server_header=False, date_header=False, http=protocol, loop=stack["loop"],
        proxy_headers=False,  # loopback, no proxy in front: nothing to rewrite
    )
    config.load()
    _probe_protocol(protocol, config)
    server = uvicorn.Server(config)
    # Evaluations run on the event loop; listings in worker threads. A thread asking for the GIL
    # waits for the holder's switch interval: at CPython's 5 ms a page of a listing would hold an
    # evaluation up for several of them, so hand the GIL over 50x sooner (0.1 ms; docs/sidecar.md).
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = _bind(host, port)
    if on_ready is not None:
        on_ready(kernel)
    deliverer = start_deliverer(kernel, webhooks)
    try:
        server.run(sockets=[sock])
    finally:
        if deliverer is not None:
            deliverer.stop()
