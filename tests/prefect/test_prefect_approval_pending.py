"""``@chio_task`` on a call the kernel sends to a person (``pending_approval``): until the Prefect
layer learns to pause for the approval, the task is refused like a deny (fail closed) and its body
never runs (issue 10; docs/approvals.md)."""

from __future__ import annotations

from pathlib import Path

from chio_sdk.models import ChioScope

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectError, chio_flow, chio_task


def test_a_pending_approval_does_not_run_the_task(chio_home: Path) -> None:
    local = LocalChioClient(chio_home)
    scope = ChioScope.model_validate({"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": 0}],  # every call needs a person
    }]})
    local.kernel.create_capability(subject="agent", scope=scope, capability_id="cap-refund-pending")
    ran: list[str] = []

    @chio_task(tool_server="shop")
    def refund(order: str) -> str:
        ran.append(order)
        return "refunded"

    @chio_flow(scope=scope, capability_id="cap-refund-pending", chio_client=local)
    def support() -> str:
        try:
            refund("A-17")
        except PermissionError as err:
            assert isinstance(err.__cause__, ChioPrefectError)
            return f"refused: {err.__cause__.guard}"
        return "ran"

    assert support() == "refused: approval"
    assert ran == []
    receipts = local.kernel.list_receipts(capability_id="cap-refund-pending")
    assert [r.decision.verdict for r in receipts] == ["pending_approval"]
    assert [a["tool_name"] for a in local.kernel.list_approvals()] == ["refund"]
