"""Properties of ``chio_kernel.proofs`` (pure functions): the tree against RFC 6962's recursive
definition, inclusion for every leaf of every tree of 1..300 leaves, and consistency between every
pair of checkpoints of a chain."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from chio_kernel import ProofError
from chio_kernel.proofs import (
    CONSISTENCY_SCHEMA,
    audit_path,
    audit_path_in,
    build_checkpoint,
    consistency_links,
    leaf_hash,
    merkle_levels,
    merkle_root,
    node_hash,
    root_from_path,
    verify_consistency,
)
from chio_kernel.signing import Signer

_SIGNER = Signer(Ed25519PrivateKey.generate())
_KEY = _SIGNER.public_key_hex


def _mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH: split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


_LEAVES = [leaf_hash(b"leaf-%d" % i) for i in range(300)]


def test_known_vectors() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert merkle_root([leaf_hash(b"a")]) == leaf_hash(b"a")
    assert merkle_root([leaf_hash(b"l"), leaf_hash(b"r")]) == node_hash(leaf_hash(b"l"), leaf_hash(b"r"))
    with pytest.raises(ProofError):
        merkle_root([])


def test_inclusion_for_every_leaf_of_every_tree_size_1_to_300() -> None:
    for n in range(1, 301):
        leaves = _LEAVES[:n]
        levels = merkle_levels(leaves)
        root = levels[-1][0]
        assert root == _mth(leaves) == merkle_root(leaves), n
        depth = (n - 1).bit_length()  # ceil(log2 n)
        for i in range(n):
            path = audit_path_in(levels, i)
            assert len(path) <= depth
            assert root_from_path(leaves[i], i, n, path) == root, (n, i)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_inclusion_fails_for_any_altered_leaf_index_size_or_path(n: int, data: st.DataObject) -> None:
    leaves = _LEAVES[:n]
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, n - 1))
    path = audit_path(leaves, i)
    assert root_from_path(leaf_hash(b"other"), i, n, path) != root
    if path:
        j = data.draw(st.integers(0, len(path) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = bytearray(path[j])
        bad[bit // 8] ^= 1 << (bit % 8)
        assert root_from_path(leaves[i], i, n, [*path[:j], bytes(bad), *path[j + 1:]]) != root
        assert root_from_path(leaves[i], i, n, path[:-1]) != root
    other = data.draw(st.integers(0, n - 1))
    if leaves[other] != leaves[i] and other != i:
        assert root_from_path(leaves[i], other, n, path) != root
    assert root_from_path(leaves[i], i, n, [*path, root]) is None
    with pytest.raises(ProofError):
        audit_path(leaves, n)


def _chain(sizes: Sequence[int]) -> list[dict[str, object]]:
    checkpoints: list[dict[str, object]] = []
    start, previous = 1, None
    for seq, size in enumerate(sizes, 1):
        cp = build_checkpoint(_SIGNER.sign_hex, _KEY, seq, start, _LEAVES[start - 1:start - 1 + size], 1_800_000_000,
                              previous)
        checkpoints.append(cp)
        start += size
        previous = cp["body"]
    return checkpoints


def _proof(checkpoints: list[dict[str, object]], m: int, n: int) -> dict[str, object]:
    part = checkpoints[m - 1:n]
    return {"schema": CONSISTENCY_SCHEMA, "kernel_id": _KEY, "from_checkpoint_seq": m, "to_checkpoint_seq": n,
            "checkpoints": part, "links": consistency_links([c["body"] for c in part])}  # type: ignore[misc]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10))
def test_consistency_for_every_pair_m_le_n(sizes: list[int]) -> None:
    checkpoints = _chain(sizes)
    for m in range(1, len(sizes) + 1):
        for n in range(m, len(sizes) + 1):
            first, last = verify_consistency(_proof(checkpoints, m, n), _KEY)
            assert (first["checkpoint_seq"], last["checkpoint_seq"]) == (m, n)
            assert last["batch_end_seq"] == sum(sizes[:n])


def test_consistency_for_every_pair_of_a_chain_over_300_receipts() -> None:
    sizes = list(range(1, 25))  # 24 checkpoints of 1..24 receipts: 300 receipts, 300 pairs m <= n
    assert sum(sizes) == 300
    checkpoints = _chain(sizes)
    for m in range(1, len(sizes) + 1):
        for n in range(m, len(sizes) + 1):
            assert verify_consistency(_proof(checkpoints, m, n), _KEY)[1]["batch_end_seq"] == sum(sizes[:n])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=3, max_size=8), data=st.data())
def test_consistency_fails_when_a_checkpoint_is_dropped_or_swapped(sizes: list[int], data: st.DataObject) -> None:
    checkpoints = _chain(sizes)
    proof = _proof(checkpoints, 1, len(sizes))
    drop = data.draw(st.integers(1, len(sizes) - 2))
    gap = dict(proof, checkpoints=[c for i, c in enumerate(checkpoints) if i != drop])
    with pytest.raises(ProofError):
        verify_consistency(gap, _KEY)
    fork = _chain([*sizes[:drop], sizes[drop] + 1, *sizes[drop + 1:]])
    part = [*checkpoints[:drop + 1], *fork[drop + 1:]]
    mixed = dict(proof, checkpoints=part, links=consistency_links([c["body"] for c in part]))  # type: ignore[misc]
    with pytest.raises(ProofError, match="does not cite checkpoint|not right after"):  # a forked history does not extend it
        verify_consistency(mixed, _KEY)
