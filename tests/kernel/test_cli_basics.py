"""The CLI items of issue 12: --version, strict --grant parsing, user text never read as rich
markup or emoji, and the rate limit (its unit, shown by list/show/--json)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from chio_sdk.models import Operation
from typer.testing import CliRunner

from chio_kernel import Kernel
from chio_kernel.cli import CliError, app, parse_grant
from cli_run import run_cli, run_cli_process


def test_version_prints_the_installed_distribution_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"chio-durable {importlib.metadata.version('chio-durable')}"
    # the real command, as installed
    p = run_cli_process("--version")
    assert p.returncode == 0 and p.stdout.strip() == r.output.strip()


@pytest.mark.parametrize(
    ("spec", "server", "tool", "ops"),
    [
        ("files:read_file", "files", "read_file", ["Invoke"]),
        ("web:search:Invoke,Read", "web", "search", ["Invoke", "Read"]),
        ("web:search:readresult", "web", "search", ["ReadResult"]),  # case-insensitive
        ("files:*", "files", "*", ["Invoke"]),
        ("*:*", "*", "*", ["Invoke"]),
        ("files:*:Get", "files", "*", ["Get"]),
        ("mcp:fs:read:Invoke", "mcp", "fs:read", ["Invoke"]),  # a tool name with a colon: ops given
        ("model:function:my_fn:", "model", "function:my_fn:", ["Invoke"]),  # FunctionModel's name
    ],
)
def test_valid_grant_forms(spec: str, server: str, tool: str, ops: list[str]) -> None:
    g = parse_grant(spec)
    assert (g.server_id, g.tool_name, [o.value for o in g.operations]) == (server, tool, ops)


@pytest.mark.parametrize("spec", ["files:read_fle:Invok", "files:read:Fly,Read", "mcp:fs:read:Invok", "a:b:Invoke,"])
def test_a_misspelt_operation_is_refused_naming_the_valid_operations(spec: str) -> None:
    with pytest.raises(CliError) as info:
        parse_grant(spec)
    msg = str(info.value)
    assert spec in msg
    assert all(op.value in msg for op in Operation), msg


def test_cli_refuses_a_misspelt_operation_and_issues_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = run_cli("capability", "create", "--subject", "s", "--grant", "files:read_fle:Invok", "--data-dir", str(home))
    assert r.returncode == 1
    assert "Invok" in r.stderr and "Invoke, ReadResult, Read, Subscribe, Get, Delegate" in r.stderr
    assert "did you mean 'Invoke'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not home.exists()  # refused before a kernel was opened: nothing issued


def test_user_text_is_printed_literally_never_as_markup_or_emoji(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = ["--data-dir", str(home)]
    r = run_cli("capability", "create", "--subject", "[red]boss[/red]", "--id", "cap:b:1",
                "--grant", "a:b", "--grant", "x:[bold]t[/bold]:Read", *d)
    assert r.returncode == 0, r.stderr
    for out in (r.stdout, run_cli("capability", "list", *d).stdout):
        assert "a:b:Invoke" in out and "🅱" not in out  # rich would read ':b:' as an emoji code
        assert "[red]boss[/red]" in out and "x:[bold]t[/bold]:Read" in out and "cap:b:1" in out

    kernel = Kernel(data_dir=home)
    kernel.evaluate("cap:b:1", "a", "b", {})
    kernel.evaluate("cap:b:1", "x", "[bold]t[/bold]", {})  # denied: Read only
    kernel.close()
    listed = run_cli("receipts", "list", *d)
    assert listed.returncode == 0, listed.stderr
    assert "a/b" in listed.stdout and "x/[bold]t[/bold]" in listed.stdout and "cap:b:1" in listed.stdout
    assert "🅱" not in listed.stdout

    revoked = run_cli("capability", "revoke", "cap:b:1", *d)
    assert revoked.returncode == 0 and "cap:b:1" in revoked.stdout and "🅱" not in revoked.stdout
    missing = run_cli("receipts", "show", "rcpt:b:[red]x", *d)
    assert missing.returncode == 1 and "'rcpt:b:[red]x'" in missing.stderr, missing.stderr


def test_rate_limit_unit_is_documented_enforced_and_shown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = ["--data-dir", str(home)]
    help_text = " ".join(run_cli("capability", "create", "--help").stdout.split())
    assert "CALLS/SECONDS" in help_text and "sliding window" in help_text

    made = run_cli("capability", "create", "--subject", "s", "--id", "cap-rl", "--grant", "a:b",
                   "--rate-limit", "2/60", "--json", *d)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["rate_limit"] == {"max_calls": 2, "per_seconds": 60.0}
    assert run_cli("capability", "create", "--subject", "s", "--id", "cap-free", "--grant", "a:b", *d).returncode == 0

    # the unit is what the kernel enforces: 2 allowed calls per 60 s, the third denied
    kernel = Kernel(data_dir=home)
    verdicts = [kernel.evaluate("cap-rl", "a", "b", {}).decision for _ in range(3)]
    kernel.close()
    assert [v.verdict for v in verdicts] == ["allow", "allow", "deny"]
    assert verdicts[2].guard == "rate-limit-guard" and "2 calls per 60 s" in (verdicts[2].reason or "")

    listed = {c["token"]["id"]: c for c in json.loads(run_cli("capability", "list", "--json", *d).stdout)}
    assert listed["cap-rl"]["rate_limit"] == {"max_calls": 2, "per_seconds": 60.0}
    assert listed["cap-free"]["rate_limit"] is None
    shown = json.loads(run_cli("capability", "show", "cap-rl", *d).stdout)
    assert shown == listed["cap-rl"]
    assert "rate_limit" not in shown["token"]  # kernel-side state, beside the signed token
    table = run_cli("capability", "list", *d).stdout
    assert "rate limit" in table and "2/60s" in table
