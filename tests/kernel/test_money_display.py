"""Money shown to people is in its currency (ISO 4217 minor-unit digits); JSON keeps integer minor units."""

from __future__ import annotations

import json
from pathlib import Path

from chio_sdk.models import MonetaryAmount

from chio_kernel import Kernel
from chio_kernel._money import format_money
from cli_run import run_cli
from kernel_helpers import grant, scope


def test_format_money_uses_each_currencys_minor_unit() -> None:
    assert format_money(500, "USD") == "USD 5.00"
    assert format_money(450, "usd") == "USD 4.50"
    assert format_money(500, "JPY") == "JPY 500"
    assert format_money(1250, "BHD") == "BHD 1.250"
    assert format_money(123456789, "USD") == "USD 1,234,567.89"
    assert format_money(7, "CREDITS") == "7 CREDITS (minor units)"  # not ISO 4217: raw units, said so


def test_deny_reasons_speak_in_the_currency(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    budget = grant("llm", "complete", max_total_cost=MonetaryAmount(units=500, currency="USD"))
    cap = kernel.create_capability("agent:a", scope(budget), 3600).id
    assert kernel.evaluate(cap, "llm", "complete", {"n": 1}, cost={"units": 450, "currency": "USD"}).decision.verdict == "allow"
    r = kernel.evaluate(cap, "llm", "complete", {"n": 2}, cost={"units": 100, "currency": "USD"})
    assert r.decision.reason == (
        f"call to llm/complete costs USD 1.00; capability {cap} has spent or holds USD 4.50 of its USD 5.00 "
        "budget, so only USD 0.50 remain"
    )
    yen = kernel.create_capability("agent:a", scope(grant("llm", "complete", max_cost_per_invocation=MonetaryAmount(units=500, currency="JPY"))), 3600).id
    r = kernel.evaluate(yen, "llm", "complete", {}, cost={"units": 900, "currency": "JPY"})
    assert "costs JPY 900" in r.decision.reason and "at most JPY 500 per invocation" in r.decision.reason
    kernel.close()


def test_approval_summary_and_reason_speak_in_the_currency(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    cap = kernel.create_capability("agent:refunds", {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}]}]}).id
    r = kernel.evaluate(cap, "shop", "refund", {"o": 1}, cost={"units": 150, "currency": "USD"})
    meta = r.metadata["pending_approval"]
    assert meta["summary"].endswith("cost USD 1.50")
    assert "costs USD 1.50, at or above the approval threshold USD 1.00" in r.decision.reason
    kernel.close()


def test_budgets_show_in_currency_and_json_in_minor_units(tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    budget = grant("llm", "complete", max_total_cost=MonetaryAmount(units=500, currency="USD"))
    cap = kernel.create_capability("agent:a", scope(budget), 3600).id
    held = kernel.evaluate(cap, "llm", "complete", {}, cost={"units": 450, "currency": "USD"})
    kernel.close()
    table = run_cli("budgets", "show", cap, "--data-dir", str(tmp_path))
    assert table.returncode == 0, table.stderr
    assert "USD 5.00" in table.stdout and "USD 4.50" in table.stdout and "USD 0.50" in table.stdout
    assert "500 USD" not in table.stdout
    rows = json.loads(run_cli("budgets", "show", cap, "--data-dir", str(tmp_path), "--json").stdout)["budgets"]
    assert (rows[0]["max_total_cost"], rows[0]["held"], rows[0]["remaining"]) == (500, 450, 50)
    settled = run_cli("budgets", "settle", held.id, "--units", "300", "--currency", "USD", "--op-id", "s1",
                      "--data-dir", str(tmp_path))
    assert settled.returncode == 0, settled.stderr
    assert "captured USD 3.00" in settled.stdout and "hold USD 4.50" in settled.stdout
