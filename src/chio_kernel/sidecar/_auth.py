"""Who may use the sidecar: loopback binds need nothing; anything else needs a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from chio_kernel.sidecar._errors import SidecarConfigError
from chio_kernel.sidecar._responses import error_response

__all__ = ["BearerAuth", "bearer_ok", "check_bind", "is_loopback"]


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


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the kernel beyond loopback without a bearer token.

    Args:
        host: the address the sidecar will bind.
        token: the bearer token it will require, or None.

    Raises:
        SidecarConfigError: an empty token, or a non-loopback ``host`` without a token.
    """
    if token is not None and not token.strip():
        raise SidecarConfigError("--token / CHIO_SIDECAR_TOKEN is empty; pass a non-empty secret")
    if not is_loopback(host) and not token:
        raise SidecarConfigError(
            f"refusing to bind {host!r} without a token: anyone who can reach it could issue "
            "capabilities and evaluate calls. Pass --token SECRET (or set CHIO_SIDECAR_TOKEN), "
            "or bind --host 127.0.0.1."
        )


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


class BearerAuth:
    """Pure-ASGI guard: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not bearer_ok(scope["headers"], self._expected):
                response = error_response(
                    401,
                    "unauthorized",
                    "this sidecar requires 'Authorization: Bearer <token>' (the token it was started with)",
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
