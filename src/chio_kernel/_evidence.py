"""Evidence packages: a self-contained directory of receipts, checkpoints, inclusion proofs and capability
lineage, laid out like upstream Chio's ``chio evidence export``, and its offline check (docs/checkpoints.md).

Layout: ``manifest.json`` (``chio.evidence_export_manifest.v1``: counts, proof coverage, and every
other file's sha256 and size), ``manifest.sig`` (the exporting kernel's Ed25519 signature over the
manifest's canonical JSON: ours, so that no byte of the package can change unnoticed),
``query.json``, ``receipts.ndjson`` (``{"seq", "receipt"}``), ``child-receipts.ndjson`` (empty: no
child receipts here), ``checkpoints.ndjson`` (signed checkpoints, the contiguous run the receipts
need), ``inclusion-proofs.ndjson`` (upstream's proof records, one per receipt),
``capability-lineage.ndjson``, ``retention.json``, ``README.txt``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chio_sdk.models import CapabilityToken
from pydantic import ValidationError

from chio_kernel._capabilities import capability_signing_bytes
from chio_kernel._errors import KernelInputError, ProofError
from chio_kernel._receipts import receipt_wire_dict, verify_receipt_dict
from chio_kernel.canonical import canonical_json
from chio_kernel.proofs import CONSISTENCY_SCHEMA, INCLUSION_SCHEMA, consistency_links, verify_consistency, verify_inclusion
from chio_kernel.signing import verify_hex

__all__ = ["MANIFEST_SCHEMA", "EvidenceReport", "verify_evidence", "write_evidence"]

MANIFEST_SCHEMA = "chio.evidence_export_manifest.v1"
_FILES = ("query.json", "receipts.ndjson", "child-receipts.ndjson", "checkpoints.ndjson", "capability-lineage.ndjson",
          "inclusion-proofs.ndjson", "retention.json", "README.txt")
_OURS = frozenset({"manifest.json", "manifest.sig", *_FILES})


@dataclass(frozen=True)
class EvidenceReport:
    """What :func:`verify_evidence` checked.

    Attributes:
        kernel_key: the public key (hex) that signed the package's manifest, receipts and checkpoints.
        receipts: receipts checked.
        checkpoints: checkpoints checked.
        inclusion_proofs: inclusion proofs checked.
    """

    kernel_key: str
    receipts: int
    checkpoints: int
    inclusion_proofs: int


def _ndjson(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                    for r in rows)


def _json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def lineage_row(token: CapabilityToken, parent_id: str | None) -> dict[str, Any]:
    """One ``capability-lineage.ndjson`` row (upstream's fields, plus the signed ``token``)."""
    return {
        "capability_id": token.id, "subject_key": token.subject, "issuer_key": token.issuer,
        "issued_at": token.issued_at, "expires_at": token.expires_at,
        "grants_json": json.dumps(token.scope.model_dump(mode="json", exclude_none=True), sort_keys=True),
        "delegation_depth": len(token.delegation_chain), "parent_capability_id": parent_id,
        "token": token.model_dump(mode="json", exclude_none=True),
    }


def write_evidence(
    directory: Path, *, kernel_key: str, sign_hex: Callable[[bytes], str], exported_at: int, query: Mapping[str, Any],
    receipts: Sequence[tuple[int, Mapping[str, Any]]], checkpoints: Sequence[Mapping[str, Any]],
    proofs: Sequence[Mapping[str, Any]], lineage: Sequence[Mapping[str, Any]], retention: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a package into ``directory`` (created; it must be empty) and return its manifest.

    Raises:
        KernelInputError: ``directory`` exists and is not empty.
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise KernelInputError(f"{directory} is not an empty directory: pass a new or empty one for the evidence")
    directory.mkdir(parents=True, exist_ok=True)
    covered = len(proofs)
    readme = (
        "Chio evidence export (chio-durable)\n\n"
        f"Tool receipts: {len(receipts)}\nChild receipts: 0\nCheckpoints: {len(checkpoints)}\n"
        f"Inclusion proofs: {covered}\nUncheckpointed receipts: {len(receipts) - covered}\n\n"
        f"Check it offline: chio-durable receipts verify-evidence {directory.name} --public-key {kernel_key}\n"
    )
    contents = {
        "query.json": _json(query),
        "receipts.ndjson": _ndjson([{"seq": s, "receipt": receipt_wire_dict(r)} for s, r in receipts]),
        "child-receipts.ndjson": b"",
        "checkpoints.ndjson": _ndjson(checkpoints),
        "capability-lineage.ndjson": _ndjson(lineage),
        "inclusion-proofs.ndjson": _ndjson(proofs),
        "retention.json": _json(retention),
        "README.txt": readme.encode(),
    }
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    manifest = {
        "schema": MANIFEST_SCHEMA, "exportedAt": exported_at, "kernelKey": kernel_key, "query": dict(query),
        "counts": {"toolReceipts": len(receipts), "childReceipts": 0, "checkpoints": len(checkpoints),
                   "capabilityLineage": len(lineage), "inclusionProofs": covered,
                   "uncheckpointedReceipts": len(receipts) - covered},
        "proofCoverage": {"checkpointedReceipts": covered, "uncheckpointedReceipts": len(receipts) - covered},
        "childReceiptScope": "full_query_window",
        "files": [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in contents.items()],
    }
    (directory / "manifest.json").write_bytes(_json(manifest))
    (directory / "manifest.sig").write_text(sign_hex(canonical_json(manifest)) + "\n", encoding="ascii")
    return manifest


def _lines(directory: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate((directory / name).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise ProofError(f"{name} line {n} is not JSON") from None
        if not isinstance(row, dict):
            raise ProofError(f"{name} line {n} is not a JSON object")
        out.append(row)
    return out


def _manifest(directory: Path, public_key: str | None) -> tuple[dict[str, Any], str]:
    """The manifest, its signature checked, and every listed file's digest and size (and no other file)."""
    try:
        raw = (directory / "manifest.json").read_bytes()
        manifest = json.loads(raw)
        signature = (directory / "manifest.sig").read_text(encoding="ascii").strip()
    except (OSError, ValueError) as err:
        raise ProofError(f"{directory} is not an evidence package (manifest.json, manifest.sig): {err}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ProofError(f"manifest.json is not a {MANIFEST_SCHEMA} manifest")
    key = str(manifest.get("kernelKey"))
    if public_key is not None and key != public_key:
        raise ProofError(f"the package was exported by kernel {key}, not {public_key}")
    if raw != _json(manifest) or not verify_hex(key, signature, canonical_json(manifest)):
        raise ProofError("manifest.json was altered (its signature in manifest.sig does not verify)")
    listed = {f["path"]: f for f in manifest.get("files", [])}
    if set(listed) != set(_FILES):
        raise ProofError(f"the manifest lists {sorted(listed)}, not the package's files {sorted(_FILES)}")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in _OURS)
    if extra:
        raise ProofError(f"files not in the manifest were added: {extra}")
    for name, entry in listed.items():
        data = (directory / name).read_bytes() if (directory / name).is_file() else None
        if data is None:
            raise ProofError(f"{name} is missing")
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise ProofError(f"{name} was altered (its sha256 or size differs from the manifest)")
    return manifest, key


def verify_evidence(directory: str | os.PathLike[str], public_key: str | None = None) -> EvidenceReport:
    """Check an evidence package offline: nothing but its files (and, to pin it, the kernel's public key).

    Checks the manifest's signature and every file's digest, each receipt's signature, each checkpoint's
    signature and that they form one chain, each inclusion proof against its checkpoint, the counts, and
    each capability token's signature.

    Args:
        directory: the package.
        public_key: the kernel's hex public key; None trusts the key the manifest names.

    Returns:
        What was checked.

    Raises:
        ProofError: naming what is wrong.
    """
    path = Path(directory)
    manifest, key = _manifest(path, public_key)
    receipts = _lines(path, "receipts.ndjson")
    checkpoints = _lines(path, "checkpoints.ndjson")
    proofs = _lines(path, "inclusion-proofs.ndjson")
    if checkpoints:
        bodies: list[dict[str, Any]] = [c["body"] if isinstance(c.get("body"), dict) else {} for c in checkpoints]
        verify_consistency({
            "schema": CONSISTENCY_SCHEMA, "kernel_id": key, "from_checkpoint_seq": bodies[0].get("checkpoint_seq"),
            "to_checkpoint_seq": bodies[-1].get("checkpoint_seq"), "checkpoints": checkpoints,
            "links": consistency_links(bodies) if all(bodies) else [],
        }, key)
    by_seq = {c["body"]["checkpoint_seq"]: c for c in checkpoints}
    by_receipt = {p.get("receipt_seq"): p for p in proofs}
    if len(by_receipt) != len(proofs):
        raise ProofError("inclusion-proofs.ndjson proves one receipt twice")
    for row in receipts:
        _check_receipt(row, by_receipt, by_seq, key)
    if {r.get("seq") for r in receipts} < set(by_receipt):
        raise ProofError("inclusion-proofs.ndjson proves receipts the package does not hold")
    counts = manifest.get("counts", {})
    if (counts.get("toolReceipts"), counts.get("checkpoints"), counts.get("inclusionProofs")) != (
        len(receipts), len(checkpoints), len(proofs)
    ):
        raise ProofError("the manifest's counts do not match the files")
    for row in _lines(path, "capability-lineage.ndjson"):
        _check_lineage(row)
    return EvidenceReport(key, len(receipts), len(checkpoints), len(proofs))


def _check_receipt(row: Mapping[str, Any], by_receipt: Mapping[Any, Mapping[str, Any]],
                   by_seq: Mapping[Any, Mapping[str, Any]], key: str) -> None:
    """A receipt line: its signature, and its inclusion proof (when it has one) against its checkpoint."""
    receipt, seq = row.get("receipt"), row.get("seq")
    record = by_receipt.get(seq)
    if not isinstance(receipt, dict):
        raise ProofError(f"receipts.ndjson: the line of seq {seq!r} carries no receipt object")
    if record is None:
        why = verify_receipt_dict(receipt, {str(receipt.get("kernel_key"))})
        if why is not None:
            raise ProofError(f"receipts.ndjson seq {seq}: {why}")
        return
    checkpoint = by_seq.get(record.get("checkpoint_seq"))
    if checkpoint is None:
        raise ProofError(f"the proof of receipt seq {seq} names checkpoint {record.get('checkpoint_seq')!r}, "
                         "which the package does not hold")
    try:
        verify_inclusion({"schema": INCLUSION_SCHEMA, "receipt": receipt, "checkpoint": checkpoint,
                          "proof": record}, key)
    except ProofError as err:
        raise ProofError(f"receipt seq {seq}: {err}") from None


def _check_lineage(row: Mapping[str, Any]) -> None:
    """A lineage line: the token's signature by its issuer, and the row's fields taken from the token."""
    try:
        token = CapabilityToken.model_validate(row.get("token"))
    except ValidationError as err:
        raise ProofError(f"capability-lineage.ndjson: {row.get('capability_id')!r} carries no valid token: {err}") from None
    try:
        signed = verify_hex(token.issuer, token.signature, capability_signing_bytes(token))
    except ValueError:
        signed = False
    if not signed:
        raise ProofError(f"capability-lineage.ndjson: the token of {token.id} has an invalid signature")
    if dict(row) != lineage_row(token, row.get("parent_capability_id")):
        raise ProofError(f"capability-lineage.ndjson: the row of {token.id} differs from its signed token")
