"""Ids are never cut: at 80 columns, and piped (no terminal: no $COLUMNS), every id prints whole."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from chio_kernel import Kernel
from cli_inprocess import run_cli_in_process
from kernel_helpers import grant, scope


def _env(columns: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE", "COLUMNS", "LINES"}}
    if columns is not None:
        env["COLUMNS"] = columns
    return env


def _whole(text: str, ids: list[str]) -> None:
    for i in ids:
        assert i in text, f"{i} is not shown whole in:\n{text}"
    assert "…" not in text


def _approvals(tmp_path: Path, n: int) -> list[str]:
    kernel = Kernel(tmp_path)
    cap = kernel.create_capability("agent:refunds-with-a-long-subject-name", {"grants": [{
        "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"],
        "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 0}}]}]}).id
    ids = [kernel.evaluate(cap, "shop", "refund", {"order": i}).metadata["pending_approval"]["approval_id"]
           for i in range(n)]
    kernel.close()
    return ids


@pytest.mark.parametrize("columns", ["80", "60", None])
def test_approvals_list_shows_every_pending_id_whole(tmp_path: Path, columns: str | None) -> None:
    ids = _approvals(tmp_path, 3)
    shown = run_cli_in_process(["approvals", "list", "--data-dir", str(tmp_path)], _env(columns))
    assert shown.returncode == 0, shown.stderr
    _whole(shown.stdout, ids)
    footer = shown.stdout[shown.stdout.index("approve with:"):]
    _whole(footer, ids)  # the footer names every pending id, not only the oldest
    assert all(len(line) <= int(columns or 80) for line in shown.stdout.splitlines() if "apr-" not in line)


def test_approvals_footer_says_how_to_list_many(tmp_path: Path) -> None:
    _approvals(tmp_path, 12)
    shown = run_cli_in_process(["approvals", "list", "--data-dir", str(tmp_path)], _env("80"))
    assert "approvals list --json" in shown.stdout


@pytest.mark.parametrize("columns", ["80", None])
def test_receipts_list_ids_whole_at_80_and_piped(tmp_path: Path, columns: str | None) -> None:
    kernel = Kernel(tmp_path)
    cap = kernel.create_capability("agent:a", scope(grant("search-server-with-long-name", "*")), 3600).id
    ids = [kernel.evaluate(cap, "search-server-with-long-name", f"tool{i}", {}).id for i in range(3)]
    ids.append(kernel.evaluate(cap, "other", "x", {}).id)  # a deny
    kernel.close()
    shown = run_cli_in_process(["receipts", "list", "--data-dir", str(tmp_path)], _env(columns))
    assert shown.returncode == 0, shown.stderr
    _whole(shown.stdout, ids)
    assert re.search(r"\ballow\b", shown.stdout) and re.search(r"\bdeny\b", shown.stdout)
    assert "not shown at this width" in shown.stdout  # fewer columns, said so
    wide = run_cli_in_process(["receipts", "list", "--data-dir", str(tmp_path)], _env("250"))
    _whole(wide.stdout, [*ids, cap])
    assert "not shown at this width" not in wide.stdout
