"""Who may use the sidecar, and as whom (``docs/security.md``).

Three modes, chosen when the app is made:

* ``open`` (the default, loopback only): every request is :data:`OPEN_PRINCIPAL` (the operator, named
  ``open``). For a laptop, the demo and upstream's tests; said on start and in ``/chio/health``.
* ``token`` (``--token SECRET``, the simple mode of earlier releases): a request carrying the one
  token is the operator, named ``token``; anything else is 401.
* ``roles`` (``--auth roles``, production): a request must carry ``Authorization: Bearer <credential
  token>`` (``chio-durable credentials add``); the credential's role and name are the request's
  principal. Unknown or revoked: 401. Each route then admits only the roles it declares
  (:func:`admits`), else 403.

The principal is put on ``request.state.principal`` (the ASGI scope's ``state``) before any handler
runs; the sidecar signs it into the receipts the request causes (``chio_role``, ``chio_principal``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chio_kernel._roles import OPEN_PRINCIPAL, TOKEN_PRINCIPAL, Principal, Role
from chio_kernel._run_context import principal_name, with_principal
from chio_kernel.sidecar._errors import ApiError, Handler, SidecarConfigError
from chio_kernel.sidecar._responses import error_response

__all__ = [
    "AUTH_MODES",
    "ALL_ROLES",
    "AuthMode",
    "Authenticator",
    "admits",
    "asked_by",
    "bearer_ok",
    "check_owner",
    "check_bind",
    "is_loopback",
    "principal_of",
]

AuthMode = Literal["open", "token", "roles"]
#: The modes a sidecar runs in (the module doc).
AUTH_MODES: tuple[AuthMode, ...] = ("open", "token", "roles")
#: Every role (a route any authenticated principal may use).
ALL_ROLES: tuple[Role, ...] = ("workload", "approver", "operator")


def is_loopback(host: str) -> bool:
    """Tell whether a host name or address names only this machine.

    Args:
        host: a name or an IPv4/IPv6 address (brackets allowed).

    Returns:
        True for ``localhost``, ``127.0.0.0/8`` and ``::1``.
    """
    if host.lower() in {"localhost", "localhost.localdomain", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, auth: str | None = None) -> AuthMode:
    """The auth mode to run in; refuse to expose the kernel beyond loopback in open mode.

    Args:
        host: the address to bind.
        token: the ``--token`` secret, if any.
        auth: ``"open"``, ``"roles"`` or None (``token`` mode when a token is given, else ``open``).

    Returns:
        The mode.

    Raises:
        SidecarConfigError: an empty token, an unknown mode, ``--auth open`` or ``--auth roles`` with
            a token, or a non-loopback host in open mode.
    """
    if token is not None and not token.strip():
        raise SidecarConfigError("--token / CHIO_SIDECAR_TOKEN is empty; pass a non-empty secret")
    if auth not in (None, "open", "roles"):
        raise SidecarConfigError(f"--auth must be 'open' or 'roles', got {auth!r}")
    if auth == "open" and token:
        raise SidecarConfigError("--auth open takes no --token; pass --auth roles, or --token alone (token mode)")
    if auth == "roles" and token:
        raise SidecarConfigError(
            "--auth roles takes no --token / CHIO_SIDECAR_TOKEN: each client sends its own credential "
            "(`chio-durable credentials add`); unset the token, or drop --auth roles for token mode"
        )
    mode: AuthMode = "roles" if auth == "roles" else ("token" if token else "open")
    if not is_loopback(host) and mode == "open":
        raise SidecarConfigError(
            f"refusing to bind {host!r} in open mode: anyone who can reach it could issue "
            "capabilities and answer approvals. Pass --auth roles (credentials from `chio-durable "
            "credentials add`), or --token SECRET, or bind --host 127.0.0.1."
        )
    return mode


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The token of the request's ``Authorization: Bearer`` header, or ``b""``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, got = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":  # the scheme is case-insensitive (RFC 6750)
                return b""
            return got.strip()
    return b""


def bearer_ok(headers: list[tuple[bytes, bytes]], expected: bytes) -> bool:
    """Does the request carry ``Authorization: Bearer <expected>``? (constant-time comparison)"""
    got = _bearer(headers)
    return bool(got) and hmac.compare_digest(got, expected)


class Authenticator:
    """The principal of each request (see the module doc): ``principal(headers)`` or None (401)."""

    def __init__(self, mode: AuthMode, token: str | None, authenticate: Callable[[str], Principal | None]) -> None:
        """``mode`` as :func:`check_bind` chose it; ``authenticate`` is ``Kernel.authenticate``."""
        self.mode = mode
        self._expected = token.encode() if token else b""
        self._authenticate = authenticate

    def principal(self, headers: list[tuple[bytes, bytes]]) -> Principal | None:
        """Who sent these headers, or None (no, unknown or revoked token)."""
        if self.mode == "open":
            return OPEN_PRINCIPAL
        got = _bearer(headers)
        if not got:
            return None
        if self.mode == "token":
            return TOKEN_PRINCIPAL if hmac.compare_digest(got, self._expected) else None
        try:
            return self._authenticate(got.decode("ascii"))
        except UnicodeDecodeError:
            return None

    def refusal(self) -> Response:
        """The 401 answer."""
        what = (
            "the token it was started with" if self.mode == "token"
            else "a credential token from `chio-durable credentials add NAME --role ROLE`"
        )
        response = error_response(401, "unauthorized", f"this sidecar requires 'Authorization: Bearer <token>' ({what})")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the 401 answer."""
        await self.refusal()(scope, receive, send)


def principal_of(request: Request) -> Principal:
    """The request's principal (set by the app before routing; open mode's when absent)."""
    principal: Any = request.scope.get("state", {}).get("principal")
    return principal if isinstance(principal, Principal) else OPEN_PRINCIPAL


def admits(*roles: Role) -> Callable[[Handler], Handler]:
    """A handler that answers only principals of ``roles`` (the operator always); 403 naming them else."""
    allowed = frozenset(roles) | {"operator"}
    names = " or ".join(r for r in ALL_ROLES if r in allowed)

    def wrap(fn: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            principal = principal_of(request)
            if principal.role not in allowed:
                raise ApiError(
                    403, "forbidden",
                    f"{request.method} {request.url.path} needs the {names} role; credential "
                    f"{principal.name!r} is {principal.role}",
                )
            return await fn(request)

        guarded.__name__ = fn.__name__
        guarded.__qualname__ = fn.__qualname__
        guarded.__doc__ = fn.__doc__
        return guarded

    return wrap


def check_owner(request: Request, metadata: Any, what: str) -> None:
    """A workload may touch only what its own requests caused (the receipt metadata's
    ``chio_principal``); 403 naming ``what`` otherwise. Other roles pass."""
    principal = principal_of(request)
    if principal.role == "workload" and principal_name(metadata) != principal.name:
        raise ApiError(
            403, "forbidden",
            f"{what} was not caused by credential {principal.name!r}; a workload may use only its own",
        )


def asked_by(request: Request, metadata: dict[str, str] | None = None) -> dict[str, str] | None:
    """A request's run context (``metadata``, checked) with who asked (the request's principal) set by
    the sidecar, to sign into the receipts it causes; in open mode nobody authenticated, so receipts
    name nobody (docs/security.md)."""
    principal = principal_of(request)
    if principal is OPEN_PRINCIPAL:
        return metadata
    return with_principal(metadata, principal.role, principal.name)
