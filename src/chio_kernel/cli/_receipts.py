"""``chio-durable receipts show|verify|export|list|tail``: one receipt, the whole chain's check, the
export as JSON lines, and the filtered listings answered by the store (see ``Kernel.query_receipts``),
newest first, and following the log as receipts come."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from chio_kernel._receipts import chain_dict
from chio_kernel._render import _receipt_dict, _ts, receipt_table
from chio_kernel.cli._common import (
    CliError,
    _guarded,
    _kernel,
    _known_capability,
    _print_json,
    _resolve_dir,
    err,
    out,
)
from chio_kernel._coerce import MAX_STORED_INT
from chio_kernel.cli._options import CursorOpt, DataDir, JsonFlag, StoreOpt, print_next_cursor

__all__ = ["parse_since", "receipts_export", "receipts_list", "receipts_show", "receipts_tail", "receipts_verify"]

#: Receipt ``metadata`` keys the engine layers record (filters ``--flow-run`` / ``--workflow-id``).
FLOW_RUN_KEY = "flow_run_id"
WORKFLOW_ID_KEY = "workflow_id"

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(spec: str, now: float | None = None) -> int:
    """``--since``: ISO-8601 (``2026-11-25T10:00:00Z``, a date, or naive = UTC) or relative to
    now (``30s``, ``10m``, ``2h``, ``1d``) -> Unix seconds."""
    m = _RELATIVE.match(spec)
    if m:
        current = time.time() if now is None else now
        return max(0, int(current - int(m.group(1)) * _UNIT_SECONDS[m.group(2)]))
    try:
        when = datetime.fromisoformat(spec.strip())
    except ValueError:
        raise CliError(
            f"bad --since {spec!r}: use ISO-8601 (2026-11-25T10:00:00Z, 2026-11-25) or a duration back "
            "from now (30s, 10m, 2h, 1d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0, int(when.timestamp()))


CapabilityFilter = Annotated[
    str | None, typer.Option("--capability", help="Only receipts of this capability (an unknown id is an error).")
]
VerdictFilter = Annotated[str | None, typer.Option("--verdict", metavar="allow|deny", help="Only allows or only denies.")]
FlowRunFilter = Annotated[
    str | None,
    typer.Option("--flow-run", metavar="ID", help=f"Only receipts whose metadata.{FLOW_RUN_KEY} is ID (a Prefect flow run)."),
]
WorkflowFilter = Annotated[
    str | None,
    typer.Option(
        "--workflow-id", metavar="ID", help=f"Only receipts whose metadata.{WORKFLOW_ID_KEY} is ID (a Temporal workflow)."
    ),
]


def _filters(kernel: Any, data_dir: Any, capability: str | None, verdict: str | None, flow_run: str | None,
             workflow_id: str | None) -> dict[str, Any]:
    """Checked filter arguments for ``Kernel.query_receipts``."""
    if capability is not None:
        _known_capability(kernel, capability, data_dir)  # a typo must not look like "no receipts"
    if verdict is not None and verdict.lower() not in ("allow", "deny"):
        raise CliError(f"bad --verdict {verdict!r}: use allow or deny")
    metadata = {}
    if flow_run is not None:
        metadata[FLOW_RUN_KEY] = flow_run
    if workflow_id is not None:
        metadata[WORKFLOW_ID_KEY] = workflow_id
    return {"capability_id": capability, "verdict": verdict.lower() if verdict else None, "metadata": metadata}


@_guarded
def receipts_list(
    capability: CapabilityFilter = None,
    verdict: VerdictFilter = None,
    flow_run: FlowRunFilter = None,
    workflow_id: WorkflowFilter = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="WHEN",
                     help="Only receipts at or after WHEN: ISO-8601 (2026-11-25T10:00:00Z; no zone = UTC) "
                     "or back from now (30s, 10m, 2h, 1d)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many receipts (one page).")] = 100,
    cursor: CursorOpt = None,
    after_seq: Annotated[int | None, typer.Option("--after-seq", min=0, max=MAX_STORED_INT, help="Only after this store position.")] = None,
    oldest_first: Annotated[bool, typer.Option("--oldest-first", help="Chain order instead of newest first.")] = False,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """List receipts, one page, newest first; the filters combine (AND) and run in the store."""
    since_ts = parse_since(since) if since is not None else None
    kernel = _kernel(data_dir, store=store)
    filters = _filters(kernel, data_dir, capability, verdict, flow_run, workflow_id)
    next_cursor = None
    if after_seq is not None:
        if cursor is not None:
            raise CliError("pass either --cursor or --after-seq, not both")
        rows = kernel.query_receipts(**filters, since=since_ts, after_seq=after_seq, limit=limit,
                                     newest_first=not oldest_first)
    else:
        page = kernel.receipts_page(**filters, since=since_ts, limit=limit, cursor=cursor,
                                    newest_first=not oldest_first)
        rows, next_cursor = page.items, page.next_cursor
    if as_json:
        _print_json([_receipt_dict(r) for _, r in rows])
    else:
        order = "oldest first" if oldest_first else "newest first"
        out.print(receipt_table([r for _, r in rows], f"receipts ({len(rows)} shown, {order})",
                                positions=[seq - 1 for seq, _ in rows], width=out.width))
    print_next_cursor(next_cursor)


def _tail_line(seq: int, r: Any) -> Text:
    allowed = r.decision.is_allowed
    return Text.assemble(
        (f"#{seq - 1}", "dim"), "  ", _ts(r.timestamp), "  ", r.id, "  ", r.capability_id, "  ",
        f"{r.tool_server}/{r.tool_name}", "  ",
        ("allow", "green") if allowed else (r.decision.verdict, "red"),
        "" if allowed else f"  {r.decision.guard or '-'}",
    )


@_guarded
def receipts_tail(
    capability: CapabilityFilter = None,
    verdict: VerdictFilter = None,
    flow_run: FlowRunFilter = None,
    workflow_id: WorkflowFilter = None,
    interval: Annotated[float, typer.Option("--interval", min=0.05, max=3600, help="Seconds between polls of the store.")] = 1.0,
    count: Annotated[
        int | None, typer.Option("--count", min=1, max=MAX_STORED_INT, help="Stop after printing this many receipts (default: run until Ctrl-C).")
    ] = None,
    after_seq: Annotated[
        int | None,
        typer.Option("--after-seq", min=0, max=MAX_STORED_INT, help="Start after this store position (default: the newest receipt now)."),
    ] = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow new receipts as they are stored (poll by store position); Ctrl-C stops.

    One line per receipt; --json prints one JSON receipt per line (as `receipts export`)."""
    kernel = _kernel(data_dir, store=store)
    filters = _filters(kernel, data_dir, capability, verdict, flow_run, workflow_id)
    if after_seq is None:
        newest = kernel.query_receipts(limit=1, newest_first=True)
        after_seq = newest[0][0] if newest else 0
    last, shown = after_seq, 0
    try:  # Ctrl-C is how a user stops following: a clean exit 0, no traceback
        err.print(f"following receipts after store position {after_seq} (Ctrl-C to stop)",
                  markup=False, highlight=False)
        while True:
            head = kernel.query_receipts(limit=1, newest_first=True)
            # only the new receipts: their own capability column, no index catch-up (a write) per poll
            rows = kernel.query_receipts(**filters, after_seq=last, limit=500, capability_index=False)
            for seq, r in rows:
                if as_json:
                    _print_json_line(r)
                else:
                    out.print(_tail_line(seq, r), soft_wrap=True)
                shown += 1
                if count is not None and shown >= count:
                    return
            # everything up to the head read before this query has been seen (filtered out or shown)
            top = head[0][0] if head else 0
            last = rows[-1][0] if len(rows) == 500 else max(last, top, rows[-1][0] if rows else 0)
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _print_json_line(receipt: Any) -> None:
    sys.stdout.write(json.dumps(_receipt_dict(receipt), ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@_guarded
def receipts_show(
    receipt_id: Annotated[str, typer.Argument(help="Receipt id (rcpt-...).")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Show one receipt and whether its signature verifies."""
    kernel = _kernel(data_dir, store=store)
    receipt = kernel.get_receipt(receipt_id)
    if receipt is None:
        raise CliError(f"no receipt {receipt_id!r} in {_resolve_dir(data_dir)}")
    data = _receipt_dict(receipt)
    if as_json:
        _print_json(data)
        return
    ok = kernel.verify_receipt(receipt)
    out.print_json(json.dumps(data, ensure_ascii=False))
    out.print("signature: " + ("[green]valid[/]" if ok else "[red]INVALID[/]"))


TrustedKeys = Annotated[
    list[str] | None,
    typer.Option("--trusted-key", metavar="KEY",
                 help="A fleet kernel's hex public key (repeat for each): key rows of the store that none of "
                 "them vouches for are reported as forged. Without it key rows are not checked."),
]


@_guarded
def receipts_verify(data_dir: DataDir = None, store: StoreOpt = None, trusted_key: TrustedKeys = None,
                    as_json: JsonFlag = False) -> None:
    """Walk every receipt chain (one per kernel: every signature and hash link), then check each chain against
    its kernel's signed checkpoints (deleted or truncated receipts, equivocation, forged rows). Exit 1 on any problem."""
    kernel = _kernel(data_dir, store=store)
    started = time.perf_counter()
    report = kernel.verify_chain()
    checks = kernel.verify_checkpoints(trusted_keys=trusted_key)
    took = time.perf_counter() - started
    data = {
        "ok": bool(report.ok and checks.ok),
        "count": report.count,
        "first_broken_index": report.first_broken_index,
        "reason": report.reason,
        "chains": [chain_dict(c) for c in report.chains],
        "checkpoints": {"ok": checks.ok, "count": checks.checkpoints, "covered": checks.covered,
                        "uncovered_chains": checks.uncovered, "problems": checks.problems},
    }
    if as_json:
        _print_json(data)
    elif report.ok and checks.ok:
        out.print(f"[green]chain ok[/]: {report.count} receipts, signatures and hash links verified; "
                  f"{checks.checkpoints} checkpoints cover {checks.covered} of them ({took:.2f}s)")
        if len(report.chains) > 1:  # a fleet store: one chain per kernel
            for c in report.chains:
                out.print(f"  kernel {c.kernel_id}: {c.count} receipts, head {c.head_seq}", markup=False)
        for chain in checks.uncovered:
            out.print(f"  chain {chain}: no kernel checkpoints it (hash links and signatures only)", markup=False)
    if not report.ok:
        err.print(
            f"error: receipt chain broken at index {report.first_broken_index}: {report.reason}",
            markup=False,
            highlight=False,
        )
    for problem in checks.problems:
        err.print(f"error: {problem}", markup=False, highlight=False)
    if not (report.ok and checks.ok):
        raise typer.Exit(1)


@_guarded
def receipts_export(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE instead of stdout.")] = None,
    capability: Annotated[str | None, typer.Option("--capability", help="Only receipts of this capability.")] = None,
    evidence: Annotated[Path | None, typer.Option(
        "--evidence", metavar="DIR", help="Write an evidence package (receipts, checkpoints, inclusion proofs, "
        "capability lineage, signed manifest) into the new or empty directory DIR instead of JSON lines.")] = None,
    flow_run: FlowRunFilter = None,
    workflow_id: WorkflowFilter = None,
    since: Annotated[str | None, typer.Option("--since", metavar="WHEN", help="Only receipts at or after WHEN "
                                              "(ISO-8601 or back from now: 30s, 10m, 2h, 1d).")] = None,
    until: Annotated[str | None, typer.Option("--until", metavar="WHEN", help="Only receipts before WHEN.")] = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Export receipts as JSON lines (one receipt per line, store order), or as an evidence package."""
    if out_file is not None and (not out_file.name or out_file.is_dir()):
        raise CliError(f"--out {str(out_file)!r} is not a file name: pass the file to write, e.g. --out receipts.jsonl")
    kernel = _kernel(data_dir, store=store)
    filters = _filters(kernel, data_dir, capability, None, flow_run, workflow_id)
    since_ts = parse_since(since) if since is not None else None
    until_ts = parse_since(until) if until is not None else None
    if evidence is not None:
        _export_evidence(kernel, evidence, filters, since_ts, until_ts)
        return
    rows = kernel.query_receipts(capability_id=filters["capability_id"], metadata=filters["metadata"], since=since_ts)
    receipts = [r for _, r in rows if until_ts is None or r.timestamp < until_ts]
    lines = (
        json.dumps(_receipt_dict(r), ensure_ascii=False, separators=(",", ":")) + "\n"
        for r in receipts
    )
    if out_file is None:
        for line in lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)
    tmp.replace(out_file)  # never leave a half-written export behind
    err.print(f"exported {len(receipts)} receipts to {out_file}", markup=False, highlight=False)


def _export_evidence(kernel: Any, directory: Path, filters: dict[str, Any], since: int | None,
                     until: int | None) -> None:
    """``export --evidence DIR``."""
    from chio_kernel._errors import KernelInputError

    try:
        manifest = kernel.export_evidence(directory, capability_id=filters["capability_id"],
                                          metadata=filters["metadata"] or None, since=since, until=until)
    except KernelInputError as e:
        raise CliError(str(e)) from None
    counts = manifest["counts"]
    err.print(
        f"exported {counts['toolReceipts']} receipts, {counts['checkpoints']} checkpoints and "
        f"{counts['inclusionProofs']} inclusion proofs to {directory}; check it offline with "
        f"`chio-durable receipts verify-evidence {directory} --public-key {kernel.public_key_hex}`",
        markup=False, highlight=False,
    )
