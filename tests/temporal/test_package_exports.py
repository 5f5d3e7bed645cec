"""What ``import chio_temporal`` loads and exports: pydantic-ai only on demand, chio_durable's OnDeny."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.temporal]


def test_import_chio_temporal_does_not_import_pydantic_ai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chio_temporal\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'pydantic_ai'], 'pydantic_ai imported eagerly'\n"
        "from chio_temporal import ChioTemporalAgent\n"
        "from chio_temporal._agent import ChioTemporalAgent as same\n"
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


def test_on_deny_is_chio_durables() -> None:
    import chio_durable.agent
    import chio_temporal._agent

    assert chio_temporal._agent.OnDeny is chio_durable.agent.OnDeny
