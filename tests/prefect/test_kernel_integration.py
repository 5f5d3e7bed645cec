"""The decorators on the real embedded kernel: idempotent retries, budgets, pickled denials."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectError, chio_flow, chio_task


def test_a_prefect_retry_reuses_the_allow_receipt_and_charges_once(chio_home: Path, captured_events: Any) -> None:
    local = LocalChioClient(chio_home)
    once = ChioScope(grants=[
        ToolGrant(server_id="pay-srv", tool_name="charge_card", operations=[Operation.INVOKE], max_invocations=1),
    ])
    local.kernel.create_capability(subject="agent", scope=once, capability_id="cap-pay")
    attempts: list[int] = []

    @chio_task(tool_server="pay-srv", retries=2, retry_delay_seconds=0)
    def charge_card(amount: int) -> str:
        attempts.append(amount)
        if len(attempts) == 1:
            raise TimeoutError("card network hiccup")  # a business failure: Prefect retries it
        return "charged"

    @chio_flow(scope=once, capability_id="cap-pay", chio_client=local)
    def checkout() -> list[str]:
        first = charge_card(42)
        try:  # a second, distinct call is a new task run: the budget of one is spent
            charge_card(42)
        except PermissionError as err:
            assert isinstance(err.__cause__, ChioPrefectError)
            return [first, err.__cause__.guard]
        return [first, "not denied"]

    assert checkout() == ["charged", "max_invocations"]
    assert attempts == [42, 42]  # body ran twice: the failed attempt and its retry
    receipts = local.kernel.list_receipts(capability_id="cap-pay")
    assert [r.decision.verdict for r in receipts] == ["allow", "deny"]  # retry: no second allow
    events = captured_events.chio()
    # both attempts of the first task run mirrored the same receipt
    assert [e.payload["receipt_id"] for e in events[:2]] == [receipts[0].id, receipts[0].id]
    assert events[2].payload["receipt_id"] == receipts[1].id


def test_denial_survives_pickling_with_its_cause() -> None:
    from chio_prefect.errors import ChioPermissionError, ChioPrefectConfigError

    cause = ChioPrefectError("rcpt-1", "scope", "not granted", {"verdict": "deny", "guard": "scope"})
    err = ChioPermissionError("chio denied")
    err.__cause__ = cause
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, PermissionError) and str(back) == "chio denied"
    assert isinstance(back.__cause__, ChioPrefectError)
    assert (back.__cause__.receipt_id, back.__cause__.guard, back.__cause__.decision) == (
        "rcpt-1", "scope", {"verdict": "deny", "guard": "scope"},
    )
    config = pickle.loads(pickle.dumps(ChioPrefectConfigError("pass x", at_call_time=True)))
    assert config.guard == "chio-prefect-config" and config.reason == "pass x"
