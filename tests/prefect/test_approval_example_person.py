"""examples/approval_refund.py --wait-for-person, as CI plays it: the example runs as its own process
and waits; a second process plays the person with the CLI (`chio-durable approvals list --json`,
then `approvals approve`) on the same data directory, as a person would in another shell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from approval_person import play_the_person, start_example, stop_example

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "approval_refund.py"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["plain", "prefect"])
def test_the_example_waits_for_a_real_person(tmp_path: Path, engine: str, prefect_api: str) -> None:
    data_dir = tmp_path / "refunds"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200"}
    env.pop("CHIO_HOME", None)
    example = start_example([str(EXAMPLE), "--engine", engine, "--wait-for-person", "--wait-timeout", "300",
                             "--data-dir", str(data_dir)], env, stderr=subprocess.STDOUT)
    try:
        approval_id = play_the_person(data_dir, env, timeout=120, example=example)
        out, _ = example.communicate(timeout=300)
    finally:
        if example.poll() is None:
            stop_example(example)
    assert example.returncode == 0, out
    assert f"chio-durable approvals approve {approval_id}" in out
    assert "a person answered in the kernel: approved" in out
    assert "refunded 180 USD on o-1042" in out
    assert "Traceback" not in out
