"""examples/prefect_research_pipeline.py runs: offline on the embedded kernel, and on the sidecar."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from chio_kernel import Kernel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prefect_research_pipeline.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prefect_research_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_output(out: str, kernel: Kernel) -> None:
    assert "result: {'documents': 2, 'best': 'Capability-based in practice'}" in out
    assert "denied: flow-scope: fs-srv/write_file (Invoke) is not granted" in out
    printed = re.findall(r"(rcpt-\S+)\s+(allow|deny)\s+(\S+)", out)
    stored = [(r.id, r.decision.verdict, f"{r.tool_server}/{r.tool_name}")
              for r in kernel.list_receipts(capability_id="cap-research-pipeline")]
    assert printed == stored
    # the envelope deny is in the kernel's chain too (issue 12 §2)
    assert [(p[1], p[2]) for p in printed] == [
        ("allow", "search-srv/search_documents"), ("allow", "search-srv/analyze_results"), ("deny", "fs-srv/write_file")
    ]


def test_example_runs_on_the_embedded_kernel(chio_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example().main(["--data-dir", str(chio_home), "--query", "capability-based security"]) == 0
    check_output(capsys.readouterr().out, Kernel(chio_home))


def test_example_runs_on_the_sidecar(
    sidecar_url: str, chio_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Kernel(chio_home).get_capability("cap-research-pipeline") is None  # the example provisions it
    assert load_example().main(["--sidecar-url", sidecar_url]) == 0
    out = capsys.readouterr().out
    assert f"kernel: sidecar {sidecar_url}" in out
    check_output(out, Kernel(chio_home))


def test_expected_denies_print_one_line_not_a_traceback(chio_home: Path, prefect_api: str) -> None:
    """Run as a user runs it (a process): it exits 0 and its expected deny is one line, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--data-dir", str(chio_home / "run")],
                          capture_output=True, text=True, timeout=600, env=env)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "Traceback" not in said and "The above exception" not in said
    assert [line for line in said.splitlines() if "is not granted by the scope of flow" in line and "ERROR" in line] == []
    assert sum(line.startswith("denied: flow-scope:") for line in done.stdout.splitlines()) == 1
