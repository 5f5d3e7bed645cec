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


def _shim(bin_dir: Path) -> None:
    """``chio-durable`` and ``python`` on PATH as an installed venv has them (this interpreter)."""
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = bin_dir / "chio-durable"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m chio_kernel.cli "$@"\n')
    script.chmod(0o755)


@pytest.mark.slow
@pytest.mark.prefect
def test_walkthrough_every_readme_and_docs_block_in_order(tmp_path: Path, prefect_api: str) -> None:
    """Every README and docs block, in reading order, in ONE fresh home, as a new user runs them:
    a block that collides with an earlier one (the same capability id created twice, ...) fails here.
    Marked blocks are skipped with a reason or checked to parse (tests/walkthrough.py)."""
    import ast

    from walkthrough import all_blocks

    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    home.mkdir()
    work.mkdir()
    _shim(bin_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHIO_", "PREFECT_"))}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PREFECT_API_URL=prefect_api,
               PREFECT_HOME=str(home / ".prefect"), COLUMNS="120")
    ran, failures = [], []
    for n, block in enumerate(all_blocks()):
        if block.mark == "skip":
            assert block.why, f"{block.where}: a skipped block says why"
            continue
        if block.mark == "fragment":
            if block.lang == "python":
                compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            else:
                assert subprocess.run(["bash", "-n"], input=block.code, text=True).returncode == 0, block.where
            continue
        if block.lang == "python":
            script = work / f"block_{n:02d}.py"
            script.write_text(block.code)
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        ran.append(block.where)
        if done.returncode != 0:
            failures.append(f"{block.where} exited {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}")
    assert failures == [], "\n\n".join(failures)
    assert "README.md:47" in ran or any(w.startswith("README.md") for w in ran)
