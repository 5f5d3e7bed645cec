"""The policy step: guards, budgets and rate limits in, a decision out. No I/O of its own: the
counters it needs (budget usage, rate windows) come from the caller's store transaction through
:class:`PolicyState`, and what an allow must charge is returned, not written."""

from __future__ import annotations


def _owner(capability_id: str, inherited: bool) -> str:
    """Who set a limit, for deny reasons."""
    if inherited:
        return f"ancestor capability {capability_id} (whose limits this capability inherits)"
    return f"capability {capability_id}"


class _Deny(Exception):
    def __init__(self, guard: str, reason: str) -> None:
        self.guard = guard
        self.reason = reason
