"""The idempotency rule's hashes are a stored and wire format: they must not move.

Receipts remembered before a release are found again after it only if the key hash, the call
fingerprint and the key a client derives for a re-evaluation under an approval stay byte-identical.
"""

from __future__ import annotations

import hashlib

from chio_durable._approval import approval_key
from chio_durable._call import idempotency_key
from chio_kernel._idempotency import approval_call_key, entry_hashes, key_fingerprint_hash


def test_the_approval_call_key_is_the_wire_key_chio_durable_always_sent() -> None:
    golden = "idem-de6e5a16aff0d8a91618c76857232f31fe7437d6df49b2b75d2c83c540017ef7"  # recorded before the move
    assert approval_call_key("k", "apr-1") == approval_key("k", "apr-1") == golden
    assert approval_call_key("idem-xyz", "apr-2") == idempotency_key("idem-xyz", "approval", "apr-2")
    assert approval_call_key(None, "apr-1") is None and approval_key(None, "apr-1") is None


def test_entry_hashes_are_the_stored_layout() -> None:
    parts = ("key-1", "cap-a", "fs", "read", "invoke", "ab" * 32)
    fingerprint, key_hash = entry_hashes(
        "key-1", None, "cap-a", "fs", "read", "invoke", "ab" * 32, (5, "USD")
    )
    assert fingerprint == hashlib.sha256("\x1f".join((*parts, "5 USD")).encode()).hexdigest()
    assert key_hash == hashlib.sha256(b"chio-idempotency-key\x1fkey-1").hexdigest() == key_fingerprint_hash("key-1")
    # a re-evaluation under an approval is its own entry under the key (the one rule, applied once)
    fp2, kh2 = entry_hashes("key-1", "apr-9", "cap-a", "fs", "read", "invoke", "ab" * 32, None)
    assert fp2 == hashlib.sha256("\x1f".join((*parts, "", "apr-9")).encode()).hexdigest()
    assert kh2 == key_fingerprint_hash("key-1\x1fapr-9") != key_hash
