"""The idempotency rule: one key names one call; the same key and call get the same answer back.

* An *allow* (or a *pending approval*) is remembered under its key: the same key evaluated again for
  the very same call (capability, tool, operation, parameters hash, declared cost) while the
  capability is valid returns the same receipt and charges nothing.
* The same key for a *different* call is refused (:class:`~chio_kernel.IdempotencyKeyReusedError`,
  Stripe's rule), never decided afresh.
* **A re-evaluation under an approval is its own entry under the key** (applied here, once): the
  pending answer stays the answer of the key alone, the allow that of the key with the approval.
  :func:`entry_hashes` is the one place that says so (both the key's store hash and the call's
  fingerprint carry the approval id).

:func:`approval_call_key` is the wire form a client derives for such a re-evaluation
(``chio_durable`` sends it, so retries spanning releases find their receipts); the kernel does not
rely on it: the rule above holds for any key.
"""

from __future__ import annotations

import hashlib

from chio_kernel._errors import IdempotencyKeyReusedError
from chio_kernel._store import StoreWriter

__all__ = ["approval_call_key", "entry_hashes", "key_fingerprint_hash", "remember", "remembered_answer"]


def key_fingerprint_hash(idempotency_key: str) -> str:
    """The store key of an idempotency key alone (what the reuse rule looks up).

    Args:
        idempotency_key: the key as the caller sent it (or its entry under an approval).

    Returns:
        sha256 hex of the key, domain-separated.
    """
    return hashlib.sha256(b"chio-idempotency-key\x1f" + idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()


def entry_hashes(
    key: str,
    approval_id: str | None,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    operation: str,
    param_hash: str,
    cost_t: tuple[int, str] | None,
) -> tuple[str, str]:
    """``(fingerprint, key_hash)`` of one call under an idempotency key.

    The fingerprint makes sure a stored answer is only returned for the very same call; the key
    hash is what the reuse rule looks up. Under ``approval_id`` both name the re-evaluation's own
    entry (the byte layouts are those every stored entry was written with: do not reorder).
    """
    cost = "" if cost_t is None else f"{cost_t[0]} {cost_t[1]}"
    parts: tuple[str, ...] = (key, capability_id, tool_server, tool_name, operation, param_hash, cost)
    if approval_id is not None:  # a re-evaluation is another answer
        parts += (approval_id,)
    fingerprint = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return fingerprint, key_fingerprint_hash(key if approval_id is None else f"{key}\x1f{approval_id}")


def remembered_answer(st: StoreWriter, key_hash: str, fingerprint: str, key: str) -> str | None:
    """The stored receipt body this key answered for this very call, or None if the key is new.

    Raises:
        IdempotencyKeyReusedError: the key answered a different call.
    """
    found = st.idempotency_key(key_hash)
    if found is None:
        return st.idempotent_receipt(fingerprint)  # keys remembered before the key rule existed
    if found[0] != fingerprint:
        raise IdempotencyKeyReusedError(
            f"idempotency key {key[:80]!r} was already used for a different call (another capability, tool, "
            "operation, parameters or cost); a key names ONE call: use a new key for this call"
        )
    return found[1]


def remember(st: StoreWriter, key_hash: str | None, fingerprint: str | None, seq: int) -> None:
    """Remember the receipt at ``seq`` as the answer of the key (no key: nothing to remember)."""
    if fingerprint is not None:
        assert key_hash is not None
        st.remember_idempotency_key(key_hash, fingerprint, seq)


def approval_call_key(key: str | None, approval_id: str) -> str | None:
    """The idempotency key a client sends for its re-evaluation under ``approval_id``.

    Derived from the call's own key: stable across retries and distinct from the key that answered
    "pending". Its value is a wire format: changing it would lose the receipts of runs that span
    the change.

    Args:
        key: the call's own idempotency key (None: no key).
        approval_id: the approval the call is sent again under.

    Returns:
        ``"idem-" + sha256`` of the key, ``approval`` and the approval id, or None without a key.
    """
    if key is None:
        return None
    digest = hashlib.sha256()
    for part in (key, "approval", approval_id):
        digest.update(part.encode())
        digest.update(b"\x1f")
    return "idem-" + digest.hexdigest()
