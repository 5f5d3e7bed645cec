"""Time-ordered ids: UUIDv7 for receipt ids (``rcpt-<uuidv7>``) and capability ids."""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid

__all__ = ["uuid7"]


_uuid_lock = threading.Lock()


_uuid_last_ms = 0


_uuid_counter = 0


def _uuid7_int(secure: bool = False) -> int:
    """A UUIDv7 (RFC 9562) as an int: 48-bit unix ms, version, a 12-bit counter that keeps ids
    monotonic within this process, variant, 62 random bits."""
    global _uuid_last_ms, _uuid_counter
    ms = time.time_ns() // 1_000_000
    with _uuid_lock:
        if ms <= _uuid_last_ms:
            _uuid_counter += 1
            if _uuid_counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _uuid_last_ms += 1
                _uuid_counter = 0
            ms = _uuid_last_ms
        else:
            _uuid_last_ms = ms
            _uuid_counter = 0
        counter = _uuid_counter
    # Receipt ids: uniqueness comes from time + per-process counter, the random tail only separates
    # processes (``random`` is reseeded in a forked child), so the fast generator is enough.
    # Capability ids (``secure=True``) take their tail from the OS CSPRNG: they are not guessable.
    rand_b = secrets.randbits(62) if secure else random.getrandbits(62)
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b


def uuid7() -> uuid.UUID:
    """A time-ordered UUIDv7 (the stdlib of Python 3.11 has none)."""
    return uuid.UUID(int=_uuid7_int())


def _uuid7_str() -> str:
    h = "%032x" % _uuid7_int()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
