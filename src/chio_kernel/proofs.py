"""Merkle trees, signed checkpoints and their proofs: pure functions, nothing but a public key needed.

The shapes and hashing are upstream Chio's (``chio.checkpoint_statement.v1``, RFC 6962 leaf and
node hashing, the last node of an odd level carried up unchanged); docs/checkpoints.md says what each
check proves and what it cannot. Every verifier here raises :class:`ProofError` naming what is wrong.

* :func:`leaf_hash`, :func:`node_hash`, :func:`merkle_root`, :func:`merkle_levels`, :func:`audit_path`,
  :func:`audit_path_in`,
  :func:`root_from_path` — the tree.
* :func:`build_checkpoint`, :func:`checkpoint_sha256`, :func:`verify_checkpoint` — a signed
  statement committing one contiguous range of one kernel's receipt chain.
* :func:`verify_inclusion` — a receipt, its checkpoint and the audit path.
* :func:`consistency_links`, :func:`verify_consistency` — checkpoints ``m..n`` each extending the last.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chio_kernel._errors import ProofError
from chio_kernel._receipts import receipt_wire_dict, verify_receipt_dict
from chio_kernel.canonical import canonical_json
from chio_kernel.signing import verify_hex

__all__ = [
    "CHECKPOINT_SCHEMA",
    "CONSISTENCY_LINK_SCHEMA",
    "CONSISTENCY_SCHEMA",
    "INCLUSION_SCHEMA",
    "ProofError",
    "audit_path",
    "audit_path_in",
    "build_checkpoint",
    "checkpoint_sha256",
    "consistency_links",
    "hash_hex",
    "leaf_hash",
    "log_id",
    "merkle_levels",
    "merkle_root",
    "node_hash",
    "receipt_leaf_hash",
    "root_from_path",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]

#: The signed checkpoint body's schema (upstream's).
CHECKPOINT_SCHEMA = "chio.checkpoint_statement.v1"
#: One link "checkpoint k+1 extends checkpoint k" (upstream's consistency proof record).
CONSISTENCY_LINK_SCHEMA = "chio.checkpoint_consistency_proof.v1"
#: Our envelope of a consistency proof between two checkpoints: the signed checkpoints and the links.
CONSISTENCY_SCHEMA = "chio.checkpoint_consistency_chain.v1"
#: Our envelope of an inclusion proof: the receipt, its signed checkpoint, upstream's proof record.
INCLUSION_SCHEMA = "chio.receipt_inclusion_proof.v1"

_BODY_FIELDS = frozenset({
    "schema", "checkpoint_seq", "batch_start_seq", "batch_end_seq", "tree_size", "merkle_root", "issued_at",
    "kernel_key", "previous_checkpoint_sha256",
})


def hash_hex(digest: bytes) -> str:
    """A 32-byte hash as upstream's ``Hash`` serialises it: ``0x`` + 64 lower-case hex characters."""
    return "0x" + digest.hex()


# --- the tree (RFC 6962 hashing; an odd level's last node carried up unchanged) -------------------


def leaf_hash(data: bytes) -> bytes:
    """``SHA256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf hashes ``leaves`` (at least one).

    Raises:
        ProofError: no leaves.
    """
    return merkle_levels(leaves)[-1][0]


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree over leaf hashes ``leaves``, the leaves first and the root last.

    Raises:
        ProofError: no leaves.
    """
    if not leaves:
        raise ProofError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1]))
    return levels


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf ``index`` up to the root (upstream's ``audit_path``).

    Raises:
        ProofError: ``index`` outside the tree.
    """
    return audit_path_in(merkle_levels(leaves), index)


