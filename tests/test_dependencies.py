"""constraints.txt (the pinned set the README installs) is in step with pyproject.toml's ranges.

A bound moved in pyproject without regenerating the lock (docs/dependencies.md) fails here, before
a user installs a set that pip would have to reject or that nobody tested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["demo"],
             *project["optional-dependencies"]["test"]]
    return [Requirement(spec) for spec in specs]


def test_every_dependency_is_pinned_inside_its_range() -> None:
    pins = _pins()
    outside = {
        req.name: pins.get(canonicalize_name(req.name))
        for req in _requirements()
        if pins.get(canonicalize_name(req.name)) is None or not req.specifier.contains(pins[canonicalize_name(req.name)])
    }
    assert outside == {}, "regenerate constraints.txt (docs/dependencies.md): missing or outside the range"


def test_the_governed_libraries_have_upper_bounds() -> None:
    # the ranges end at the newest tested minor: an open range would let pip pick an untested one
    bounded = {req.name: str(req.specifier) for req in _requirements()
               if req.name in {"pydantic-ai-slim", "prefect", "temporalio"}}
    assert set(bounded) == {"pydantic-ai-slim", "prefect", "temporalio"}
    assert all("<" in spec and ">=" in spec for spec in bounded.values()), bounded


def test_readme_commands_install_the_pinned_set() -> None:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert block is not None
    demo, test = block[1].strip().splitlines()
    assert "-c constraints.txt" in demo and demo.endswith("chio-durable demo")
    assert "-c constraints.txt" in test and test.endswith("python -m pytest")
