"""The suite's own plumbing: pytest-xdist's ``--dist loadgroup`` keeps a group on one worker.

tests/conftest.py puts the tests of a module with a module- or class-scoped fixture (a Prefect
server's flows, a Temporal worker, one demo run) in one xdist group, so the fixture is set up once.
pytest 9.2 broke that silently (pytest-dev/pytest-xdist#1386: the tests were spread over the workers
as if ungrouped, and each worker set the fixture up again); pyproject's test extra keeps pytest below it.
This runs a small suite on two workers and fails the day a pytest or xdist release breaks it again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = '''
import os, pathlib, pytest

@pytest.fixture(scope="module")
def shared():
    return os.environ["PYTEST_XDIST_WORKER"]

@pytest.mark.parametrize("i", range(8))
def test_grouped(shared, i):
    pathlib.Path("workers.txt").open("a").write(shared + "\\n")
    assert os.environ["PYTEST_XDIST_WORKER"] == shared
'''

CONFTEST = '''
import pytest

@pytest.hookimpl(tryfirst=True)  # as tests/conftest.py: before xdist reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group("one"))
'''


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(TESTS)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "test_inner.py"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, f"one group ran on {sorted(set(workers))}"