def audit_path_in(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """:func:`audit_path` in a tree whose :func:`merkle_levels` are built already (many proofs of one tree).

    Raises:
        ProofError: ``index`` outside the tree.
    """
    if not 0 <= index < len(levels[0]):
        raise ProofError(f"leaf index {index} is outside a tree of {len(levels[0])} leaves")
    path: list[bytes] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that leaf hash ``leaf`` at ``index`` of a ``size``-leaf tree reaches via ``path``;
    None when the path has the wrong length for that position."""
    if size <= 0 or not 0 <= index < size:
        return None
    h, used = leaf, 0
    while size > 1:
        if index % 2 == 1 or index + 1 < size:
            if used >= len(path):
                return None
            h = node_hash(path[used], h) if index % 2 else node_hash(h, path[used])
            used += 1
        index //= 2
        size = (size + 1) // 2
    return h if used == len(path) else None


def _canonical(value: Any, what: str) -> bytes:
    """RFC 8785 canonical JSON, or :class:`ProofError` for what has none (a lone surrogate, NaN)."""
    try:
        return canonical_json(value)
    except ValueError as err:
        raise ProofError(f"{what} is not canonical JSON: {err}") from None


# --- receipts as leaves ------------------------------------------------------------------------


def receipt_leaf_hash(receipt: Mapping[str, Any]) -> bytes:
    """A receipt's leaf: ``leaf_hash`` of the RFC 8785 canonical JSON of the receipt as served
    (signed fields plus ``signature``; see ``receipt_wire_dict``)."""
    return leaf_hash(_canonical(receipt_wire_dict(receipt), "the receipt"))


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_sha256(body: Mapping[str, Any]) -> str:
    """The hex SHA-256 of a checkpoint body's canonical JSON (what the next checkpoint cites)."""
    return hashlib.sha256(_canonical(dict(body), "a checkpoint body")).hexdigest()


def log_id(kernel_key: str) -> str:
    """Upstream's local log id of a kernel key: ``local-log-`` + sha256 hex of the raw key bytes.

    Raises:
        ProofError: ``kernel_key`` is not hex.
    """
    try:
        raw = bytes.fromhex(kernel_key)
    except (TypeError, ValueError):
        raise ProofError(f"kernel_key must be hex, got {kernel_key!r:.80}") from None
    return "local-log-" + hashlib.sha256(raw).hexdigest()


def build_checkpoint(
    sign_hex: Callable[[bytes], str],
    kernel_key: str,
    checkpoint_seq: int,
    batch_start_seq: int,
    leaves: Sequence[bytes],
    issued_at: int,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Sign a checkpoint over receipts ``batch_start_seq ..`` whose leaf hashes are ``leaves``.

    Args:
        sign_hex: signs bytes with the kernel's key (hex signature).
        kernel_key: the kernel's hex public key (the body's ``kernel_key``).
        checkpoint_seq: this checkpoint's number (1 for the first).
        batch_start_seq: the first receipt seq covered.
        leaves: the covered receipts' leaf hashes, in seq order.
        issued_at: unix seconds.
        previous: the previous checkpoint's body (None for the first).

    Returns:
        ``{"body": ..., "signature": hex}``.
    """
    body: dict[str, Any] = {
        "schema": CHECKPOINT_SCHEMA,
        "checkpoint_seq": checkpoint_seq,
        "batch_start_seq": batch_start_seq,
        "batch_end_seq": batch_start_seq + len(leaves) - 1,
        "tree_size": len(leaves),
        "merkle_root": hash_hex(merkle_root(leaves)),
        "issued_at": int(issued_at),
        "kernel_key": kernel_key,
    }
    if previous is not None:
        body["previous_checkpoint_sha256"] = checkpoint_sha256(previous)
    return {"body": body, "signature": sign_hex(canonical_json(body))}


def _fields(doc: Any, expected: frozenset[str], what: str) -> Mapping[str, Any]:
    """``doc`` when it is an object with exactly the ``expected`` fields, else :class:`ProofError`."""
    if not isinstance(doc, Mapping) or set(doc) != expected:
        found = sorted(doc) if isinstance(doc, Mapping) else type(doc).__name__
        raise ProofError(f"{what} must have exactly the fields {sorted(expected)}; found {found}")
    return doc


_SIGNED = frozenset({"body", "signature"})
_INCLUSION = frozenset({"schema", "receipt", "checkpoint", "proof"})
_RECORD = frozenset({"checkpoint_seq", "receipt_seq", "leaf_index", "merkle_root", "proof"})
_PATH = frozenset({"tree_size", "leaf_index", "audit_path"})
_CONSISTENCY = frozenset({"schema", "kernel_id", "from_checkpoint_seq", "to_checkpoint_seq", "checkpoints", "links"})


def _int(body: Mapping[str, Any], name: str, least: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ProofError(f"checkpoint field {name} must be an integer >= {least}, got {value!r}")
    return value


def verify_checkpoint(checkpoint: Mapping[str, Any], public_key: str) -> dict[str, Any]:
    """Check one signed checkpoint: schema, fields, range and size, and the signature by ``public_key``.

    Args:
        checkpoint: ``{"body": ..., "signature": hex}``.
        public_key: the kernel's hex Ed25519 public key.

    Returns:
        The body.

    Raises:
        ProofError: naming what is wrong.
    """
    body = _fields(checkpoint, _SIGNED, "a checkpoint")["body"]
    if not isinstance(body, Mapping):
        raise ProofError("a checkpoint is {'body': {...}, 'signature': hex}; no body found")
    if body.get("schema") != CHECKPOINT_SCHEMA:
        raise ProofError(f"unsupported checkpoint schema {body.get('schema')!r} (expected {CHECKPOINT_SCHEMA})")
    if set(body) - _BODY_FIELDS:
        raise ProofError(f"checkpoint body has unknown fields {sorted(set(body) - _BODY_FIELDS)}")
    seq = _int(body, "checkpoint_seq", 1)
    start, end = _int(body, "batch_start_seq", 1), _int(body, "batch_end_seq", 1)
    if end < start or _int(body, "tree_size", 1) != end - start + 1:
        raise ProofError(f"checkpoint {seq}: tree_size {body.get('tree_size')} does not match range {start}-{end}")
    if body.get("kernel_key") != public_key:
        raise ProofError(
            f"checkpoint {seq} names kernel key {str(body.get('kernel_key'))}, not {public_key}"
        )
    if not verify_hex(public_key, str(checkpoint.get("signature")), _canonical(dict(body), "the checkpoint body")):
        raise ProofError(f"checkpoint {seq} has an invalid signature (altered after signing, or another key)")
    return dict(body)


# --- inclusion ----------------------------------------------------------------------------------


def _hex32(value: Any, what: str) -> bytes:
    """A hash as :func:`hash_hex` writes it (``0x`` + 64 lower-case hex) -> its bytes."""
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x") or value != value.lower():
        raise ProofError(f"{what} must be 0x and 64 lower-case hex characters, got {value!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise ProofError(f"{what} must be 0x and 64 lower-case hex characters, got {value!r}") from None


def verify_inclusion(proof: Mapping[str, Any], public_key: str) -> dict[str, Any]:
    """Check an inclusion proof (``Kernel.inclusion_proof``) with nothing but the kernel's public key.

    Checks the checkpoint (:func:`verify_checkpoint`), the receipt's own signature, that the proof
    record matches the checkpoint and the receipt's position, and that the receipt's leaf reaches
    the signed root through the audit path.

    Args:
        proof: ``{"schema", "receipt", "checkpoint", "proof"}``.
        public_key: the kernel's hex Ed25519 public key.

    Returns:
        The verified receipt (dict).

    Raises:
        ProofError: naming what is wrong.
    """
    if _fields(proof, _INCLUSION, "an inclusion proof")["schema"] != INCLUSION_SCHEMA:
        raise ProofError(f"not an inclusion proof (schema {INCLUSION_SCHEMA} expected)")
    body = verify_checkpoint(proof["checkpoint"], public_key)
    receipt, record = proof["receipt"], _fields(proof["proof"], _RECORD, "proof")
    if not isinstance(receipt, Mapping):
        raise ProofError("an inclusion proof carries the receipt as an object")
    why = verify_receipt_dict(dict(receipt), {str(receipt.get("kernel_key"))})
    if why is not None:
        raise ProofError(why)
    path_record = _fields(record["proof"], _PATH, "proof.proof")
    if not isinstance(path_record["audit_path"], list):
        raise ProofError("proof.proof.audit_path must be a list of hashes")
    receipt_seq, index = record.get("receipt_seq"), record.get("leaf_index")
    expected = {
        "checkpoint_seq": body["checkpoint_seq"], "merkle_root": body["merkle_root"],
        "leaf_index": path_record.get("leaf_index"),
    }
    for name, value in expected.items():
        if record.get(name) != value:
            raise ProofError(f"proof.{name} {record.get(name)!r} does not match the checkpoint ({value!r})")
    if path_record.get("tree_size") != body["tree_size"] or not isinstance(receipt_seq, int) or (
        receipt_seq - body["batch_start_seq"] != index
    ):
        raise ProofError(f"the proof's position (seq {receipt_seq!r}, leaf {index!r}) is not in checkpoint "
                         f"{body['checkpoint_seq']} (seqs {body['batch_start_seq']}-{body['batch_end_seq']})")
    path = [_hex32(h, "an audit path hash") for h in path_record["audit_path"]]
    root = root_from_path(receipt_leaf_hash(receipt), index, body["tree_size"], path)
    if root is None or hash_hex(root) != body["merkle_root"]:
        raise ProofError(
            f"receipt {receipt.get('id')} does not reach checkpoint {body['checkpoint_seq']}'s signed root "
            "(the receipt, its position or the audit path was altered)"
        )
    return dict(receipt)


# --- consistency: checkpoints m..n, each extending the one before ---------------------------------


def _link(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "schema": CONSISTENCY_LINK_SCHEMA,
        "log_id": log_id(str(cur["kernel_key"])),
        "from_checkpoint_seq": prev["checkpoint_seq"],
        "to_checkpoint_seq": cur["checkpoint_seq"],
        "from_checkpoint_sha256": checkpoint_sha256(prev),
        "to_checkpoint_sha256": checkpoint_sha256(cur),
        "from_log_tree_size": prev["batch_end_seq"],
        "to_log_tree_size": cur["batch_end_seq"],
        "appended_entry_start_seq": cur["batch_start_seq"],
        "appended_entry_end_seq": cur["batch_end_seq"],
    }


def extends_problem(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> str | None:
    """Why checkpoint body ``cur`` does not extend ``prev`` (number, range, cited digest), or None."""
    n = cur.get("checkpoint_seq")
    if n != prev["checkpoint_seq"] + 1:
        return f"checkpoint {n} does not follow checkpoint {prev['checkpoint_seq']}"
    if cur.get("batch_start_seq") != prev["batch_end_seq"] + 1:
        return (f"checkpoint {n} starts at receipt seq {cur.get('batch_start_seq')}, not right after checkpoint "
                f"{prev['checkpoint_seq']}'s end ({prev['batch_end_seq']})")
    if cur.get("previous_checkpoint_sha256") != checkpoint_sha256(prev):
        return f"checkpoint {n} does not cite checkpoint {prev['checkpoint_seq']}'s digest"
    return None


def consistency_links(bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Upstream's consistency records, one per adjacent pair of ``bodies`` (checkpoints in order)."""
    return [_link(a, b) for a, b in zip(bodies, bodies[1:])]


def verify_consistency(proof: Mapping[str, Any], public_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check that checkpoint ``to`` extends checkpoint ``from`` (``Kernel.consistency_proof``).

    Every checkpoint from ``from`` to ``to`` is signed by ``public_key``, each one's range starts
    right after the previous one's and cites its digest, and the links are the ones derived.

    Args:
        proof: ``{"schema", "from_checkpoint_seq", "to_checkpoint_seq", "checkpoints", "links"}``.
        public_key: the kernel's hex Ed25519 public key.

    Returns:
        ``(from body, to body)``.

    Raises:
        ProofError: naming what is wrong.
    """
    if _fields(proof, _CONSISTENCY, "a consistency proof")["schema"] != CONSISTENCY_SCHEMA:
        raise ProofError(f"not a consistency proof (schema {CONSISTENCY_SCHEMA} expected)")
    if proof["kernel_id"] != public_key:
        raise ProofError(f"the proof is of kernel {str(proof['kernel_id'])}, not {public_key}")
    checkpoints = proof.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        raise ProofError("a consistency proof carries the checkpoints from..to")
    bodies = [verify_checkpoint(c, public_key) for c in checkpoints]
    first, last = bodies[0], bodies[-1]
    if (proof.get("from_checkpoint_seq"), proof.get("to_checkpoint_seq")) != (
        first["checkpoint_seq"], last["checkpoint_seq"]
    ):
        raise ProofError("from_checkpoint_seq / to_checkpoint_seq do not match the checkpoints carried")
    for prev, cur in zip(bodies, bodies[1:]):
        why = extends_problem(prev, cur)
        if why is not None:
            raise ProofError(why)
    if proof.get("links") != consistency_links(bodies):
        raise ProofError("the consistency links do not match the signed checkpoints")
    return first, last
