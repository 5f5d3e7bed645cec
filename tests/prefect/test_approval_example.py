"""examples/approval_refund.py: the agent asks to refund, waits for a person, goes on (plain pydantic-ai
agent, and ChioPrefectAgent on the real Prefect API)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rich.console import Console

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval_refund.py"


@pytest.mark.parametrize("engine", ["plain", "prefect"])
def test_example_waits_for_the_person_then_refunds_once(chio_home: Path, engine: str) -> None:
    spec = importlib.util.spec_from_file_location("approval_refund_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    console = Console(record=True, width=200)
    assert module.main(["--engine", engine, "--data-dir", str(chio_home)], console=console) == 0
    text = console.export_text()
    assert "chio-durable approvals approve apr-" in text and f"--data-dir {chio_home}" in text
    assert "refunded 180 USD on o-1042" in text
    assert "'pending_approval', 'approval_resolution', 'allow'" in text
    assert module.REFUNDED == ["o-1042"]
