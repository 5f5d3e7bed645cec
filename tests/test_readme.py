"""The README's complete Python samples run as written (in a fresh kernel data dir)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(code: str, tmp_path: Path, **env: str) -> str:
    script = tmp_path / "sample.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHIO_HOME": str(tmp_path / "chio"), **env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_in_process_sample_allows_then_denies_by_scope(tmp_path: Path) -> None:
    (code,) = [b for b in _python_blocks() if "asyncio.run(main())" in b]
    lines = _run(code, tmp_path).splitlines()
    assert lines[0].startswith("allow rcpt-")
    assert lines[1].startswith("deny scope ")


@pytest.mark.prefect
def test_prefect_sample_runs_governed(tmp_path: Path, prefect_api: str) -> None:
    (code,) = [b for b in _python_blocks() if "@chio_flow(" in b and "print(research_pipeline" in b]
    out = _run(code, tmp_path, PREFECT_API_URL=prefect_api)
    assert "about capability-based security" in out
    from chio_kernel import Kernel

    receipts = Kernel(data_dir=tmp_path / "chio").list_receipts(capability_id="cap-research-pipeline")
    assert [(r.tool_name, r.decision.verdict) for r in receipts] == [("search_documents", "allow")]
