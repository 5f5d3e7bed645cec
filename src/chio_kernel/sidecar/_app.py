"""The Starlette app: one route table of module-level handlers; the kernel and the settings they
read live on ``app.state`` (``kernel``, ``store_errors``, ``health``, ``evaluate_inline``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from chio_kernel._kernel import Kernel
from chio_kernel._postgres_store import is_postgres_dsn, mask_dsn
from chio_kernel.sidecar._approvals import ROUTES as APPROVAL_ROUTES
from chio_kernel.sidecar._budgets import ROUTES as BUDGET_ROUTES
from chio_kernel.sidecar._http_requests import ROUTES as HTTP_REQUEST_ROUTES
from chio_kernel.sidecar._routes_capabilities import ROUTES as CAPABILITY_ROUTES
from chio_kernel.sidecar._routes_receipts import ROUTES as RECEIPT_ROUTES, evaluate_direct
from chio_kernel.sidecar._auth import BearerAuth, bearer_ok
from chio_kernel.sidecar._errors import endpoint, http_exception, store_errors
from chio_kernel.sidecar._responses import json_response

__all__ = ["ROUTES", "SidecarApp", "create_app"]


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("chio-durable")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "0+unknown"


def _store_info(kernel: Any) -> dict[str, str]:
    """``/chio/health``'s store fields: ``store`` = ``"sqlite"`` or ``"postgresql"``, and for
    PostgreSQL ``store_url`` with the password masked (``PostgresKernel.store``)."""
    url = getattr(kernel, "store", None)
    if isinstance(url, str) and is_postgres_dsn(url):
        return {"store": "postgresql", "store_url": mask_dsn(url)}
    return {"store": "sqlite"}


@endpoint
async def health(request: Request) -> Response:
    return json_response(request.app.state.health)


ROUTES: list[Route] = [  # no two routes match the same path and method, so the order is speed only
    *RECEIPT_ROUTES,  # /v1/evaluate first
    Route("/chio/health", health, methods=["GET"]),
    *HTTP_REQUEST_ROUTES,
    *CAPABILITY_ROUTES,
    *APPROVAL_ROUTES,
    *BUDGET_ROUTES,
]


class SidecarApp(Starlette):
    """The Starlette app, with one shortcut: ``POST /v1/evaluate`` (the hot path) goes straight to its
    handler, without the router and Starlette's middleware, which add nothing there: the handler
    maps every exception to an answer itself and the path needs no routing. The shortcut is taken
    only when the app has no middleware but the sidecar's own bearer check, and (with a token) only
    for a request that passes it; anything else goes the ordinary way, which answers the same."""

    _direct = False
    _token: bytes | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # built once, on the first request (Starlette refuses middleware added after that)
        self._direct = all(cast(Any, m.cls) is BearerAuth for m in self.user_middleware)
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if (
            self._direct
            and scope["type"] == "http"
            and scope["path"] == "/v1/evaluate"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and (self._token is None or bearer_ok(scope["headers"], self._token))
        ):
            await evaluate_direct(self, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    kernel: Any | None = None,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
) -> SidecarApp:
    """Build the sidecar ASGI app around a kernel.

    Args:
        kernel: the kernel to serve (default: a new ``Kernel(data_dir)``).
        data_dir: the data directory of the new kernel; ignored when ``kernel`` is given.
        token: when given, every request must carry ``Authorization: Bearer <token>``.

    Returns:
        The Starlette app, ready for uvicorn (or ``httpx.ASGITransport`` in tests).
    """
    if kernel is None:
        kernel = Kernel(data_dir=data_dir)
    app = SidecarApp(routes=ROUTES, exception_handlers={HTTPException: http_exception})
    store = _store_info(kernel)
    app.state.kernel = kernel
    app.state.store_errors = store_errors(kernel)
    app.state.health = {"status": "ok", "kernel_key": kernel.public_key_hex, "version": _version(), **store}
    # the SQLite kernel decides /v1/evaluate on the event loop, the calls of one loop turn in one
    # transaction (group commit): a batch takes ~60 µs per call, less than a hop to a thread costs.
    # Anything else (the PostgreSQL fleet kernel, whose commit is a network round trip under the
    # fleet's writer lock; a wrapped kernel) is called in the thread pool.
    app.state.evaluate_inline = type(kernel) is Kernel and store["store"] == "sqlite"
    if token:
        app.add_middleware(BearerAuth, token=token)
        app._token = token.encode()
    return app
