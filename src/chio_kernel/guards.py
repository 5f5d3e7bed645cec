"""The named guards' pure checks: scope matching and parameter constraints.

Guard names (in evaluation order): ``signature`` (also: unknown capability id), ``time``,
``revocation``, ``scope``, ``constraints``, ``max_invocations``, ``cost``, ``rate-limit-guard``.
The stateful guards (revocation, budgets, rate limit) live in :mod:`chio_kernel.kernel`, inside the
evaluation's write transaction.

Constraint rule (the upstream kernel's): a grant's constraints apply to **every string value** in
the call's parameters, found recursively inside lists and dicts (dict keys are not checked). A call
with no string values passes the constraints vacuously.

* ``path_prefix``: the value is normalised (``posixpath.normpath``, so ``/data/../etc`` is
  ``/etc``) and must equal the prefix or lie under it at a path boundary (``/data`` allows
  ``/data/x`` but not ``/database``).
* ``domain_exact`` / ``domain_glob``: the host of URL-ish values is compared case-insensitively
  (``https://user@Api.Example.com:8443/x`` -> ``api.example.com``; a bare ``example.com/path`` ->
  ``example.com``; a value whose host part holds backslashes, whitespace or control characters has
  no host and fails, since URL parsers disagree on those). ``domain_glob`` uses shell-style matching (``*.example.com``; ``*`` also spans
  dots; it does not match the bare ``example.com``).
* ``regex_match``: Python ``re.search`` semantics (like the Rust ``regex::is_match`` upstream);
  anchor the pattern (``^...$``) to constrain the whole value. Patterns are compiled once and cached.
* ``max_length``: the value's length in characters is at most the limit.
* Any other constraint type (e.g. ``governed_intent_required``) is not enforced by this kernel
  and therefore denies (fail closed), naming the type.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from chio_sdk.models import Constraint, Operation, ToolGrant

__all__ = [
    "GUARD_ORDER",
    "check_constraints",
    "describe_grant",
    "extract_host",
    "grant_matches",
    "iter_strings",
]

GUARD_ORDER = (
    "signature",
    "time",
    "revocation",
    "scope",
    "constraints",
    "max_invocations",
    "cost",
    "rate-limit-guard",
)


def grant_matches(grant: ToolGrant, tool_server: str, tool_name: str, operation: Operation) -> bool:
    """Does ``grant`` cover ``operation`` on ``tool_server``/``tool_name`` (``*`` wildcards)?"""
    return (
        (grant.server_id == "*" or grant.server_id == tool_server)
        and (grant.tool_name == "*" or grant.tool_name == tool_name)
        and operation in grant.operations
    )


def describe_grant(grant: ToolGrant) -> str:
    """``server/tool (Invoke, Read)`` plus its limits, for reasons a person reads."""
    ops = ", ".join(op.value if isinstance(op, Operation) else str(op) for op in grant.operations)
    text = f"{grant.server_id}/{grant.tool_name} ({ops})"
    extras = []
    if grant.constraints:
        extras.append("constraints " + ", ".join(f"{c.type}={c.value!r}" for c in grant.constraints))
    if grant.max_invocations is not None:
        extras.append(f"max_invocations={grant.max_invocations}")
    if grant.max_cost_per_invocation is not None:
        m = grant.max_cost_per_invocation
        extras.append(f"max_cost_per_invocation={m.units} {m.currency}")
    if grant.max_total_cost is not None:
        m = grant.max_total_cost
        extras.append(f"max_total_cost={m.units} {m.currency}")
    if extras:
        text += " [" + "; ".join(extras) + "]"
    return text


def iter_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(parameter path, string)`` for every string value inside ``value``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from iter_strings(v, f"{path}[{i}]")


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def extract_host(value: str) -> str:
    """The lower-case host of a URL-ish string (``scheme://host:port/...`` or ``host/path``)."""
    text = value.strip()
    rest = text.split("://", 1)[1] if "://" in text else text
    authority = rest
    for sep in "/?#":
        authority = authority.split(sep, 1)[0]
    if any(c in authority for c in "\\ \t") or not authority.isprintable():
        # parsers disagree on such authorities (``https://evil.com\\@good.com`` is good.com to
        # urllib but evil.com to a browser): no host, so a domain constraint denies
        return ""
    if "://" in text:
        try:
            host = urlsplit(text).hostname or ""
        except ValueError:
            host = ""
    else:
        host = text.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        host = host.rsplit("@", 1)[-1]
        if host.startswith("["):  # [ipv6]:port
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
    return host.lower().rstrip(".")


def _path_ok(value: str, prefix: str) -> bool:
    norm = posixpath.normpath(value) if value else value
    if value.startswith("//"):  # normpath keeps a leading '//'; treat as '/'
        norm = "/" + norm.lstrip("/")
    base = prefix.rstrip("/") or "/"
    if base == "/":
        return norm.startswith("/")
    return norm == base or norm.startswith(base + "/")


def _check_one(constraint: Constraint, path: str, value: str) -> str | None:
    """Reason the value violates the constraint, or None."""
    ctype, cval = constraint.type, constraint.value
    where = f"parameter {path!r} = {value!r:.120}"
    if ctype == "path_prefix":
        if not isinstance(cval, str):
            return f"path_prefix constraint has a non-string value {cval!r}; fix the capability's scope"
        if not _path_ok(value, cval):
            return f"{where} is not under the allowed path prefix {cval!r}; use a path inside {cval!r}"
        return None
    if ctype in ("domain_exact", "domain_glob"):
        if not isinstance(cval, str):
            return f"{ctype} constraint has a non-string value {cval!r}; fix the capability's scope"
        host = extract_host(value)
        want = cval.lower().rstrip(".")
        ok = host == want if ctype == "domain_exact" else fnmatch.fnmatchcase(host, want)
        if not ok:
            rule = "the domain" if ctype == "domain_exact" else "the domain pattern"
            return f"{where} has host {host!r}, which is not {rule} {cval!r} the capability allows"
        return None
    if ctype == "regex_match":
        if not isinstance(cval, str):
            return f"regex_match constraint has a non-string value {cval!r}; fix the capability's scope"
        try:
            rx = _compiled(cval)
        except re.error as err:
            return f"regex_match constraint {cval!r} is not a valid regular expression ({err}); fix the capability's scope"
        if rx.search(value) is None:
            return f"{where} does not match the required pattern {cval!r}"
        return None
    if ctype == "max_length":
        if isinstance(cval, bool) or not isinstance(cval, int):
            return f"max_length constraint has a non-integer value {cval!r}; fix the capability's scope"
        if len(value) > cval:
            return f"{where:.60} is {len(value)} characters long; the capability allows at most {cval}"
        return None
    return (
        f"constraint type {ctype!r} is not enforced by this kernel, so the call is denied (fail closed); "
        "use path_prefix, domain_exact, domain_glob, regex_match or max_length"
    )


def check_constraints(grant: ToolGrant, parameters: dict[str, Any]) -> str | None:
    """The first constraint violation of ``parameters`` under ``grant`` as a reason, or None."""
    if not grant.constraints:
        return None
    strings = list(iter_strings(parameters))
    for constraint in grant.constraints:
        if constraint.type not in ("path_prefix", "domain_exact", "domain_glob", "regex_match", "max_length"):
            return _check_one(constraint, "", "")
        for path, value in strings:
            reason = _check_one(constraint, path, value)
            if reason is not None:
                return reason
    return None
