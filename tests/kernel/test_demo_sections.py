"""The demo's engine sections: entry points of ``chio.demo_sections``, loaded by the kernel's demo
without importing any engine (it runs with the kernel's dependencies only)."""

from __future__ import annotations

import io
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from rich.console import Console

from chio_kernel import _demo as demo
from demo_sections import declared_sections

GROUP = demo.SECTIONS_GROUP


def _section(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def _run(data_dir: Path, sections: list[EntryPoint] | None) -> tuple[int, str]:
    out = io.StringIO()
    code = demo.run(Console(file=out, width=200, color_system=None), data_dir, sections=sections)
    return code, out.getvalue()


@pytest.fixture
def engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three throwaway section modules on the path: one with a TITLE, one without, one failing with a hint."""
    root = tmp_path / "engines"
    root.mkdir()
    (root / "chio_test_alpha.py").write_text(textwrap.dedent('''
        TITLE = "Alpha agent"
        def run_demo(console, data_dir):
            console.print(f"alpha ran in {data_dir.name}")
    '''))
    (root / "chio_test_beta.py").write_text(textwrap.dedent('''
        def run_demo(console, data_dir):
            console.print("beta ran")
    '''))
    (root / "chio_test_broken.py").write_text(textwrap.dedent('''
        TITLE = "Broken agent"
        def failure_hint(error):
            return "set FIX_IT=1" if "slow" in str(error) else None
        def run_demo(console, data_dir):
            raise TimeoutError("server too slow")
    '''))
    monkeypatch.syspath_prepend(str(root))
    return root


def test_sections_run_after_the_kernel_numbered_with_their_titles(engines: Path, tmp_path: Path) -> None:
    code, out = _run(tmp_path / "demo", [_section("alpha", "chio_test_alpha:run_demo"),
                                         _section("beta", "chio_test_beta:run_demo")])
    assert code == 0, out
    lines = out.splitlines()
    rules = [line.strip("─ ") for line in lines if line.startswith("─")]
    assert rules[:3] == ["1. The embedded kernel", "2. Alpha agent", "3. beta"]  # no TITLE: the entry point's name
    assert "alpha ran in demo" in out and "beta ran" in out


def test_a_failing_section_prints_its_hint_and_fails_the_demo(engines: Path, tmp_path: Path) -> None:
    code, out = _run(tmp_path / "demo", [_section("broken", "chio_test_broken:run_demo"),
                                         _section("beta", "chio_test_beta:run_demo")])
    assert code == 1
    assert "The Broken agent section failed: set FIX_IT=1" in out and "TimeoutError" not in out
    assert "3. beta" in out and "beta ran" in out  # the next section still runs
    assert "1 section(s) did not behave as expected." in out


class _NotInstalled:
    """A meta path finder for which the engines' own dependencies (Prefect, Temporal) are not installed."""

    MISSING = ("prefect", "temporalio")

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_engines_that_are_not_importable_are_skipped_in_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernel's dependencies only: the engines' frameworks are missing; the declared sections say so
    gone = ("chio_prefect", "chio_temporal", *_NotInstalled.MISSING)
    for name in [m for m in sys.modules if m.split(".")[0] in gone]:
        monkeypatch.delitem(sys.modules, name)  # restored afterwards
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(), *sys.meta_path])
    sections = [_section(name, value) for name, value in sorted(declared_sections().items())]
    code, out = _run(tmp_path / "demo", sections)
    assert code == 0, out  # the kernel section behaved; missing engines are not failures
    skipped = [line for line in out.splitlines() if "section is skipped" in line]
    assert skipped == [  # Prefect's demo imports its framework when it runs, Temporal's at import
        "The Prefect agent section is skipped (chio_prefect._demo:run_demo): ModuleNotFoundError: "
        "No module named 'prefect'",
        "The temporal section is skipped (chio_temporal._demo:run_demo): ModuleNotFoundError: "
        "No module named 'temporalio'",
    ]
    assert "Traceback" not in out and "failed" not in out and "3. " not in out


def test_a_section_that_does_not_load_fails_the_demo_in_one_line(tmp_path: Path, engines: Path) -> None:
    code, out = _run(tmp_path / "demo", [_section("alpha", "chio_test_alpha:no_such_function")])
    assert code == 1
    assert [line for line in out.splitlines() if "failed to load" in line] == [
        "The alpha section failed to load (chio_test_alpha:no_such_function): AttributeError: "
        "module 'chio_test_alpha' has no attribute 'no_such_function'"
    ]


def test_installed_sections_run_by_name_once_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    for dist, lines in (("chio_test_one-0", "zeta = z:run_demo\nalpha = a:run_demo\n"),
                        ("chio_test_two-0", "alpha = other:run_demo\n")):
        info = site / f"{dist}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist[:-2]}\nVersion: 0\n")
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(site))
    found = [(ep.name, ep.value) for ep in demo.engine_sections() if ep.name in ("alpha", "zeta")]
    assert found[1] == ("zeta", "z:run_demo")
    assert found[0][0] == "alpha" and len(found) == 2  # declared twice: runs once


def test_pyproject_declares_the_engine_sections_in_order() -> None:
    # Prefect, then Temporal: the order of their names; each names its engine's run_demo
    assert declared_sections() == {"prefect": "chio_prefect._demo:run_demo",
                                   "temporal": "chio_temporal._demo:run_demo"}


def test_no_installed_section_at_all_runs_the_kernel_section_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "engine_sections", lambda: [])
    code, out = _run(tmp_path / "demo", None)
    assert code == 0, out
    assert "No engine sections: no chio.demo_sections entry points are installed (reinstall chio-durable)." in out
