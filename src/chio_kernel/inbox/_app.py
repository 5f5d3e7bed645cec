"""The inbox's Starlette app: the routes of ``_views``, the templates, the static files and the
security headers every answer carries (docs/inbox.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chio_kernel.inbox._present import EngineLinks
from chio_kernel.inbox._session import Sessions
from chio_kernel.inbox._views import ROUTES_SPEC

__all__ = ["CSP", "InboxSettings", "create_inbox_app"]

_HERE = Path(__file__).parent
#: No inline script or style, nothing from another origin, no framing, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class InboxSettings:
    """How the inbox links out and how long a sign-in lasts.

    Args:
        temporal_ui: the Temporal UI's address (``http://localhost:8233``): workflow ids become links.
        temporal_namespace: the namespace in those links.
        prefect_ui: the Prefect UI's address (``http://127.0.0.1:4200``): flow run ids become links.
        session_ttl: seconds a sign-in lasts after its last use.
    """

    temporal_ui: str | None = None
    temporal_namespace: str = "default"
    prefect_ui: str | None = None
    session_ttl: float = 8 * 3600


class _SecurityHeaders:
    """Adds the content-security policy and its companions to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(str(_HERE / "templates")), autoescape=select_autoescape(default=True),
        trim_blocks=True, lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


def create_inbox_app(kernel: Any, settings: InboxSettings | None = None) -> Starlette:
    """The approvals inbox as an ASGI app over ``kernel`` (mount it, e.g. at ``/ui``).

    Args:
        kernel: a :class:`chio_kernel.Kernel` (its ``authenticate``, approvals, receipts, budgets
            and webhook outbox are used).
        settings: engine links and the session lifetime.

    Returns:
        The Starlette app.
    """
    settings = settings or InboxSettings()
    routes: list[Any] = [Route(path, handler, methods=list(methods)) for path, handler, methods in ROUTES_SPEC]
    routes.append(Mount("/static", app=StaticFiles(directory=str(_HERE / "static")), name="static"))
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders)
    app.state.kernel = kernel
    app.state.sessions = Sessions(settings.session_ttl)
    app.state.templates = _templates()
    app.state.links = EngineLinks(settings.temporal_ui, settings.temporal_namespace, settings.prefect_ui)
    return app
