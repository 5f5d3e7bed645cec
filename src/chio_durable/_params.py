"""Bind a call to named, JSON-able parameters — the shape every kernel evaluation receives.

The upstream Python layers sent ``{"args": [...], "kwargs": {...}}``. We bind the call to the
function's signature instead, so a constraint such as ``path_prefix`` has a parameter name to apply
to and the parameter hash does not depend on whether an argument was passed by position or name.
Defaults are applied; ``*args`` / ``**kwargs`` parameters keep their own names.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from chio_kernel.canonical import canonical_json_str

__all__ = ["bind_parameters", "canonical_text", "digest", "jsonable"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def jsonable(value: Any) -> Any:
    """Convert a value to a JSON-able view (pydantic models, dataclasses, bytes, datetimes...).

    Args:
        value: any Python value; bytes become base64, unknown objects their ``repr``.

    Returns:
        The JSON-able value.
    """
    return to_jsonable_python(value, fallback=repr, bytes_mode="base64")


def bind_parameters(
    fn: Callable[..., Any] | inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind a call's arguments to the function's parameter names, as the kernel sees them.

    Args:
        fn: the called function, or its signature.
        args: the positional arguments of the call.
        kwargs: the keyword arguments of the call.

    Returns:
        ``{parameter name: JSON-able value}``, defaults applied; ``{"args": [...], "kwargs": {...}}``
        for a call that does not fit the signature (it fails in the function itself).
    """
    signature = fn if isinstance(fn, inspect.Signature) else inspect.signature(fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        # A call that does not fit the signature fails in the function itself; still send something
        # faithful to the kernel rather than nothing.
        return {"args": jsonable(list(args)), "kwargs": jsonable(kwargs)}
    bound.apply_defaults()
    return {name: jsonable(value) for name, value in bound.arguments.items()}


def canonical_text(value: Any) -> str:
    """The kernel's canonical JSON (RFC 8785, ``chio_kernel.canonical``) of a JSON-able view of ``value``.

    Stable across processes and attempts, for digests in idempotency keys: values with no JSON form
    fall back to their ``repr`` (:func:`jsonable`) with memory addresses (``<Foo object at 0x7f...>``)
    dropped. Values canonical JSON refuses (NaN, infinities, lone surrogates — the kernel refuses such a
    call too) get Python's sorted compact JSON instead, so a digest can still be formed.
    """
    data = jsonable(value)
    try:
        text = canonical_json_str(data)
    except ValueError:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _ADDRESS.sub("", text)


def digest(value: Any) -> str:
    """sha256 hex of :func:`canonical_text` of ``value``."""
    return hashlib.sha256(canonical_text(value).encode("utf-8", "surrogatepass")).hexdigest()
