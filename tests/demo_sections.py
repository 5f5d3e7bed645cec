"""The demo's engine sections (entry points ``chio.demo_sections``) for a demo run in a subprocess.

The sections are declared in ``pyproject.toml`` and read from the installed distribution's metadata.
An editable install made before they were declared has none; then ``demo_env`` declares
pyproject's entry points in a throwaway dist-info that the subprocess finds first on its path (as
tests/dbos does for the approval wakers), so the demo runs the sections this source tree declares.
"""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

__all__ = ["declared_sections", "demo_env"]

GROUP = "chio.demo_sections"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_sections() -> dict[str, str]:
    """pyproject's ``[project.entry-points."chio.demo_sections"]``: name -> ``module:function``."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return dict(project["entry-points"][GROUP])


def demo_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a demo subprocess that finds pyproject's sections."""
    env = dict(os.environ if env is None else env)
    installed = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    if installed == declared_sections():
        return env
    info = tmp_path / "demo-sections" / "chio_demo_sections-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chio-demo-sections\nVersion: 0\n", encoding="utf-8")
    lines = "".join(f"{name} = {value}\n" for name, value in declared_sections().items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}", encoding="utf-8")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(info.parent), env.get("PYTHONPATH", "")) if p)
    return env
