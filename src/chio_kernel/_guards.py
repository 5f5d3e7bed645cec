"""The named guards' pure checks: scope matching and parameter constraints.

Guard names (in evaluation order): ``signature`` (also: unknown capability id), ``time``,
``revocation``, ``scope``, ``constraints``, ``max_invocations``, ``cost``, ``rate-limit-guard``.
The stateful guards (revocation, budgets, rate limit) live in :mod:`chio_kernel._policy`, applied by
:mod:`chio_kernel._evaluation` inside the evaluation's write transaction.

Constraint rule (the upstream kernel's): a grant's constraints apply to **every string value** in
the call's parameters, found recursively inside lists and dicts (dict keys are not checked). A call
with no string values passes the constraints vacuously.

* ``path_prefix``: a value holding a control character (``\\x00``-``\\x1f``, ``\\x7f``-``\\x9f``) denies
  (a C library or subprocess truncates at NUL); otherwise the value is normalised
  (``posixpath.normpath``, so ``/data/../etc`` is ``/etc``) and must equal the prefix or lie under
  it at a path boundary (``/data`` allows ``/data/x`` but not ``/database``).
* ``domain_exact`` / ``domain_glob``: the host of URL-ish values (``https://user@Api.Example.com:8443/x``
  -> ``api.example.com``; a bare ``example.com/path`` -> ``example.com``) is normalised (NFKC, lower
  case, trailing dot dropped, IDNA/punycode labels) and so is the constraint's value, before any
  comparison. A value whose host is not a valid host name after normalisation (e.g. it holds
  U+FF0F, a fullwidth ``/``), or whose host part holds backslashes, whitespace or control
  characters (URL parsers disagree on those), has no host and denies. ``domain_glob`` uses
  shell-style matching (``*.example.com``; ``*`` also spans dots; it does not match the bare
  ``example.com``).
* ``regex_match``: RE2 (``google-re2``), the semantics of Rust's ``regex`` crate used upstream:
  ``search`` (a match anywhere, like ``regex::is_match``); anchor the pattern (``^...$``) to
  constrain the whole value; ``$`` is the end of the text (``^[a-z]+$`` does not match
  ``"abc\\n"``). RE2 runs in time linear in the value, so no pattern can stall the kernel. An
  invalid pattern (or one RE2 lacks: backreferences, lookaround) is refused when a capability is
  issued or attenuated and denies at evaluation. Values over :data:`MAX_REGEX_INPUT` characters
  deny without running the pattern.
* ``max_length``: the value's length in characters is at most the limit.
* ``require_approval_above`` is no parameter check: a call whose declared cost reaches its
  ``threshold_units`` gets a pending-approval verdict (``chio_kernel._approvals``, docs/approvals.md).
* Any other constraint type (e.g. ``governed_intent_required``) is not enforced by this kernel
  and therefore denies (fail closed), naming the type.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import posixpath
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from chio_sdk.models import Constraint, Operation, ToolGrant

from chio_kernel._money import format_money

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
        extras.append(f"max_cost_per_invocation={format_money(m.units, m.currency)}")
    if grant.max_total_cost is not None:
        m = grant.max_total_cost
        extras.append(f"max_total_cost={format_money(m.units, m.currency)}")
    if extras:
        text += " [" + "; ".join(extras) + "]"
    return text


#: A receipt's deny reason holds at most this many characters (docs/kernel.md); a longer one is cut
#: and ends saying how many characters were left out.
MAX_REASON_CHARS = 1_000
#: How much of a reason a list of grants may take before the rest is only counted.
_GRANTS_TEXT_BUDGET = 600


def bound_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """``reason`` cut to at most ``limit`` characters, ending ``… (N more characters left out)``."""
    if len(reason) <= limit:
        return reason
    head = reason[: limit - len(f" … ({len(reason)} more characters left out)")]
    return f"{head} … ({len(reason) - len(head)} more characters left out)"


def describe_grants(grants: Sequence[ToolGrant], budget: int = _GRANTS_TEXT_BUDGET) -> str:
    """``describe_grant`` of each grant joined by ``; ``, stopping once ``budget`` characters are
    used: the rest is counted (``… and 9,990 more grants``), never written out."""
    parts: list[str] = []
    used = 0
    for i, grant in enumerate(grants):
        text = describe_grant(grant)
        if parts and used + len(text) > budget:
            return "; ".join(parts) + f"; … and {len(grants) - i:,} more grants"
        parts.append(text)
        used += len(text) + 2
    return "; ".join(parts)


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
#: (RE2 is linear in the input; the cap keeps the work per value small. Paths, URLs and identifiers
#: are far shorter.)
MAX_REGEX_INPUT = 4096


@functools.cache
def _re2() -> tuple[Any, Any]:
    """``re2`` and its options, imported on first use: a C extension that Temporal's workflow sandbox
    cannot re-import, so a workflow module importing ``chio_kernel`` must not load it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # an invalid pattern is our error message, not a line on stderr
    return re2, options


