"""The policy step decides from the state it is handed: no store, no I/O of its own."""

from __future__ import annotations

import pytest
from chio_sdk.models import Constraint, Operation

from chio_kernel import Kernel
from chio_kernel._policy import Deny, decide

from kernel_helpers import grant, scope


class Counters:
    """An in-memory PolicyState: whatever the caller's transaction would have read."""

    def __init__(self, used: int = 0, in_window: int = 0) -> None:
        self.used, self.in_window = used, in_window

    def usage(self, capability_id: str, grant_index: int) -> tuple[int, int]:
        return self.used, 0

    def rate_window(self, capability_id: str, now: float, per_seconds: float) -> tuple[int, float | None]:
        return self.in_window, (now - 1 if self.in_window else None)


def _cap(kernel: Kernel, *constraints: Constraint, **limits: object):  # type: ignore[no-untyped-def]
    token = kernel.create_capability("agent:a", scope(grant("fs", "read", *constraints, **limits)), 3600,
                                     rate_limit=(2, 60.0))
    with kernel._read() as st:
        return kernel._load_cap(st, token.id)


def test_decide_charges_budgeted_grants_and_counts_the_rate_window(kernel: Kernel) -> None:
    cap = _cap(kernel, max_invocations=3)
    charges, rated = decide(Counters(used=2), [cap], "fs", "read", Operation.INVOKE, {}, None, 1000.0)
    assert charges == [(cap.token.id, 0)] and rated == [cap.token.id]


@pytest.mark.parametrize(
    ("state", "params", "guard"),
    [
        (Counters(used=3), {}, "max_invocations"),
        (Counters(in_window=2), {}, "rate-limit-guard"),
        (Counters(), {"path": "/etc/passwd"}, "constraints"),
    ],
)
def test_decide_denies_from_the_state_it_is_given(kernel: Kernel, state: Counters, params: dict[str, str],
                                                  guard: str) -> None:
    cap = _cap(kernel, Constraint.path_prefix("/data"), max_invocations=3)
    with pytest.raises(Deny) as denied:
        decide(state, [cap], "fs", "read", Operation.INVOKE, params, None, 1000.0)
    assert denied.value.guard == guard
    assert kernel.receipt_count() == 0  # deciding wrote nothing
