"""A workflow that tells whether the sandbox gave it the host's ``beartype`` or imported one of its own."""

from __future__ import annotations

from temporalio import workflow

import beartype  # passed through: the host's module; otherwise the sandbox imports a copy for this run

with workflow.unsafe.imports_passed_through():
    import host_beartype


@workflow.defn
class BeartypeProbe:
    @workflow.run
    async def run(self) -> bool:
        return beartype is host_beartype.MODULE
