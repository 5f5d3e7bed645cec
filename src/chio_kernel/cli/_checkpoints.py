"""``chio-durable checkpoints list|show|cut|consistency`` and ``receipts proof|verify-proof|verify-evidence``:
signed Merkle checkpoints, their proofs, and evidence packages (docs/checkpoints.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from chio_kernel.cli._common import CliError, _guarded, _kernel, _print_json, err, out
from chio_kernel.cli._options import DataDir, JsonFlag, StoreOpt

__all__ = [
    "checkpoints_consistency",
    "checkpoints_cut",
    "checkpoints_list",
    "checkpoints_show",
    "receipts_proof",
    "receipts_verify_evidence",
    "receipts_verify_proof",
]

OutFile = Annotated[Path | None, typer.Option("--out", help="Write the JSON to FILE instead of stdout.")]
PublicKey = Annotated[
    str, typer.Option("--public-key", help="The kernel's hex Ed25519 public key (`chio-durable keys list`, "
                      "/chio/health's kernel_key): the only thing the check trusts.")
]


def _write(doc: Any, out_file: Path | None, what: str) -> None:
    if out_file is None:
        _print_json(doc)
        return
    tmp = out_file.with_name(out_file.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out_file)
    err.print(f"wrote {what} to {out_file}", markup=False, highlight=False)


def _prove(make: Callable[[], Any], out_file: Path | None, what: str) -> None:
    """Write the proof ``make()`` returns; the kernel's refusal is one error line."""
    from chio_kernel._errors import KernelInputError

    try:
        proof = make()
    except KernelInputError as e:
        raise CliError(str(e)) from None
    _write(proof, out_file, what)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@_guarded
