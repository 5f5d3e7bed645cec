"""The demo as a user runs it: the installed ``chio-durable`` script, piped (not a terminal), once for
the module. What it shows (allow, the scope, constraints and revocation denies, the engine sections),
every receipt id whole on one line, one table layout in every section, and every receipt verifying
under a verifier that is not the kernel's."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from chio_sdk.models import ChioReceipt
from demo_sections import demo_env

from chio_kernel import Kernel
from chio_sidecar_harness import cli_cmd, run_cli

ID = re.compile(r"rcpt-[0-9a-f-]*")
FULL_ID = re.compile(r"^rcpt-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class DemoRun:
    data_dir: Path
    done: subprocess.CompletedProcess[str]
    receipts: list[ChioReceipt]  # as the kernel stores them, newest last


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One run of the installed script (``python -m chio_kernel.cli`` without one), stdout piped."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in demo_env(tmp).items() if k != "CHIO_HOME"}
    done = subprocess.run(
        [*cli_cmd(), "demo", "--data-dir", str(tmp / "demo")], capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with Kernel(data_dir=tmp / "demo") as kernel:
        receipts = kernel.list_receipts()
    return DemoRun(tmp / "demo", done, receipts)


@pytest.mark.slow
def test_demo_shows_allow_scope_deny_and_revocation_deny(demo: DemoRun) -> None:
    out = demo.done.stdout
    assert "✓ allow" in out
    assert "guard scope" in out and "guard constraints" in out and "guard revocation" in out
    assert "Chain verified" in out
    # the engine sections ran for real (the test extra brings the Temporal CLI) and the whole demo's
    # receipts verify as one chain
    assert "2. Prefect agent" in out and "3. Temporal agent" in out
    assert "No Temporal CLI found" not in out and "did not behave" not in out
    assert "receipts of the demo verify as one chain" in out
    assert [r.decision.guard for r in demo.receipts[:5]] == [None, None, "scope", "constraints", "revocation"]


@pytest.mark.slow
def test_every_demo_receipt_verifies_as_exported_and_listed(demo: DemoRun) -> None:
    # under the Chio rule, with a verifier that is not the kernel's (kernel, Prefect and Temporal sections)
    from independent_verifier import assert_receipt_verifies

    exported = run_cli("receipts", "export", "--data-dir", str(demo.data_dir))
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert len(lines) == len(demo.receipts) > 5
    for line in lines:
        assert_receipt_verifies(json.loads(line))
    listed = run_cli("receipts", "list", "--json", "--limit", "10000", "--data-dir", str(demo.data_dir))
    assert listed.returncode == 0, listed.stderr
    for receipt in json.loads(listed.stdout):
        assert_receipt_verifies(receipt)


@pytest.mark.slow
def test_piped_demo_keeps_receipt_ids_whole_and_tables_alike(demo: DemoRun) -> None:
    out = demo.done.stdout
    stored = {r.id for r in demo.receipts}
    shown = [m.group(0) for m in ID.finditer(out)]
    cut = [s for s in shown if not FULL_ID.match(s)]
    assert cut == [], f"receipt ids cut or wrapped: {cut}"
    assert set(shown) <= stored
    # the three receipt tables (kernel, Prefect agent, Temporal agent) list their receipts in full
    assert len(set(shown)) >= 5 + 6 + 8

    headers = [re.sub(r"\s+", " ", line.strip("┃ ")) for line in out.splitlines() if line.startswith("┃ #")]
    assert len(headers) == 3, headers
    assert len(set(headers)) == 1 and headers[0].split(" ┃ ") == ["#", "receipt", "call", "verdict", "guard"], headers
    assert "telemetry" not in (out + demo.done.stderr).lower()
