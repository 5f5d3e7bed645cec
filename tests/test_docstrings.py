"""Every public function and method carries a Google-style docstring.

Public means a name in the ``__all__`` of a public module (listed below). Each needs a one-line summary,
``Args:`` when it takes parameters, and ``Returns:`` (or ``Yields:``) when it returns something. A class's
``__init__`` is covered by ``Args:`` or ``Attributes:`` in the class docstring (how dataclasses document
their fields).
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

PUBLIC_MODULES = (
    "chio_kernel",
    "chio_kernel.canonical",
    "chio_kernel.signing",
    "chio_kernel.testing",
    "chio_kernel.sidecar",
    "chio_durable",
    "chio_durable.agent",
    "chio_prefect",
    "chio_prefect.decorators",
    "chio_prefect.events",
    "chio_prefect.errors",
    "chio_temporal",
    "chio_temporal.interceptor",
    "chio_temporal.grants",
    "chio_temporal.receipt",
    "chio_temporal.worker",
    "chio_temporal.errors",
    "chio_dbos",
)


def _missing(fn: Any, owner_doc: str = "") -> list[str]:
    doc = inspect.getdoc(fn) or ""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = [p for p in sig.parameters if p not in ("self", "cls")]
    if fn.__name__ == "__init__":
        if not params or any(word in doc or word in owner_doc for word in ("Args:", "Attributes:")):
            return []
        return ["Args (in __init__ or as Args:/Attributes: in the class docstring)"]
    if not doc:
        return ["docstring"]
    missing = []
    if params and "Args:" not in doc:
        missing.append("Args")
    returns = sig.return_annotation
    if returns not in (inspect.Signature.empty, None, "None") and not ("Returns:" in doc or "Yields:" in doc):
        missing.append("Returns")
    return missing


def audit() -> list[str]:
    """Return one line per public function or method that lacks its docstring parts."""
    seen: set[int] = set()
    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = [importlib.import_module(m) for m in PUBLIC_MODULES]
    for mod in modules:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            where = f"{mod.__name__}.{name}"
            if inspect.isclass(obj):
                if issubclass(obj, BaseException):
                    continue
                class_doc = obj.__doc__ or ""
                if not class_doc:
                    out.append(f"{where}: class docstring")
                for attr, value in vars(obj).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    if attr == "__init__" and value.__qualname__ != f"{obj.__qualname__}.__init__":
                        continue  # not written for this class (typing.Protocol's placeholder)
                    if inspect.isfunction(value) and (miss := _missing(value, class_doc)):
                        out.append(f"{where}.{attr}: {', '.join(miss)}")
            elif inspect.isfunction(obj) and (miss := _missing(obj)):
                out.append(f"{where}: {', '.join(miss)}")
    return out


def test_public_api_has_google_style_docstrings() -> None:
    missing = audit()
    assert not missing, f"{len(missing)} public names lack docstring parts:\n" + "\n".join(missing)


if __name__ == "__main__":
    lines = audit()
    print(len(lines))
    print("\n".join(lines))
