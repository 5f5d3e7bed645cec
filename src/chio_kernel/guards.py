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
  Python's ``re`` backtracks, so two bounds keep one call from stalling the kernel: a value longer
  than :data:`MAX_REGEX_INPUT` characters is denied without running the pattern, and patterns with
  the classic catastrophic shapes (see :func:`regex_problem`) are refused when a capability is
  issued or attenuated, and deny at evaluation if one still reaches the kernel (a trusted kernel's
  token, a store written before this rule).
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

try:  # the stdlib's regex parser (public modules sre_parse/sre_constants are deprecated in 3.11+)
    import re._constants as _sre
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]
from typing import Any
from urllib.parse import urlsplit

from chio_sdk.models import Constraint, Operation, ToolGrant

__all__ = [
    "GUARD_ORDER",
    "MAX_REGEX_INPUT",
    "check_constraints",
    "describe_grant",
    "extract_host",
    "grant_matches",
    "iter_strings",
    "regex_problem",
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


#: ``regex_match`` is applied to values of at most this many characters; a longer value denies.
#: (Backtracking cost grows with the input; paths, URLs and identifiers are far shorter.)
MAX_REGEX_INPUT = 4096


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_repeat(op: Any) -> bool:
    return op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None))


_CATEGORY_RX = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W",
}


def _unwrap(items: Any) -> Any:
    """The items of a body that is one capturing/non-capturing group."""
    while len(items) == 1 and items[0][0] is _sre.SUBPATTERN:
        items = items[0][1][-1]
    return items


def _may_match(item: Any, ch: str) -> bool:
    """Can the one-character item match ``ch``? (True when unsure: conservative.)"""
    op, av = item
    if op is _sre.LITERAL:
        return bool(av == ord(ch))
    if op is _sre.NOT_LITERAL:
        return bool(av != ord(ch))
    if op is _sre.IN:
        for sop, sav in av:
            if sop is _sre.NEGATE:
                return True
            if (sop is _sre.LITERAL and sav == ord(ch)) or (sop is _sre.RANGE and sav[0] <= ord(ch) <= sav[1]):
                return True
            if sop is _sre.CATEGORY:
                rx = _CATEGORY_RX.get(str(sav))
                if rx is None or re.match(rx, ch):
                    return True
            elif sop not in (_sre.LITERAL, _sre.RANGE):
                return True
        return False
    return True


def _separated(body: Any) -> bool:
    """``([a-z]+\\.)+``-like: every unbounded repeat directly in the repeated body is one character
    class, and the body has a literal none of them can match, so each iteration has one split."""
    seps = [chr(av) for op, av in body if op is _sre.LITERAL]
    inner = [_unwrap(av[2]) for op, av in body if _is_repeat(op) and av[1] == _sre.MAXREPEAT]
    if not seps or not inner or any(len(i) != 1 for i in inner):
        return False
    return any(all(not _may_match(i[0], c) for i in inner) for c in seps)


def _walk(items: Any, in_repeat: bool, separated: bool = False) -> str | None:
    """Find a catastrophic shape in a parsed pattern; ``in_repeat``: inside a repeat of > 1;
    ``separated``: the unbounded repeats directly in ``items`` are split by a literal (accepted)."""
    for op, av in items:
        if _is_repeat(op):
            lo, hi, body = av
            if in_repeat and hi == _sre.MAXREPEAT and not separated:
                return "a quantified group contains an unbounded quantifier (nested quantifiers such as (a+)+ or (a*)*)"
            body = _unwrap(body)
            found = _walk(body, in_repeat or hi > 1, hi > 1 and _separated(body))
            if found:
                return found
        elif op is _sre.BRANCH:
            branches = av[1]
            if in_repeat and len({repr(b) for b in branches}) < len(branches):
                return "a repeated group has identical alternatives (such as (a|a)*)"
            for b in branches:
                found = _walk(b, in_repeat)
                if found:
                    return found
        elif op is _sre.SUBPATTERN:
            found = _walk(av[-1], in_repeat)
            if found:
                return found
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            found = _walk(av[1], in_repeat)
            if found:
                return found
        elif op is _sre.GROUPREF_EXISTS:
            for sub in av[1:]:
                if sub is not None:
                    found = _walk(sub, in_repeat)
                    if found:
                        return found
        elif op is getattr(_sre, "ATOMIC_GROUP", None):
            found = _walk(av, in_repeat)
            if found:
                return found
    return None


@functools.lru_cache(maxsize=512)
def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused as a ``regex_match`` constraint, or None if it is accepted.

    Refused: invalid patterns, and the classic catastrophic-backtracking shapes: a repeated group
    containing an unbounded quantifier (``(a+)+``, ``(a*)*``, ``(\\w+\\s?)*``, ``(.*a){12}``) and a
    repeated group with identical alternatives (``(a|a)*``). This is a heuristic for the obvious
    cases, not a proof; the input length cap (:data:`MAX_REGEX_INPUT`) bounds the rest.
    """
    try:
        parsed = _sre_parse.parse(pattern)
    except re.error as err:
        return f"regex_match constraint {pattern!r} is not a valid regular expression ({err})"
    except RecursionError:
        return f"regex_match constraint {pattern!r:.80} is nested too deeply"
    shape = _walk(parsed.data, False)
    if shape is not None:
        return (
            f"regex_match constraint {pattern!r} can backtrack catastrophically: {shape}; rewrite it "
            "without a quantifier inside a quantified group (e.g. ^a+$ instead of ^(a+)+$)"
        )
    return None


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
        problem = regex_problem(cval)
        if problem is not None:
            return f"{problem}; the call is denied (fix the capability's scope)"
        if len(value) > MAX_REGEX_INPUT:
            return (
                f"{where:.60} is {len(value)} characters long; regex_match constraints are applied to at "
                f"most {MAX_REGEX_INPUT} characters, so the call is denied (pass a shorter value)"
            )
        if _compiled(cval).search(value) is None:
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
