"""The sidecar's defaults and limits (no imports of the rest of the sidecar)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_PENDING_HEADERS",
    "DEFAULT_PAGE_LIMIT",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LIST_LIMIT",
    "MAX_PAGE_LIMIT",
    "MAX_TTL_SECONDS",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
#: Request bodies larger than this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 1 << 20
#: JSON nested deeper than this is refused with 422 (no legitimate call needs it; it guards the
#: recursive canonicaliser and validators against stack exhaustion).
MAX_JSON_DEPTH = 64
#: Upper bound for ``GET /v1/receipts?limit=``; the default when no limit is given.
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1_000
#: ``?limit=`` of the approval, capability and hold listings: the default and the largest.
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1_000
#: ``ttl_seconds`` of a capability: at most about ten years.
MAX_TTL_SECONDS = 10 * 366 * 86400
#: Seconds a connection may take to deliver a request's complete headers, counted from the moment it
#: waits for a request (connected, or its previous response sent); then it is closed.
DEFAULT_HEADER_TIMEOUT = 10.0
#: At most this many connections may wait for request headers at once; a new one beyond it closes
#: the connection that has waited longest (a slow-header flood cannot crowd out real clients).
DEFAULT_MAX_PENDING_HEADERS = 64
