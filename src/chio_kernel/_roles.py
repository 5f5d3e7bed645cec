"""Who is asking: the three roles, their principals and the credentials that prove them.

A **credential** is a named bearer token with one role, kept in the kernel's store (SQLite or
PostgreSQL, table ``credentials``) as the SHA-256 hex of the token only; the token itself is shown
once, when it is made. Token format: ``chio_<role>_<43 characters of urlsafe base64>`` (32 random
bytes). The roles (``docs/security.md``):

* ``workload``: evaluates, records denials, attenuates (narrowing only), settles or releases the
  holds of its own allow receipts, reads its own receipts and approvals;
* ``approver``: answers approvals, under its own name;
* ``operator``: everything else (issues and revokes capabilities, trusts approver keys, retires
  keys, manages credentials).

:class:`Credentials` is the service behind ``Kernel.add_credential`` / ``revoke_credential`` /
``list_credentials`` / ``authenticate``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast

from chio_kernel._errors import CredentialError
from chio_kernel._store import StoreReader, StoreWriter

__all__ = [
    "AUTH_CACHE_SECONDS",
    "OPEN_PRINCIPAL",
    "ROLES",
    "SHARED_PRINCIPALS",
    "TOKEN_PRINCIPAL",
    "Credentials",
    "Principal",
    "Role",
    "check_role",
    "token_hash",
]

Role = Literal["workload", "approver", "operator"]
#: The roles, least power first.
ROLES: tuple[Role, ...] = ("workload", "approver", "operator")

#: Seconds an authenticated token is remembered by a process (a revocation made elsewhere, e.g. by
#: the CLI while a sidecar runs, takes effect within this time; one made in-process at once).
AUTH_CACHE_SECONDS = 2.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(r"chio_(workload|approver|operator)_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a role and the name of the credential that proved it.

    Attributes:
        role: ``"workload"``, ``"approver"`` or ``"operator"``.
        name: the credential's name (``"alice"``, ``"worker-1"``; ``"open"`` / ``"token"`` for the
            shared principals of open and token mode).
    """

    role: Role
    name: str

    def label(self) -> str:
        """The principal as one string.

        Returns:
            ``"<role>:<name>"``.
        """
        return f"{self.role}:{self.name}"


#: What every request is in open mode (``--auth open``): the kernel's operator, named "open".
OPEN_PRINCIPAL = Principal("operator", "open")
#: What a request carrying the sidecar's ``--token`` is (token mode): the operator, named "token".
TOKEN_PRINCIPAL = Principal("operator", "token")
#: Principals many callers share (no one person): the rule "who waits cannot approve" cannot tell
#: them apart, so it does not apply between them (docs/security.md).
SHARED_PRINCIPALS = frozenset({OPEN_PRINCIPAL, TOKEN_PRINCIPAL})


def check_role(role: Any) -> Role:
    """``role`` if it is one of :data:`ROLES`, else :class:`CredentialError` naming them."""
    if role not in ROLES:
        raise CredentialError(f"role must be one of {', '.join(ROLES)}, got {role!r:.40}")
    return cast(Role, role)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CredentialError(
            f"a credential name is 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or "
            f"digit (e.g. 'alice', 'worker-1'), got {name!r:.80}"
        )
    return name


def token_hash(token: str) -> str:
    """The SHA-256 hex of a credential token (what the store keeps)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Credentials:
    """The credentials service: make, revoke, list and check bearer tokens (see the module doc)."""

    def __init__(
        self,
        read: Callable[[], AbstractContextManager[StoreReader]],
        write: Callable[[], AbstractContextManager[StoreWriter]],
        clock: Callable[[], float],
    ) -> None:
        """Keep credentials in the store via ``read`` / ``write``; ``clock`` stamps them."""
        self._read = read
        self._write = write
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}  # token hash -> (checked at, principal)
        self._lock = threading.Lock()

    def add(self, name: str, role: str) -> str:
        """See ``Kernel.add_credential`` (the public doc is there)."""
        name, checked = _check_name(name), check_role(role)
        token = f"chio_{checked}_{secrets.token_urlsafe(32)}"
        with self._write() as st:
            if st.credential(name) is not None:
                raise CredentialError(
                    f"a credential named {name!r} exists already (revoked ones keep their name); pick another name"
                )
            st.insert_credential(name, checked, token_hash(token), self._clock())
        return token

    def revoke(self, name: str) -> None:
        """See ``Kernel.revoke_credential`` (the public doc is there)."""
        _check_name(name)
        with self._write() as st:
            row = st.credential(name)
            if row is None:
                raise CredentialError(f"no credential named {name!r}; `chio-durable credentials list` shows them")
            if row[3] is None:
                st.revoke_credential(name, self._clock())
            digest = row[2]
        with self._lock:
            self._cache.pop(digest, None)

    def listed(self) -> list[dict[str, Any]]:
        """See ``Kernel.list_credentials`` (the public doc is there)."""
        with self._read() as st:
            rows = st.credentials()
        return [
            {"name": name, "role": role, "created_at": created, "revoked_at": revoked, "active": revoked is None}
            for name, role, created, revoked in rows
        ]

    def authenticate(self, token: str) -> Principal | None:
        """See ``Kernel.authenticate`` (the public doc is there)."""
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return None
        digest = token_hash(token)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < AUTH_CACHE_SECONDS:
            return cached[1]
        with self._read() as st:
            row = st.credential_by_hash(digest)
        # the lookup is by the hash of the token (a lookup time says nothing about the token); the
        # stored hash is compared once more in constant time
        if row is None or row[3] is not None or not hmac.compare_digest(row[2], digest):
            with self._lock:
                self._cache.pop(digest, None)
            return None
        principal = Principal(check_role(row[1]), str(row[0]))
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[digest] = (now, principal)
        return principal