class _PatternError(ValueError):
    """``pattern`` cannot be used as a ``regex_match`` constraint (the message says why)."""


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    re2, options = _re2()
    try:
        return re2.compile(pattern, options)
    except re2.error as err:
        detail = err.args[0] if err.args else err
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise _PatternError(
            f"regex_match constraint {pattern!r:.200} is not a valid RE2 regular expression ({detail}); "
            "RE2 has no backreferences or lookaround (see docs/kernel.md)"
        ) from None
    except (TypeError, UnicodeError) as err:
        raise _PatternError(f"regex_match constraint {pattern!r:.200} cannot be compiled ({err})") from None


@functools.lru_cache(maxsize=512)
def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused as a ``regex_match`` constraint, or None if it is accepted.

    Patterns run on RE2 (``google-re2``), a linear-time engine with the semantics of Rust's
    ``regex`` crate (the upstream kernel's): no pattern can backtrack catastrophically, so the only
    refusal is a pattern RE2 does not accept (a syntax error, a backreference, lookaround, a
    repetition over 1000, a program over RE2's memory budget).
    """
    try:
        _compiled(pattern)
    except _PatternError as err:
        return str(err)
    return None


def _normalize_host(host: str) -> str | None:
    """The comparable form of a host: NFKC, lower case, one trailing dot dropped, IDNA (punycode)
    labels; None when it is not a valid host name after that (then a domain constraint denies).

    NFKC first, so look-alikes that normalise to syntax (U+FF0F fullwidth ``/``, U+FF0E ``.``)
    cannot hide a different host behind a suffix a glob accepts.
    """
    text = unicodedata.normalize("NFKC", host).lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        return None
    if ":" in text:  # an IPv6 literal (the brackets were removed by the caller)
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:  # an empty or over-long label, a prohibited code point
            return None
    return text if _is_host_name(text) else None


#: What an ASCII host name after IDNA is made of: letters, digits, ``-`` and ``_`` (DNS service
#: labels such as ``_dmarc``), in dot-separated labels of 1-63 characters.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _is_host_name(text: str) -> bool:
    return all(
        0 < len(label) <= 63 and set(label) <= _HOST_CHARS and not label.startswith("-") and not label.endswith("-")
        for label in text.split(".")
    )


def _normalize_pattern(pattern: str) -> str:
    """A ``domain_exact`` / ``domain_glob`` value normalised like hosts (labels holding a glob
    character are only NFKC-normalised and lower-cased)."""
    text = unicodedata.normalize("NFKC", pattern).lower()
    if text.endswith("."):
        text = text[:-1]
    labels = []
    for label in text.split("."):
        if label and not label.isascii() and not any(c in label for c in "*?[]"):
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                pass  # no host normalises to it, so it matches nothing
        labels.append(label)
    return ".".join(labels)


def extract_host(value: str) -> str:
    """The normalised host of a URL-ish string (``scheme://host:port/...`` or ``host/path``), or
    ``""`` when it has none: NFKC, lower case, no trailing dot, IDNA (punycode) labels; a host that
    is not a valid host name after that (``evil.com／.api.example.com`` becomes
    ``evil.com/.api.example.com``) has none."""
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
    return _normalize_host(host) or ""


def _has_control(value: str) -> bool:
    """Any C0/C1 control character (NUL, newline, ESC, DEL...)? A C library or a subprocess
    argument truncates at NUL, so such a value is not the path that was checked."""
    return _CONTROL.search(value) is not None


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # one C-level scan instead of a Python loop per character


def _path_ok(value: str, prefix: str) -> bool:
    if _has_control(value):
        return False
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
        if _has_control(value):
            return (
                f"{where} contains a control character (NUL, newline, ...), which path_prefix "
                "constraints never allow; pass a plain path"
            )
        if not _path_ok(value, cval):
            return f"{where} is not under the allowed path prefix {cval!r}; use a path inside {cval!r}"
        return None
    if ctype in ("domain_exact", "domain_glob"):
        if not isinstance(cval, str):
            return f"{ctype} constraint has a non-string value {cval!r}; fix the capability's scope"
        host = extract_host(value)
        want = _normalize_pattern(cval)
        ok = bool(host) and (host == want if ctype == "domain_exact" else fnmatch.fnmatchcase(host, want))
        if not host:
            return f"{where} has no valid host name, so it cannot satisfy the {ctype} constraint {cval!r}"
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
        if _compiled(cval).search(value) is None:  # RE2: linear in the value's length
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
        if constraint.type == "require_approval_above":  # decided after every guard (chio_kernel._approvals)
            continue
        if constraint.type not in ("path_prefix", "domain_exact", "domain_glob", "regex_match", "max_length"):
            return _check_one(constraint, "", "")
        for path, value in strings:
            reason = _check_one(constraint, path, value)
            if reason is not None:
                return reason
    return None
