"""The caller's run context: flat ``str -> str`` pairs signed into a receipt's ``metadata``.

An engine layer passes where a call ran (a Prefect ``flow_run_id``, a Temporal ``workflow_id``...)
to :meth:`Kernel.evaluate` / :meth:`Kernel.record_denial` as ``metadata=``; the kernel signs it into
the receipt, so ``chio-durable receipts list --flow-run ID`` / ``--workflow-id ID`` (top-level
metadata keys, see ``ReceiptQuery``) find the run's receipts. It is context, not part of the call:
it is not in the idempotency fingerprint (a retry from another attempt gets the first receipt back).
Kernel keys (``pending_approval``, ``approval_id``) win over the caller's on a conflict.

The sidecar adds who asked (:func:`with_principal`): ``chio_role`` and ``chio_principal`` (the
credential's role and name), replacing any a caller sent; they do not count toward the 16 keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from chio_kernel._errors import KernelInputError

__all__ = [
    "MAX_KEYS",
    "MAX_VALUE_LEN",
    "PRINCIPAL_KEY",
    "ROLE_KEY",
    "check_run_metadata",
    "merge_run_metadata",
    "principal_name",
    "run_context_of",
    "with_principal",
]

MAX_KEYS = 16
"""At most this many keys of caller metadata per receipt."""

MAX_VALUE_LEN = 512
"""At most this many characters per value."""

_MAX_KEY_LEN = 64

#: The metadata keys naming who asked (the sidecar sets them from the request's credential).
ROLE_KEY = "chio_role"
PRINCIPAL_KEY = "chio_principal"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,%d}" % _MAX_KEY_LEN)


_KNOWN_KEYS: set[str] = set()  # keys seen valid (run_id, trace_id...): a set lookup instead of the regex
_MAX_KNOWN_KEYS = 1024


def _plain_key(key: str) -> bool:
    if key in _KNOWN_KEYS:
        return True
    if _PLAIN_KEY.fullmatch(key) is None:
        return False
    if len(_KNOWN_KEYS) < _MAX_KNOWN_KEYS:
        _KNOWN_KEYS.add(key)
    return True


def check_run_metadata(metadata: Any) -> dict[str, str] | None:
    """``metadata`` as a plain ``dict[str, str]`` (None or empty -> None), or :class:`KernelInputError`
    saying what is wrong: a mapping of at most 16 plain-identifier keys (letters, digits, ``_ . -``,
    at most 64 characters) to strings of at most 512 characters."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise KernelInputError(
            f"metadata must be an object of key -> string (the caller's run context), got {type(metadata).__name__}"
        )
    if len(metadata) > MAX_KEYS + (ROLE_KEY in metadata) + (PRINCIPAL_KEY in metadata):
        raise KernelInputError(f"metadata has {len(metadata)} keys; at most {MAX_KEYS} allowed")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _plain_key(key):
            raise KernelInputError(
                f"metadata key {key!r:.80} must be 1-{_MAX_KEY_LEN} letters, digits, '_', '.' or '-' "
                "(e.g. 'flow_run_id')"
            )
        if not isinstance(value, str):
            raise KernelInputError(
                f"metadata[{key!r}] must be a string, got {type(value).__name__} {value!r:.80}; "
                "pass ids and names as text"
            )
        if len(value) > MAX_VALUE_LEN:
            raise KernelInputError(
                f"metadata[{key!r}] is {len(value)} characters long; at most {MAX_VALUE_LEN} allowed"
            )
        if "\x00" in value:
            raise KernelInputError(f"metadata[{key!r}] must not contain NUL characters")
        if not value.isascii():  # ASCII is valid UTF-8 as it is; anything else is checked
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise KernelInputError(
                    f"metadata[{key!r}] contains a lone UTF-16 surrogate; pass valid Unicode text"
                ) from None
        out[key] = value
    return out or None


def merge_run_metadata(kernel: dict[str, Any], caller: Mapping[str, str] | None) -> dict[str, Any]:
    """The caller's run context under the kernel's own metadata keys (the kernel's win on a conflict)."""
    return {**caller, **kernel} if caller else kernel


def with_principal(caller: Mapping[str, str] | None, role: str, name: str) -> dict[str, str]:
    """The caller's checked run context with who asked (``chio_role``, ``chio_principal``) set by us."""
    out = {k: v for k, v in caller.items() if k not in (ROLE_KEY, PRINCIPAL_KEY)} if caller else {}
    out[ROLE_KEY] = role
    out[PRINCIPAL_KEY] = name
    return out


def run_context_of(metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The caller's run context in a receipt's ``metadata`` (its text values; not who asked, not the
    kernel's own keys), to sign into a later receipt of the same call (an approval's resolution)."""
    if not metadata:
        return None
    out = {k: v for k, v in metadata.items() if isinstance(v, str) and k not in (ROLE_KEY, PRINCIPAL_KEY)}
    return out or None


def principal_name(metadata: Mapping[str, Any] | None) -> str | None:
    """The credential name a receipt's metadata records as the one who asked, or None."""
    if not metadata:
        return None
    name = metadata.get(PRINCIPAL_KEY)
    return name if isinstance(name, str) else None
