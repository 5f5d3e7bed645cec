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
from starlette.routing import Route

from chio_kernel._kernel import Kernel
from chio_kernel._postgres_store import is_postgres_dsn, mask_dsn
from chio_kernel.sidecar._approvals import ROUTES as APPROVAL_ROUTES
from chio_kernel.sidecar._budgets import ROUTES as BUDGET_ROUTES
from chio_kernel.sidecar._http_requests import ROUTES as HTTP_REQUEST_ROUTES
from chio_kernel.sidecar._routes_capabilities import ROUTES as CAPABILITY_ROUTES
from chio_kernel.sidecar._routes_receipts import ROUTES as RECEIPT_ROUTES
from chio_kernel.sidecar._auth import BearerAuth
from chio_kernel.sidecar._errors import endpoint, http_exception, store_errors
from chio_kernel.sidecar._responses import json_response

__all__ = ["ROUTES", "create_app"]


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


def create_app(
    kernel: Any | None = None,
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
) -> Starlette:
    """Build the sidecar ASGI app around ``kernel`` (or a new ``Kernel(data_dir)``).

    With ``token`` every request must carry ``Authorization: Bearer <token>``.
    """
    if kernel is None:
        kernel = Kernel(data_dir=data_dir)
    app = Starlette(routes=ROUTES, exception_handlers={HTTPException: http_exception})
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
    return app
