"""The policy step: guards, budgets and rate limits in, a decision out. No I/O of its own: the
counters it needs (budget usage, rate windows) come from the caller's store transaction through
:class:`PolicyState`, and what an allow must charge is returned, not written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from chio_sdk.models import Operation, ToolGrant

from chio_kernel._capabilities import _Cap
from chio_kernel._coerce import _iso
from chio_kernel._guards import check_constraints, describe_grant, describe_grants, grant_matches
from chio_kernel._money import format_money

__all__ = ["Deny", "PolicyState", "check_valid", "decide", "passing_grants"]


class PolicyState(Protocol):
    """The counters the policy reads, inside the caller's write transaction (a ``StoreWriter``)."""

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        """``(invocations, cost_units)`` spent on one grant."""
        ...

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        """``(count, oldest t)`` of the allowed calls in the window ending at ``now``."""
        ...


def _owner(capability_id: str, inherited: bool) -> str:
    """Who set a limit, for deny reasons."""
    if inherited:
        return f"ancestor capability {capability_id} (whose limits this capability inherits)"
    return f"capability {capability_id}"


class Deny(Exception):
    """A guard refused the call: ``guard`` names it, ``reason`` says why and what to do."""

    def __init__(self, guard: str, reason: str) -> None:
        self.guard = guard
        self.reason = reason


def check_valid(cap: _Cap | None, capability_id: str, now: float, revoked: str | None, where: str) -> None:
    """The signature, time and revocation guards (``where``: the kernel, for messages); raises :class:`Deny`."""
    if cap is None:
        raise Deny(
            "signature",
            f"unknown capability {capability_id!r}: this kernel ({where}) never issued it; "
            "create it first (create_capability / `chio-durable capability create`) or check the id",
        )
    if cap.sig_error is not None:
        raise Deny("signature", cap.sig_error)
    tok = cap.token
    if now < tok.issued_at:
        raise Deny("time", f"capability {capability_id} is not valid before {_iso(tok.issued_at)}; retry then")
    if now >= tok.expires_at:
        raise Deny(
            "time",
            f"capability {capability_id} expired at {_iso(tok.expires_at)}; issue a new capability "
            "and pass its id",
        )
    if revoked is not None:
        which = "was revoked" if revoked == capability_id else f"descends from {revoked}, which was revoked"
        raise Deny(
            "revocation",
            f"capability {capability_id} {which}; calls under it are refused — issue a new capability",
        )


def decide(
    st: PolicyState,
    lineage: Sequence[_Cap],
    tool_server: str,
    tool_name: str,
    op: Operation,
    params: dict[str, Any],
    cost_t: tuple[int, str] | None,
    now: float,
    pre: dict[str, list[tuple[int, ToolGrant]] | Deny] | None = None,
) -> tuple[list[tuple[str, int]], list[str]]:
    """scope, constraints, max_invocations, cost, rate limit.

    Returns what an allow must charge: ``(capability id, grant index)`` of every budgeted grant
    and the ids whose rate window counts the call. An attenuated capability also spends its
    ancestors' budgets and rate limits, so delegation never multiplies what the root allowed.
    """
    charges: list[tuple[str, int]] = []
    for depth, c in enumerate(lineage):
        passing = pre.get(c.token.id) if pre is not None else None
        if passing is None:  # not prechecked (e.g. created by another process meanwhile)
            passing = passing_grants(c, depth > 0, tool_server, tool_name, op, params)
        elif isinstance(passing, Deny):
            raise passing
        index, limited = select_grant(st, c, depth > 0, passing, cost_t, tool_server, tool_name)
        if limited:
            charges.append((c.token.id, index))
    rated: list[str] = []
    for depth, c in enumerate(lineage):
        if c.rate_max is None or c.rate_per is None:
            continue
        cid = c.token.id
        count, oldest = st.rate_window(cid, now, c.rate_per)
        if count >= c.rate_max:
            retry = max(0.0, (oldest if oldest is not None else now) + c.rate_per - now)
            owner = f"its ancestor capability {cid}" if depth else f"capability {cid}"
            raise Deny(
                "rate-limit-guard",
                f"{owner} allows {c.rate_max} calls per {c.rate_per:g} s and that many were "
                f"allowed in the last {c.rate_per:g} s; retry in {retry:.1f} s",
            )
        rated.append(cid)
    return charges, rated


