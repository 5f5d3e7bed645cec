"""Helpers shared by the kernel tests (a uniquely named module: several conftest.py files exist)."""

from __future__ import annotations

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant


class Clock:
    """A movable clock for the kernel (``Kernel(clock=...)``)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def grant(server: str = "fs", tool: str = "read", *constraints: Constraint, **limits: object) -> ToolGrant:
    return ToolGrant(
        server_id=server, tool_name=tool, operations=[Operation.INVOKE], constraints=list(constraints), **limits
    )


def scope(*grants: ToolGrant) -> ChioScope:
    return ChioScope(grants=list(grants))
