"""The `chio-durable` CLI as a user runs it, `--json` parsed: the app in this process (``run_cli``); the
installed script for a refusal (exit code and stderr of the real entry point); the demo's own run is
tests/sidecar/test_demo.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chio_sdk.models import CapabilityToken, ChioReceipt

from chio_sidecar_harness import run_cli, run_cli_process


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "chio-home"


def cli_json(*args: str) -> object:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_capability_and_receipt_commands(home: Path, tmp_path: Path) -> None:
    d = ["--data-dir", str(home)]
    created = cli_json("capability", "create", "--subject", "agent:cli", "--id", "cap-cli-1", "--ttl", "120",
                       "--grant", "files:read_file", "--grant", "web:search:Invoke,Read", "--max-invocations", "5",
                       "--json", *d)
    assert isinstance(created, dict) and created["status"] == "valid" and "reason" not in created
    token = CapabilityToken.model_validate(created["token"])
    assert token.id == "cap-cli-1" and token.subject == "agent:cli"
    assert token.expires_at - token.issued_at == 120
    assert [(g.server_id, g.tool_name, [o.value for o in g.operations], g.max_invocations)
            for g in token.scope.grants] == [("files", "read_file", ["Invoke"], 5),
                                             ("web", "search", ["Invoke", "Read"], 5)]

    scope_file = tmp_path / "scope.json"
    scope_file.write_text(json.dumps({"grants": [{"server_id": "files", "tool_name": "read_file",
                                                  "operations": ["Invoke"], "max_invocations": 2,
                                                  "constraints": [{"type": "path_prefix", "value": "/data/"}]}]}))
    child = cli_json("capability", "attenuate", "cap-cli-1", "--scope-file", str(scope_file), "--id", "cap-cli-child",
                     "--json", *d)
    assert isinstance(child, dict) and child["token"]["delegation_chain"][-1]["capability_id"] == "cap-cli-1"

    # receipts come from the kernel (same data dir, another process)
    from chio_kernel import Kernel

    kernel = Kernel(data_dir=home)
    allowed = kernel.evaluate("cap-cli-child", "files", "read_file", {"path": "/data/a"})
    denied = kernel.evaluate("cap-cli-child", "files", "read_file", {"path": "/etc/x"})
    assert allowed.is_allowed and denied.decision.guard == "constraints"

    listed = cli_json("receipts", "list", "--json", *d)  # newest first
    assert [r["id"] for r in listed] == [denied.id, allowed.id]  # type: ignore[union-attr]
    only = cli_json("receipts", "list", "--capability", "cap-cli-child", "--limit", "1", "--json", *d)
    assert [r["id"] for r in only] == [denied.id]  # type: ignore[union-attr]
    shown = cli_json("receipts", "show", denied.id, "--json", *d)
    assert ChioReceipt.model_validate(shown) == denied

    table = run_cli("receipts", "list", *d)
    assert table.returncode == 0 and "constraints" in table.stdout and allowed.id in table.stdout

    out_file = tmp_path / "receipts.jsonl"
    exported = run_cli("receipts", "export", "--out", str(out_file), *d)
    assert exported.returncode == 0, exported.stderr
    lines = out_file.read_text().splitlines()
    assert [ChioReceipt.model_validate_json(line).id for line in lines] == [allowed.id, denied.id]
    to_stdout = run_cli("receipts", "export", *d)
    assert to_stdout.stdout.splitlines() == lines

    verified = cli_json("receipts", "verify", "--json", *d)
    checkpoints = verified.pop("checkpoints")  # type: ignore[union-attr]
    chains = verified.pop("chains")  # type: ignore[union-attr]
    assert verified == {"ok": True, "count": 2, "first_broken_index": None, "reason": None}
    assert [(c["count"], c["ok"]) for c in chains] == [(2, True)]  # type: ignore[index, union-attr]
    assert checkpoints["ok"] is True and checkpoints["problems"] == []  # type: ignore[index]
    assert set(checkpoints) == {"ok", "count", "covered", "uncovered_chains", "problems"}  # type: ignore[arg-type]

    revoked = cli_json("capability", "revoke", "cap-cli-1", "--json", *d)
    assert set(revoked["revoked"]) == {"cap-cli-1", "cap-cli-child"}  # type: ignore[index]
    listed_caps = cli_json("capability", "list", "--json", *d)
    caps = {c["token"]["id"]: c["status"] for c in listed_caps}  # type: ignore[union-attr]
    assert caps == {"cap-cli-1": "revoked", "cap-cli-child": "revoked"}
    assert all("revoked" in c["reason"] for c in listed_caps)  # type: ignore[union-attr]
    assert cli_json("capability", "show", "cap-cli-child", *d) == listed_caps[1]  # type: ignore[index]
    assert kernel.evaluate("cap-cli-child", "files", "read_file", {"path": "/data/a"}).decision.guard == "revocation"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["capability", "create", "--subject", "s"], "--grant"),
        (["capability", "create", "--subject", "s", "--grant", "nocolon"], "server:tool"),
        (["capability", "create", "--subject", "s", "--grant", "a:b:Fly,Swim"], "unknown operation"),
        (["capability", "create", "--subject", "s", "--scope-file", "/nonexistent/scope.json"], "cannot read"),
        (["capability", "revoke", "cap-nope"], "cap-nope"),
        (["receipts", "show", "rcpt-nope"], "rcpt-nope"),
    ],
)
def test_errors_are_one_line_and_nonzero(home: Path, args: list[str], needle: str) -> None:
    if args[0] == "receipts" or args[1] == "revoke":
        run_cli("capability", "create", "--subject", "s", "--grant", "a:b", "--data-dir", str(home))
    r = run_cli(*args, "--data-dir", str(home))
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_scope_file_with_a_misspelt_field_is_refused(home: Path, tmp_path: Path) -> None:
    # pydantic would drop "constraint" (typo) and issue the grant WITHOUT its path constraint
    scope_file = tmp_path / "typo.json"
    scope_file.write_text(json.dumps({"grants": [{"server_id": "files", "tool_name": "read_file",
                                                  "operations": ["Invoke"],
                                                  "constraint": [{"type": "path_prefix", "value": "/data"}]}]}))
    r = run_cli("capability", "create", "--subject", "s", "--scope-file", str(scope_file), "--data-dir", str(home))
    assert r.returncode != 0
    assert "grants[0].constraint" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not home.exists()  # refused before any kernel was opened: nothing issued


def test_read_commands_refuse_a_missing_data_dir(tmp_path: Path) -> None:
    # the installed script: its exit code and its one stderr line, as a shell sees them
    r = run_cli_process("receipts", "list", "--data-dir", str(tmp_path / "typo"))
    assert r.returncode != 0 and "no kernel data directory" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "typo").exists()


def test_cli_and_demo_share_one_rendering_module_and_no_import_cycle() -> None:
    # the demo and the CLI both render through chio_kernel._render; neither imports the other's
    # module the other way round (the demo never imports the CLI)
    import ast
    import importlib.util

    def imported(module: str) -> set[str]:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert not any(m == "chio_kernel.cli" or m.startswith("chio_kernel.cli.") for m in imported("chio_kernel._demo"))
    assert "chio_kernel._render" in imported("chio_kernel._demo")
    cli_init = importlib.util.find_spec("chio_kernel.cli")
    assert cli_init is not None and cli_init.origin is not None
    cli_modules = [f"chio_kernel.cli.{p.stem}" for p in Path(cli_init.origin).parent.glob("_*.py")
                   if not p.stem.startswith("__")]
    # the CLI's command modules (its face, ``__init__``, only re-exports)
    assert "chio_kernel._render" in set().union(*(imported(m) for m in cli_modules))
