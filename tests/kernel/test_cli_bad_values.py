"""Every option of every CLI command, fed bad values, answers with one sentence (exit 1 or 2, no
traceback, no raw Python error name): what a user mistypes is answered in words."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from chio_kernel import Kernel
from chio_kernel.cli import app
from cli_inprocess import run_cli_in_process
from kernel_helpers import grant, scope

#: commands that serve or follow forever: their options are checked by their own tests
SKIP = {("sidecar",), ("ui",), ("demo",), ("receipts", "tail")}
BAD = ["", "-1", str(2**63), "abc", "1e999", "x" * 5000, "afile"]
RAW = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Overflow|OutOfRange)\b:|Traceback|Errno|psycopg\.")


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    root = get_command(app)
    ctx = type(root).context_class(root)
    found = []
    for name in root.list_commands(ctx):  # type: ignore[attr-defined]
        cmd = root.get_command(ctx, name)  # type: ignore[attr-defined]
        if hasattr(cmd, "list_commands"):
            found += [((name, sub), cmd.get_command(ctx, sub)) for sub in cmd.list_commands(ctx)]
        else:
            found.append(((name,), cmd))
    return [(path, cmd) for path, cmd in found if path not in SKIP]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-values")
    kernel = Kernel(root / "kernel")
    kernel.create_capability("agent:a", scope(grant("fs", "read")), 3600, capability_id="cap-ok")
    kernel.close()
    (root / "afile").write_text("")
    return root


def _valid(param: Any, home: Path) -> list[str]:
    """A valid value for a required parameter, so the bad one under test is what is judged."""
    name = param.name
    value = {"subject": "agent:x", "grant": "fs:read", "units": "1", "currency": "USD", "op_id": "op-1",
             "public_key": "0" * 64}.get(name, "cap-ok" if "id" in name else "x")
    return [value] if param.param_type_name == "argument" else [param.opts[0], value]


@pytest.mark.slow  # ~20 commands x their options x 7 values, each a CLI run (minutes on a busy machine)
@pytest.mark.parametrize(("path", "cmd"), _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_option_answers_bad_values_in_words(
    home: Path, path: tuple[str, ...], cmd: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(home)  # a relative bad value lands here, not in the checkout
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE"}}
    env["COLUMNS"] = "200"
    problems: list[str] = []
    options = [p for p in cmd.params if p.param_type_name == "option" and not p.is_flag]
    for opt in options:
        required = [a for p in cmd.params if p.required and p is not opt for a in _valid(p, home)]
        for bad in BAD:
            value = str(home / bad) if bad == "afile" else bad
            args = [*path, *required, opt.opts[0], value]
            if opt.name != "data_dir":
                args += ["--data-dir", str(home / "kernel")]
            done = run_cli_in_process(args, env)
            said = done.stdout + done.stderr
            if RAW.search(said):
                problems.append(f"{' '.join(args)[:160]}\n    {said.strip()[:300]}")
    assert problems == [], "\n".join(problems)
