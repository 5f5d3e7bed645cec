"""The demo, piped (not a terminal): every receipt id whole on one line, one table layout in every section."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ID = re.compile(r"rcpt-[0-9a-f-]*")
FULL_ID = re.compile(r"^rcpt-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.mark.slow
def test_piped_demo_keeps_receipt_ids_whole_and_tables_alike(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "chio_kernel.cli", "demo", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout

    from chio_kernel import Kernel

    stored = {r.id for r in Kernel(data_dir=data_dir).list_receipts()}
    shown = [m.group(0) for m in ID.finditer(out)]
    cut = [s for s in shown if not FULL_ID.match(s)]
    assert cut == [], f"receipt ids cut or wrapped: {cut}"
    assert set(shown) <= stored
    # the three receipt tables (kernel, Prefect agent, Temporal agent) list their receipts in full
    assert len(set(shown)) >= 5 + 6 + 8

    headers = [re.sub(r"\s+", " ", line.strip("┃ ")) for line in out.splitlines() if line.startswith("┃ #")]
    assert len(headers) == 3, headers
    assert len(set(headers)) == 1 and headers[0].split(" ┃ ") == ["#", "receipt", "call", "verdict", "guard"], headers
    assert "telemetry" not in (out + done.stderr).lower()
