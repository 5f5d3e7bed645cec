"""Canonical JSON (RFC 8785, "JCS") for signatures and hashes.

Rules: object keys sorted by their UTF-16 code units, no whitespace, UTF-8 output (no ``\\u``
escapes except the ones JSON requires), numbers in ECMAScript ``Number.prototype.toString`` form.

Choices where RFC 8785 leaves room for a Python kernel:

* Python ``int`` values are written exactly as decimal digits, whatever their size (JCS would
  round integers above 2**53 through an IEEE double; exactness matters more to us, and every
  integer the kernel itself signs is far below 2**53).
* ``float`` values use the shortest round-trip digits (``repr``) laid out by the ECMAScript rules
  (``1e+21``, ``1e-7``, ``0.000001``, ``-0`` -> ``0``); NaN and infinities raise ``ValueError``.
* Object keys must be ``str``; ``tuple`` is written as an array; anything else that is not JSON
  (sets, bytes, objects) raises ``ValueError``. Strings with lone surrogates raise ``ValueError``.

Fast path: when the value holds no floats and no key outside the Basic Multilingual Plane,
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` already produces exactly
the RFC 8785 bytes (Python's code-point order equals UTF-16 order for BMP-only keys, and its string
escaping matches ECMAScript's ``JSON.stringify``). Otherwise a pure-Python serializer is used.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["canonical_json", "canonical_json_str", "es_number"]

_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_dump_str = json.JSONEncoder(ensure_ascii=False).encode


class _NeedsSlowPath(Exception):
    pass


def _check(value: Any, depth: int = 0) -> None:
    """Raise ``_NeedsSlowPath`` if the fast path would differ; ``ValueError`` if not JSON at all."""
    if depth > 200:
        raise ValueError("canonical JSON: value nested deeper than 200 levels")
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str and not isinstance(k, str):
                raise ValueError(
                    f"canonical JSON: object keys must be strings, got {type(k).__name__} key {k!r}"
                )
            if not k.isascii() and max(map(ord, k)) > 0xFFFF:
                raise _NeedsSlowPath  # UTF-16 order differs from code-point order
            _check(v, depth + 1)
        return
    if t is list or t is tuple:
        for v in value:
            _check(v, depth + 1)
        return
    if t is float:
        raise _NeedsSlowPath
    if isinstance(value, (str, int)):  # str/int subclasses (enums): json writes their plain value
        if isinstance(value, float):
            raise _NeedsSlowPath
        return
    if isinstance(value, float):
        raise _NeedsSlowPath
    if isinstance(value, dict):
        raise _NeedsSlowPath
    if isinstance(value, (list, tuple)):
        raise _NeedsSlowPath
    raise ValueError(
        f"canonical JSON: {type(value).__name__} is not JSON "
        f"(pass str, int, float, bool, None, list or dict with str keys): {value!r:.80}"
    )


def es_number(value: float) -> str:
    """Format a finite float as ECMAScript ``Number.prototype.toString`` does (RFC 8785 section 3.2.2.3).

    Args:
        value: the number.

    Returns:
        Its shortest round-tripping text (``"0"`` for ``-0``, exponent form beyond 1e21).

    Raises:
        ValueError: NaN or an infinity (not JSON numbers).
    """
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"canonical JSON: {value!r} is not a JSON number (NaN and Infinity are not allowed)")
    if value == 0:
        return "0"  # also -0
    text = repr(float(value))
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    # value = 0.<digits> * 10**n
    n = len(int_part) + exponent - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp_out = ("+" if e >= 0 else "-") + str(abs(e))
        out = (digits if k == 1 else digits[0] + "." + digits[1:]) + "e" + exp_out
    return sign + out


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _slow(value: Any, out: list[str], depth: int = 0) -> None:
    if depth > 200:
        raise ValueError("canonical JSON: value nested deeper than 200 levels")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_dump_str(str(value)))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(es_number(value))
    elif isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ValueError(
                    f"canonical JSON: object keys must be strings, got {type(k).__name__} key {k!r}"
                )
        out.append("{")
        first = True
        for k in sorted(value, key=_utf16_key):
            if not first:
                out.append(",")
            first = False
            out.append(_dump_str(str(k)))
            out.append(":")
            _slow(value[k], out, depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _slow(v, out, depth + 1)
        out.append("]")
    else:
        raise ValueError(
            f"canonical JSON: {type(value).__name__} is not JSON "
            f"(pass str, int, float, bool, None, list or dict with str keys): {value!r:.80}"
        )


def canonical_json_str(value: Any) -> str:
    """Serialise a JSON value as RFC 8785 canonical JSON text.

    Args:
        value: str, int, float, bool, None, list or dict with str keys, nested.

    Returns:
        The canonical text (sorted keys, no spaces, ECMAScript numbers).

    Raises:
        ValueError: the value is not JSON-able, nested too deeply or circular (the message says what
            to pass).
    """
    try:
        _check(value)
    except _NeedsSlowPath:
        out: list[str] = []
        _slow(value, out)
        return "".join(out)
    except RecursionError as err:
        raise ValueError("canonical JSON: value is nested too deeply or is circular") from err
    try:
        return _dumps(value)
    except (TypeError, RecursionError) as err:  # pragma: no cover - _check catches these first
        raise ValueError(f"canonical JSON: value is not JSON-able: {err}") from err


def canonical_json(value: Any) -> bytes:
    """Serialise a JSON value as RFC 8785 canonical JSON bytes (what Chio signs and hashes).

    Args:
        value: str, int, float, bool, None, list or dict with str keys, nested.

    Returns:
        The canonical text, UTF-8 encoded.

    Raises:
        ValueError: the value is not JSON-able, or a string holds a lone UTF-16 surrogate.
    """
    text = canonical_json_str(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            "canonical JSON: string contains a lone UTF-16 surrogate, which is not valid Unicode text"
        ) from err
