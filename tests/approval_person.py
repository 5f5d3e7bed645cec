"""The person of an approval example, played by another process: the CLI on the example's data dir."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["play_the_person"]


def play_the_person(
    data_dir: Path, env: dict[str, str], outcome: str = "approve", timeout: float = 300,
    example: subprocess.Popen[str] | None = None,
) -> str:
    """Another process, the CLI: wait for the pending approval, then answer it (fails at once, with
    the ``example``'s output, if the example process ends first)."""
    cli = [sys.executable, "-m", "chio_kernel.cli"]
    deadline = time.monotonic() + timeout
    listed: subprocess.CompletedProcess[str] | None = None
    while time.monotonic() < deadline:
        if example is not None and example.poll() is not None:
            out, err = example.communicate()
            said = ((out or "") + "\n" + (err or ""))[-6000:]
            raise AssertionError(f"the example exited {example.returncode} before asking a person:\n{said}")
        if data_dir.exists():
            listed = subprocess.run([*cli, "approvals", "list", "--json", "--data-dir", str(data_dir)],
                                    capture_output=True, text=True, env=env, timeout=120)
            pending = json.loads(listed.stdout) if listed.returncode == 0 and listed.stdout.strip() else []
            if pending:
                approval_id = str(pending[0]["id"])
                answered = subprocess.run([*cli, "approvals", outcome, approval_id, "--reason", "checked by CI",
                                           "--data-dir", str(data_dir)], capture_output=True, text=True, env=env,
                                          timeout=120)
                assert answered.returncode == 0, answered.stderr
                return approval_id
        time.sleep(0.5)
    said = f"; the last `approvals list` exited {listed.returncode}: {listed.stderr[-1000:]}" if listed is not None else ""
    if example is not None:  # what the example was doing all that time
        example.kill()
        out, err = example.communicate()
        said += "; the example said:\n" + ((out or "") + "\n" + (err or ""))[-6000:]
    raise AssertionError(f"the example never asked for a person in {timeout:.0f} s{said}")
