"""Sign-in sessions, the CSRF token and form reading of the inbox (docs/inbox.md, "Security").

A session lives in this process's memory, under a random id sent as the cookie ``chio_inbox``
(``HttpOnly``, ``SameSite=Strict``, ``Path`` = the inbox's mount, ``Secure`` over TLS). It keeps
the credential token the person signed in with, so every request authenticates it again: a revoked
credential is signed out at its next click. Every visitor gets a session (anonymous until sign-in,
so the sign-in form carries a CSRF token too); signing in replaces it with a new id (no fixation).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "FormError", "Session", "Sessions", "read_form"]

COOKIE = "chio_inbox"
#: The most a form body may hold (a reason is at most 4096 characters).
MAX_FORM_BYTES = 64 * 1024


class FormError(Exception):
    """A POST the inbox refuses (status and a sentence for the person)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    """One browser's session: its CSRF token and, once signed in, the credential and principal."""

    id: str
    csrf: str
    expires: float
    token: str | None = None
    principal: Any = None  # chio_kernel._roles.Principal once signed in


class Sessions:
    """The sessions of one inbox app (in memory, bounded)."""

    def __init__(self, ttl: float = 8 * 3600, most: int = 10_000) -> None:
        """Sessions live ``ttl`` seconds after their last use; at most ``most`` are kept."""
        self.ttl, self._most = ttl, most
        self._items: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, request: Request) -> Session | None:
        """The request's live session, or None."""
        sid = request.cookies.get(COOKIE, "")
        now = time.time()
        with self._lock:
            session = self._items.get(sid)
            if session is None or session.expires < now:
                self._items.pop(sid, None)
                return None
            session.expires = now + self.ttl
            return session

    def new(self, token: str | None = None, principal: Any = None) -> Session:
        """A fresh session (new id, new CSRF token)."""
        now = time.time()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.ttl, token, principal)
        with self._lock:
            if len(self._items) >= self._most:
                for sid in [k for k, s in self._items.items() if s.expires < now] or list(self._items)[: self._most // 10]:
                    self._items.pop(sid, None)
            self._items[session.id] = session
        return session

    def drop(self, session: Session) -> None:
        """Forget a session (sign-out, revoked credential)."""
        with self._lock:
            self._items.pop(session.id, None)


def set_cookie(response: Response, request: Request, session: Session, path: str) -> None:
    """Send the session cookie: HttpOnly, SameSite=Strict, Secure when the page came over TLS."""
    response.set_cookie(
        COOKIE, session.id, path=path or "/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


async def read_form(request: Request, session: Session | None) -> dict[str, str]:
    """The fields of a urlencoded POST, after the CSRF check (FormError 403 without a valid token)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise FormError(403, f"This form was sent from another site ({origin[:80]}); the inbox refuses it.")
    # the pages send application/x-www-form-urlencoded; any other body carries no form (so no CSRF token)
    urlencoded = (request.headers.get("content-type") or "").split(";")[0].strip() == "application/x-www-form-urlencoded"
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError(413, f"The form is larger than {MAX_FORM_BYTES // 1024} KiB; shorten the reason.")
    try:
        text = body.decode("utf-8") if urlencoded else ""
        fields = {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise FormError(400, "The form is not valid UTF-8.") from None
    sent = fields.pop("csrf", "")
    if session is None or not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise FormError(
            403,
            "This form carries no valid CSRF token (it expired, or it was not sent by an inbox page): "
            "reload the page and send it again.",
        )
    return fields
