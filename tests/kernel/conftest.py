"""Fixtures for the kernel unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chio_kernel import Kernel
from kernel_helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kernel(chio_home: Path, clock: Clock) -> Iterator[Kernel]:
    k = Kernel(chio_home, clock=clock)
    yield k
    k.close()
