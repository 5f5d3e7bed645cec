"""The loopback sidecar: the embedded kernel behind the HTTP API ``chio_sdk.ChioClient`` speaks.

``chio-durable sidecar`` runs :func:`serve`; :func:`create_app` builds the Starlette app (tests
and embedders can mount it themselves). Every endpoint ``ChioClient`` calls is served with exactly
the JSON it sends and expects, plus a few read/revoke endpoints of our own (see ``docs/sidecar.md``).

Rules the whole app keeps:

* a policy deny is HTTP 200 with a signed deny receipt (``ChioClient`` raises on 403);
* anything a client sends that is not a valid request is a 4xx with ``{"error", "message"}`` —
  bad JSON, wrong types, missing fields, bodies over :data:`MAX_BODY_BYTES` (413), nesting deeper
  than :data:`MAX_JSON_DEPTH`, unknown ids — never a 5xx, and the server keeps serving;
* the kernel is synchronous (SQLite, Ed25519): its calls run off the event loop, so it stays responsive;
* binding a non-loopback address requires a bearer token, checked in constant time on every request.

This module only re-exports; the code is in the private modules (``docs/architecture.md``).
"""

from __future__ import annotations

from chio_kernel.sidecar._app import create_app
from chio_kernel.sidecar._auth import check_bind, is_loopback
from chio_kernel.sidecar._config import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_PENDING_HEADERS,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
)
from chio_kernel.sidecar._errors import SidecarConfigError
from chio_kernel.sidecar._server import header_timeout_protocol, serve

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_MAX_PENDING_HEADERS",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "SidecarConfigError",
    "check_bind",
    "create_app",
    "header_timeout_protocol",
    "is_loopback",
    "serve",
]
