"""Deprecated path (one release): import ``Kernel`` and its errors from ``chio_kernel``. Every public
name the old module had (the facade module's ``__all__``) still resolves here, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from typing import Any

from chio_kernel import _kernel as _moved

warnings.warn(
    "chio_kernel.kernel is deprecated and goes away in the next release: import Kernel, ChainReport and "
    "the errors from chio_kernel",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_moved.__all__)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(_moved, name)
    raise AttributeError(f"module 'chio_kernel.kernel' has no attribute {name!r}")
