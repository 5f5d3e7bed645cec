"""The Starlette app: one route table of module-level handlers; the kernel and the settings they
read live on ``app.state`` (``kernel``, ``store_errors``, ``health``, ``evaluate_inline``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from chio_kernel._kernel import Kernel
from chio_kernel._postgres_store import is_postgres_dsn, mask_dsn
from chio_kernel.inbox._app import InboxSettings, create_inbox_app
from chio_kernel.sidecar._approvals import ROUTES as APPROVAL_ROUTES
from chio_kernel.sidecar._budgets import ROUTES as BUDGET_ROUTES
from chio_kernel.sidecar._checkpoints import ROUTES as CHECKPOINT_ROUTES
from chio_kernel.sidecar._http_requests import ROUTES as HTTP_REQUEST_ROUTES
from chio_kernel.sidecar._routes_capabilities import ROUTES as CAPABILITY_ROUTES
from chio_kernel.sidecar._routes_receipts import ROUTES as RECEIPT_ROUTES, evaluate
from chio_kernel.sidecar._auth import ALL_ROLES, Authenticator, admits, check_bind
from chio_kernel.sidecar._errors import endpoint, http_exception, store_errors
from chio_kernel.sidecar._responses import error_response, json_response

__all__ = ["INBOX_MOUNT", "ROUTES", "SidecarApp", "create_app"]

#: Where the sidecar serves the approvals inbox.
INBOX_MOUNT = "/ui"
_UI_LEN = len(INBOX_MOUNT)


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
@admits(*ALL_ROLES)
async def health(request: Request) -> Response:
    return json_response(request.app.state.health)


ROUTES: list[Route] = [  # no two routes match the same path and method, so the order is speed only
    *RECEIPT_ROUTES,  # /v1/evaluate first
    Route("/chio/health", health, methods=["GET"]),
    *HTTP_REQUEST_ROUTES,
    *CAPABILITY_ROUTES,
    *CHECKPOINT_ROUTES,
    *APPROVAL_ROUTES,
    *BUDGET_ROUTES,
]


class SidecarApp(Starlette):
    """The Starlette app. Every HTTP request is authenticated first (``_auth.Authenticator``: 401, or
    its principal on ``request.state.principal``); then one shortcut: ``POST /v1/evaluate`` (the hot
    path) goes straight to its handler, without the router and Starlette's middleware, which add
    nothing there: the handler maps every exception to an answer itself and the path needs no
    routing. The shortcut is taken only when the app has no user middleware; anything else goes the
    ordinary way, which answers the same."""

    _direct = False
    auth: Authenticator
    #: The approvals inbox at ``/ui`` (chio_kernel.inbox): a browser signs in there with its own
    #: credential, so it is served before the sidecar's bearer check, which a browser cannot pass.
    _ui: Router | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # built once, on the first request (Starlette refuses middleware added after that)
        self._direct = not self.user_middleware
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        path = scope.get("path", "")
        if path.startswith(INBOX_MOUNT) and path[_UI_LEN:_UI_LEN + 1] in ("", "/") and self._ui is not None:
            scope["app"] = self
            await self._ui(scope, receive, send)
            return
        if scope["type"] == "http":
            try:
                principal = self.auth.principal(scope["headers"])
            except self.state.store_errors as err:  # the credential could not be looked up: nothing decided
                message = f"the credential store could not be used ({err}); retry"
                await error_response(503, "store_unavailable", message)(scope, receive, send)
                return
            if principal is None:
                await self.auth.refuse(scope, receive, send)
                return
            state = scope.get("state")
            if state is None:
                scope["state"] = {"principal": principal}
            else:
                state["principal"] = principal
            if (
                self._direct
                and scope["path"] == "/v1/evaluate"
                and scope["method"] == "POST"
                and not scope.get("root_path")
            ):
                scope["app"] = self
                response = await evaluate(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    kernel: Any | None = None,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
    auth: str | None = None,
    inbox: InboxSettings | None = None,
) -> SidecarApp:
    """Build the sidecar ASGI app around a kernel.

    Args:
        kernel: the kernel to serve (default: a new ``Kernel(data_dir)``).
        data_dir: the data directory of the new kernel; ignored when ``kernel`` is given.
        token: the one bearer token of ``token`` mode (every request must carry it; its holder is the
            operator).
        auth: ``"roles"`` (every request carries a credential token, each route admits its roles),
            ``"open"``, or None (``token`` mode with a token, else ``open``); docs/security.md.
        inbox: the engine links of the approvals inbox at ``/ui`` (served before the auth check:
            people sign in there with their own credentials; docs/inbox.md).

    Returns:
        The Starlette app, ready for uvicorn (or ``httpx.ASGITransport`` in tests).

    Raises:
        SidecarConfigError: an unknown mode, or ``auth="open"`` / ``"roles"`` with a token.
    """
    mode = check_bind("127.0.0.1", token, auth)  # the host is checked by serve()
    if kernel is None:
        kernel = Kernel(data_dir=data_dir)
    app = SidecarApp(routes=ROUTES, exception_handlers={HTTPException: http_exception})
    app.auth = Authenticator(mode, token, getattr(kernel, "authenticate", lambda _token: None))
    store = _store_info(kernel)
    app.state.kernel = kernel
    app._ui = Router(routes=[Mount(INBOX_MOUNT, app=create_inbox_app(kernel, inbox))])
    app.state.store_errors = store_errors(kernel)
    app.state.health = {
        "status": "ok", "kernel_key": kernel.public_key_hex, "version": _version(), "auth": mode, **store,
    }
    # the SQLite kernel decides /v1/evaluate on the event loop, the calls of one loop turn in one
    # transaction (group commit): a batch takes ~60 µs per call, less than a hop to a thread costs.
    # Anything else (the PostgreSQL fleet kernel, whose commit is a network round trip under the
    # fleet's writer lock; a wrapped kernel) is called in the thread pool.
    app.state.evaluate_inline = type(kernel) is Kernel and store["store"] == "sqlite"
    return app
