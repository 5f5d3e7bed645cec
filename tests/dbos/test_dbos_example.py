"""examples/dbos_governed_agent.py runs offline and exits 0, showing an allow, a deny and the receipts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs_offline() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path]), "COLUMNS": "160"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "dbos_governed_agent.py")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "receipt chain verified" in done.stdout
    assert "deny" in done.stdout and "allow" in done.stdout and "capability__chio.evaluate" in done.stdout
    assert "never awaited" not in done.stderr