def passing_grants(
    cap: _Cap,
    inherited: bool,
    tool_server: str,
    tool_name: str,
    op: Operation,
    params: dict[str, Any],
) -> list[tuple[int, ToolGrant]]:
    """Grants of ``cap`` covering the call whose constraints pass (scope, constraints guards)."""
    cid = cap.token.id
    plan_key = (tool_server, tool_name, op)
    matching = cap.plans.get(plan_key)
    if matching is None:  # grants are immutable: which ones cover a tool is computed once
        matching = [(i, g) for i, g in enumerate(cap.grants) if grant_matches(g, tool_server, tool_name, op)]
        if len(cap.plans) < 4096:
            cap.plans[plan_key] = matching
    if not matching:
        allowed = describe_grants(cap.grants) or "nothing (it has no tool grants)"
        raise Deny(
            "scope",
            f"{_owner(cid, inherited)} does not allow {op.value} on {tool_server}/{tool_name}; it allows {allowed}. "
            "Use a capability whose scope includes this tool",
        )
    passing = []
    first_violation = None
    for i, g in matching:
        violation = check_constraints(g, params)
        if violation is None:
            passing.append((i, g))
        elif first_violation is None:
            first_violation = violation
    if not passing:
        raise Deny("constraints", f"{_owner(cid, inherited)}, {tool_server}/{tool_name}: {first_violation}")
    return passing


def select_grant(
    st: PolicyState,
    cap: _Cap,
    inherited: bool,
    passing: list[tuple[int, ToolGrant]],
    cost_t: tuple[int, str] | None,
    tool_server: str,
    tool_name: str,
) -> tuple[int, bool]:
    """The first passing grant of ``cap`` with budget left -> (index, has budgets)."""
    cid = cap.token.id
    first_fail: Deny | None = None
    for i, g in passing:
        limited = (
            g.max_invocations is not None or g.max_total_cost is not None or g.max_cost_per_invocation is not None
        )
        if not limited:
            return i, False
        try:
            check_budget(st, cid, _owner(cid, inherited), i, g, cost_t, tool_server, tool_name)
        except Deny as deny:
            if first_fail is None:
                first_fail = deny
            continue
        return i, True
    assert first_fail is not None
    raise first_fail


def check_budget(
    st: PolicyState,
    cid: str,
    owner: str,
    index: int,
    g: ToolGrant,
    cost_t: tuple[int, str] | None,
    tool_server: str,
    tool_name: str,
) -> None:
    used, spent = st.usage(cid, index)
    if g.max_invocations is not None and used >= g.max_invocations:
        raise Deny(
            "max_invocations",
            f"{owner} allows {g.max_invocations} invocation(s) of {g.server_id}/{g.tool_name} and "
            f"all {used} were used; issue a new capability for more calls",
        )
    if cost_t is None:
        if g.max_cost_per_invocation is not None or g.max_total_cost is not None:
            # fail closed: an undeclared cost would otherwise spend nothing against the budget
            limits = ", ".join(
                f"{name}={format_money(m.units, m.currency)}"
                for name, m in (("max_cost_per_invocation", g.max_cost_per_invocation),
                                ("max_total_cost", g.max_total_cost))
                if m is not None
            )
            raise Deny(
                "cost",
                f"call to {tool_server}/{tool_name} declares no cost, but {owner} has cost limits "
                f"({limits}); the call must declare its cost (cost= on evaluate, \"cost\" on /v1/evaluate)",
            )
        return
    units, currency = cost_t
    per = g.max_cost_per_invocation
    if per is not None:
        _same_currency(per.currency, currency, tool_server, tool_name, f"{owner} limits cost")
        if units > per.units:
            raise Deny(
                "cost",
                f"call to {tool_server}/{tool_name} costs {format_money(units, currency)}; {owner} allows at "
                f"most {format_money(per.units, per.currency)} per invocation",
            )
    total = g.max_total_cost
    if total is not None:
        _same_currency(total.currency, currency, tool_server, tool_name, f"{owner} budgets")
        if spent + units > total.units:
            raise Deny(
                "cost",
                f"call to {tool_server}/{tool_name} costs {format_money(units, currency)}; {owner} has spent or "
                f"holds {format_money(spent, currency)} of its {format_money(total.units, total.currency)} budget, "
                f"so only {format_money(total.units - spent, currency)} remain",
            )


def _same_currency(limit_currency: str, currency: str, tool_server: str, tool_name: str, who_limits: str) -> None:
    """Deny (``cost``) a call whose declared currency is not the limit's; ``who_limits`` e.g. "capability c budgets"."""
    if limit_currency != currency:
        raise Deny(
            "cost",
            f"call to {tool_server}/{tool_name} declares a cost in {currency}, but {who_limits} "
            f"in {limit_currency}; declare the cost in {limit_currency}",
        )


_Deny = Deny  # the name kernel.py used
