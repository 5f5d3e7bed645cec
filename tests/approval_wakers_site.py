"""A throwaway distribution declaring pyproject.toml's ``chio.approval_wakers`` entry points, for a
CLI subprocess of a venv installed before those entry points existed (an install of chio-durable
declares them itself)."""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["approval_wakers_site", "declared_wakers"]

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_wakers() -> dict[str, str]:
    """``{engine: "module:function"}`` as pyproject.toml declares them."""
    project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))
    return dict(project["project"]["entry-points"]["chio.approval_wakers"])


def approval_wakers_site(root: Path) -> Path:
    """``root`` holding a ``.dist-info`` with the declared wakers: put it on the subprocess's PYTHONPATH."""
    info = root / "chio_approval_wakers-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chio-approval-wakers\nVersion: 0.1\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in declared_wakers().items())
    (info / "entry_points.txt").write_text(f"[chio.approval_wakers]\n{lines}", encoding="utf-8")
    return root
