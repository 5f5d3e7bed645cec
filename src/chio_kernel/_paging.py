"""Paged listings: :class:`Page`, the opaque cursor and the limit rules every listing shares.

A cursor is the keyset position of the last row a page held (``created_at`` and id, or ``seq``),
with the listing's name and a digest of its filters, as base64url JSON. It is opaque to callers:
they pass back the ``next_cursor`` they got. A cursor from another listing, or one that was
altered, is refused with a :class:`~chio_kernel._errors.KernelInputError` saying what to pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from chio_kernel._errors import KernelInputError

__all__ = [
    "DEFAULT_PAGE_LIMIT",
    "MAX_PAGE_LIMIT",
    "Page",
    "Yielder",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
]

#: Items per page when no ``limit`` is given (approvals, capabilities, holds; receipts: see docs).
DEFAULT_PAGE_LIMIT = 100
#: The largest ``limit`` a page takes.
MAX_PAGE_LIMIT = 1_000
_MAX_CURSOR_CHARS = 1_024
#: A page pauses at most this long in all for evaluations in flight (then it goes on regardless).
_YIELD_BUDGET = 0.05
_YIELD_STEP = 0.0002

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` in the listing's order, and where the next page starts.

    Iterating a page iterates its items; ``len(page)`` is their number.

    Attributes:
        items: the page's rows, in the listing's order.
        next_cursor: None on the last page; otherwise pass it as ``cursor=`` to get the next one.
    """

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def check_limit(limit: Any, default: int = DEFAULT_PAGE_LIMIT, maximum: int = MAX_PAGE_LIMIT) -> int:
    """``limit`` checked (1 to ``maximum``), ``default`` when None.

    Raises:
        KernelInputError: not an integer in range.
    """
    if limit is None:
        return default
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise KernelInputError(f"limit must be an integer from 1 to {maximum}, got {limit!r:.40}")
    return limit


def _digest(filters: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(filters), sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_cursor(listing: str, filters: Sequence[Any], key: Sequence[Any]) -> str:
    """The opaque cursor after the row whose keyset position is ``key`` in ``listing`` under ``filters``."""
    raw = json.dumps({"l": listing, "f": _digest(filters), "k": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any, listing: str, filters: Sequence[Any], types: Sequence[type]) -> list[Any] | None:
    """The keyset position in ``cursor`` (None: the first page).

    Args:
        cursor: what the caller passed (a ``next_cursor`` of this listing, or None).
        listing: the listing's name (a cursor of another listing is refused).
        filters: the listing's filters (a cursor made under other filters is refused).
        types: the type of each element of the position.

    Raises:
        KernelInputError: not a cursor this listing handed out with these filters.
    """
    if cursor is None:
        return None
    where = f"cursor for the {listing} listing"
    if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR_CHARS:
        raise KernelInputError(
            f"bad {where}: pass the next_cursor of the previous page exactly as given (or no cursor for the first page)"
        )
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = data["k"]
        ok = data["l"] == listing and isinstance(key, list) and len(key) == len(types)
        ok = ok and all(type(v) is t or (t is float and type(v) is int) for v, t in zip(key, types))
    except (ValueError, TypeError, KeyError, binascii.Error):
        ok = False
    if not ok:
        raise KernelInputError(
            f"bad {where}: it is not a next_cursor this listing handed out; pass the next_cursor of the previous "
            "page exactly as given (or no cursor for the first page)"
        )
    if data.get("f") != _digest(filters):
        raise KernelInputError(
            f"the {where} was made with other filters; page with the same filters the first page used, "
            "or start again without a cursor"
        )
    return [float(v) if t is float else v for v, t in zip(key, types)]


class Yielder:
    """Evaluations first: a page of a listing calls :meth:`pause` between its steps, and sleeps
    (GIL released) while ``busy()`` says evaluations are in flight, at most 50 ms per page in all,
    so a listing neither delays evaluations nor starves under them."""

    __slots__ = ("_busy", "_left")

    def __init__(self, busy: Callable[[], bool] | None) -> None:
        self._busy = busy
        self._left = _YIELD_BUDGET

    def pause(self) -> None:
        """Wait while evaluations are in flight (within the page's budget)."""
        busy = self._busy
        if busy is None:
            return
        while self._left > 0 and busy():
            time.sleep(_YIELD_STEP)
            self._left -= _YIELD_STEP
