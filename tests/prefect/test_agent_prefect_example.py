"""examples/prefect_governed_agent.py runs offline (scripted model) against the real Prefect API."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rich.console import Console

from chio_kernel import Kernel

pytestmark = pytest.mark.prefect

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prefect_governed_agent.py"


def test_example_runs_offline_and_shows_allow_deny_and_revocation(chio_home: Path) -> None:
    spec = importlib.util.spec_from_file_location("prefect_governed_agent_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    console = Console(record=True, width=160)

    assert module.main(["--data-dir", str(chio_home)], console=console) == 0

    out = console.export_text()
    assert "scripted model" in out
    assert "researcher/fetch" in out and "constraints" in out  # the fetch outside *.example.org
    assert "after revocation: denied (guard revocation" in out
    receipts = Kernel(data_dir=chio_home).list_receipts()
    verdicts = [(r.tool_server, r.tool_name, r.decision.is_allowed) for r in receipts]
    assert verdicts.count(("researcher", "fetch", False)) == 1
    assert verdicts.count(("researcher", "fetch", True)) == 1
    assert verdicts[-1] == ("model", "scripted-research", False)  # revoked: the model call is denied
    assert Kernel(data_dir=chio_home).verify_chain().ok
