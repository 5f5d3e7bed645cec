"""The person of an approval example, played by another process: the CLI on the example's data dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["play_the_person", "start_example", "stop_example"]


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
            code = example.returncode
            raise AssertionError(f"the example exited {code} before asking a person:\n{stop_example(example)}")
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
    if example is not None:  # what the example was doing all that time: its threads' stacks
        said += "; the example said:\n" + stop_example(example)
    raise AssertionError(f"the example never asked for a person in {timeout:.0f} s{said}")


def start_example(args: list[str], env: dict[str, str], stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """Run an example in its own session (its Temporal dev server too), Python's fault handler on."""
    return subprocess.Popen([sys.executable, "-X", "faulthandler", *args], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env, start_new_session=True)


def stop_example(example: subprocess.Popen[str]) -> str:
    """Stop an example that is stuck and say what it printed: SIGABRT first (the fault handler prints
    every thread's stack), then SIGKILL to its whole session (a dev server it started holds the
    output pipes open: without that, reading them would never end)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(example.pid, signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        example.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(example.pid, signal.SIGKILL)
    try:
        out, err = example.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return "(its output could not be read)"
    return ((out or "") + "\n" + (err or ""))[-8000:]
