"""Real models: a missing provider extra is a one-line instruction, never a traceback (examples via subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

import pytest
from packaging.requirements import Requirement

from chio_durable.agent import model_setup_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_openai(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import openai`` fails, whether or not the extra is installed here."""
    hidden = tmp_path / "hidden" / "openai"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'openai' (hidden by the test)\")\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(hidden.parent), env.get("PYTHONPATH", "")])
    env["CHIO_HOME"] = str(tmp_path / "chio-home")
    return env


@pytest.mark.parametrize("example", ["temporal_governed_agent.py", "prefect_governed_agent.py"])
def test_example_with_a_real_model_but_no_extra_says_what_to_install(example: str, no_openai: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--model", "openai:gpt-4o"],
        capture_output=True, text=True, timeout=120, env=no_openai, cwd=ROOT,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert 'pip install "chio-durable[openai]"' in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_model_setup_problem() -> None:
    assert model_setup_problem("test") is None  # pydantic-ai's TestModel needs nothing
    assert "Unknown model" in (model_setup_problem("no-such-provider:x") or "")


def test_the_extras_are_declared_in_the_dependency_range() -> None:
    # The provider extras take pydantic-ai-slim in exactly the core's range, so an extra never pulls
    # in a pydantic-ai that the governance was not tested on.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "pydantic-ai-slim"]
    assert len(core) == 1 and "<" in str(core[0].specifier) and ">=" in str(core[0].specifier)
    for extra in ("openai", "anthropic", "dbos"):
        reqs = [Requirement(d) for d in project["optional-dependencies"][extra]]
        pai = [r for r in reqs if r.name == "pydantic-ai-slim"]
        assert len(pai) == 1 and extra in pai[0].extras, (extra, reqs)
        assert pai[0].specifier == core[0].specifier, (extra, str(pai[0].specifier), str(core[0].specifier))