def checkpoints_list(
    kernel_id: Annotated[str | None, typer.Option("--kernel", metavar="KEY",
                                                  help="Only this kernel's checkpoints (hex public key).")] = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """List the signed Merkle checkpoints in the store, oldest first."""
    kernel = _kernel(data_dir, store=store)
    cps = kernel.list_checkpoints(kernel_id=kernel_id)
    if as_json:
        _print_json(cps)
        return
    table = Table(title=f"checkpoints ({len(cps)})")
    for col in ("#", "receipts", "size", "merkle root", "issued (UTC)", "kernel"):
        table.add_column(col, no_wrap=col in ("merkle root", "kernel"))
    for c in cps:
        b = c["body"]
        table.add_row(str(b["checkpoint_seq"]), f"{b['batch_start_seq']}-{b['batch_end_seq']}", str(b["tree_size"]),
                      b["merkle_root"], _when(b["issued_at"]),
                      b["kernel_key"] + (" (this kernel)" if b["kernel_key"] == kernel.public_key_hex else ""))
    out.print(table)


@_guarded
def checkpoints_show(
    checkpoint_seq: Annotated[int, typer.Argument(help="The checkpoint number (this kernel's).", min=1)],
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Print one of this kernel's signed checkpoints as JSON."""
    kernel = _kernel(data_dir, store=store)
    cp = kernel.get_checkpoint(checkpoint_seq)
    if cp is None:
        raise CliError(f"no checkpoint {checkpoint_seq} of this kernel (see `chio-durable checkpoints list`)")
    _print_json(cp)


@_guarded
def checkpoints_cut(data_dir: DataDir = None, store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Checkpoint every receipt not covered yet, now (before a planned stop, or with automatic cutting off)."""
    kernel = _kernel(data_dir, store=store)
    made = kernel.checkpoint_now()
    if as_json:
        _print_json(made)
    elif not made:
        out.print("nothing to checkpoint: every receipt is covered")
    else:
        last = made[-1]["body"]
        out.print(f"cut {len(made)} checkpoint(s), up to {last['checkpoint_seq']} (receipts up to seq "
                  f"{last['batch_end_seq']})")


@_guarded
def checkpoints_consistency(
    first: Annotated[int, typer.Argument(metavar="FROM", help="The earlier checkpoint number.", min=1)],
    last: Annotated[int, typer.Argument(metavar="TO", help="The later checkpoint number.", min=1)],
    out_file: OutFile = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """The proof that checkpoint TO extends checkpoint FROM (check it with `receipts verify-proof`)."""
    kernel = _kernel(data_dir, store=store)
    _prove(lambda: kernel.consistency_proof(first, last), out_file, f"the consistency proof {first} -> {last}")


@_guarded
def receipts_proof(
    receipt_id: Annotated[str, typer.Argument(help="Receipt id (rcpt-...).")],
    out_file: OutFile = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """The inclusion proof of one receipt (a checkpoint is cut first if none covers it yet)."""
    kernel = _kernel(data_dir, store=store)
    _prove(lambda: kernel.inclusion_proof(receipt_id), out_file, f"the inclusion proof of {receipt_id}")


def _does_not_verify(what: str, e: Exception, as_json: bool) -> NoReturn:
    """Say why ``what`` does not verify (and ``{"ok": false, "reason"}`` with ``--json``); exit 1."""
    if as_json:
        _print_json({"ok": False, "reason": str(e)})
    err.print(f"error: {what} does not verify: {e}", markup=False, highlight=False)
    raise typer.Exit(1) from None


def _read_doc(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise CliError(f"{path} is not JSON: pass the file `receipts proof` or `checkpoints consistency` wrote") from None


@_guarded
def receipts_verify_proof(
    proof_file: Annotated[Path, typer.Argument(metavar="FILE", help="An inclusion or consistency proof (JSON; - for stdin).")],
    public_key: PublicKey,
    as_json: JsonFlag = False,
) -> None:
    """Check an inclusion or consistency proof offline, with nothing but the kernel's public key."""
    from chio_kernel.proofs import CONSISTENCY_SCHEMA, ProofError, verify_consistency, verify_inclusion

    doc = _read_doc(proof_file)
    key = public_key.strip().lower()
    try:
        if isinstance(doc, dict) and doc.get("schema") == CONSISTENCY_SCHEMA:
            first, last = verify_consistency(doc, key)
            result = {"ok": True, "kind": "consistency", "from": first["checkpoint_seq"], "to": last["checkpoint_seq"]}
            line = (f"consistency proof ok: checkpoint {last['checkpoint_seq']} extends checkpoint "
                    f"{first['checkpoint_seq']} (receipts up to seq {last['batch_end_seq']})")
        else:
            receipt = verify_inclusion(doc, key)
            cp = doc["checkpoint"]["body"]
            result = {"ok": True, "kind": "inclusion", "receipt_id": receipt["id"],
                      "checkpoint_seq": cp["checkpoint_seq"]}
            line = (f"inclusion proof ok: receipt {receipt['id']} (seq {doc['proof']['receipt_seq']}) is in "
                    f"checkpoint {cp['checkpoint_seq']}, signed by {key}")
    except ProofError as e:
        _does_not_verify("the proof", e, as_json)
    if as_json:
        _print_json(result)
    else:
        out.print(f"[green]{line}[/]", highlight=False)


@_guarded
def receipts_verify_evidence(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An evidence package (`receipts export --evidence`).")],
    public_key: Annotated[str | None, typer.Option(
        "--public-key", help="The exporting kernel's hex public key; without it the key the manifest names is "
        "trusted (the package is then only shown self-consistent).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check an evidence package offline: the signed manifest, every file, receipt, checkpoint and proof."""
    from chio_kernel import ProofError, verify_evidence

    try:
        report = verify_evidence(directory, public_key.strip().lower() if public_key else None)
    except ProofError as e:
        _does_not_verify("the evidence package", e, as_json)
    if as_json:
        _print_json({"ok": True, "kernel_key": report.kernel_key, "receipts": report.receipts,
                     "checkpoints": report.checkpoints, "inclusion_proofs": report.inclusion_proofs})
        return
    pinned = "" if public_key else " (key taken from the manifest: pass --public-key to pin it)"
    out.print(f"[green]evidence ok[/]: {report.receipts} receipts, {report.inclusion_proofs} inclusion proofs, "
              f"{report.checkpoints} checkpoints, signed by {report.kernel_key}{pinned}", highlight=False)
