"""``chio-durable approvals list|show|approve|deny|trust``: answer human approvals from the command
line, as the kernel's operator (docs/approvals.md). Every command honours ``--data-dir`` and
``--store`` like the others, so it reaches the same store as a running sidecar or a fleet."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from chio_kernel._render import _receipt_dict, _ts
from chio_kernel.cli._common import CliError, _guarded, _kernel, _print_json, out
from chio_kernel.cli._options import CursorOpt, DataDir, JsonFlag, LimitOpt, StoreOpt, print_next_cursor

__all__ = ["approvals_approve", "approvals_deny", "approvals_list", "approvals_show", "approvals_trust", "wake_lines"]

ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded in the signed resolution receipt).")]
ApproverOpt = Annotated[
    str | None,
    typer.Option(
        "--approver",
        help="Answer as this registered approver or operator credential (`credentials list`); default: the "
        "operator, named by the OS user running this command. Recorded in the signed resolution receipt.",
        show_default=False,
    ),
]


def _approval(kernel: Any, approval_id: str) -> dict[str, Any]:
    approval: dict[str, Any] | None = kernel.get_approval(approval_id)
    if approval is None:
        raise CliError(f"no approval {approval_id!r} in this kernel's store")
    return approval


@_guarded
def approvals_list(
    status: Annotated[
        str, typer.Option(help="pending (still answerable), approved, denied, expired, or all.")
    ] = "pending",
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """List approvals, one page, newest first (default: the pending ones)."""
    kernel = _kernel(data_dir, store=store)
    page = kernel.approvals_page(None if status == "all" else status, limit=limit, cursor=cursor)
    rows = page.items
    if as_json:
        _print_json(rows)
        print_next_cursor(page.next_cursor)
        return
    table = Table(title=f"approvals ({status}: {len(rows)}{' shown' if page.next_cursor else ''}, newest first)")
    for col in ("id", "status", "call", "subject", "expires", "summary"):
        table.add_column(col)
    for a in rows:
        table.add_row(
            a["id"], a["status"], escape(f"{a['tool_server']}/{a['tool_name']}"), escape(a["subject"]),
            _ts(a["expires_at"]), escape(a["summary"]),
        )
    out.print(table)
    if rows and status == "pending":
        out.print(f"approve with: chio-durable approvals approve {rows[0]['id']} --reason '...'", markup=False)
    print_next_cursor(page.next_cursor)


@_guarded
def approvals_show(
    approval_id: Annotated[str, typer.Argument(help="Approval id (apr-...).")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Print one approval as JSON (the call, its parameters, status, answer and receipts)."""
    kernel = _kernel(data_dir, store=store)
    _print_json(_approval(kernel, approval_id))


def _approver(kernel: Any, name: str | None) -> Any:
    """Who answers from the command line. The CLI acts on the store as the kernel's operator (only the
    OS user owning the data directory can run it), so without ``--approver`` that is the operator,
    named ``os:<user>``; ``--approver NAME`` is checked, not trusted: NAME must be an active approver
    or operator credential of this store."""
    import getpass

    from chio_kernel._roles import Principal

    if name is None:
        return Principal("operator", f"os:{getpass.getuser()}")
    for c in kernel.list_credentials():
        if c["name"] == name and c["active"] and c["role"] in ("approver", "operator"):
            return Principal(c["role"], name)
    raise CliError(
        f"--approver {name!r} is not an active approver or operator credential of this store; add one with "
        f"`chio-durable credentials add {name} --role approver` (or leave --approver out to answer as the operator)"
    )


def _respond(approval_id: str, outcome: str, reason: str | None, approver: str | None, data_dir: Any, store: Any,
             as_json: bool) -> None:
    from chio_kernel._approvals import ApprovalConflictError, ApprovalForbiddenError, ApprovalNotFoundError

    kernel = _kernel(data_dir, store=store)
    try:
        receipt = kernel.respond_approval(approval_id, outcome, reason, approver=_approver(kernel, approver))
    except (ApprovalNotFoundError, ApprovalConflictError, ApprovalForbiddenError) as e:
        raise CliError(str(e)) from None
    wakes = kernel.last_wake_report(approval_id) or []
    if as_json:
        _print_json({"approval": kernel.get_approval(approval_id), "receipt": _receipt_dict(receipt), "wakes": wakes})
        return
    out.print(f"approval {approval_id} {outcome}; resolution receipt {receipt.id}", markup=False)
    for line in wake_lines(wakes):
        out.print(line, markup=False)


def wake_lines(wakes: list[dict[str, Any]]) -> list[str]:
    """One line per wake report: ``woke (engine): ...`` or ``wake failed (engine): ...``."""
    return [
        f"{'woke' if w.get('ok') else 'wake failed'} ({w.get('engine', '?')}): {w.get('message', '')}" for w in wakes
    ]


@_guarded
def approvals_approve(
    approval_id: Annotated[str, typer.Argument(help="Approval id (apr-...).")],
    reason: ReasonOpt = None,
    approver: ApproverOpt = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Approve a pending call (once); the caller then re-sends it with the approval id."""
    _respond(approval_id, "approved", reason, approver, data_dir, store, as_json)


@_guarded
def approvals_deny(
    approval_id: Annotated[str, typer.Argument(help="Approval id (apr-...).")],
    reason: ReasonOpt = None,
    approver: ApproverOpt = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Deny a pending call (once)."""
    _respond(approval_id, "denied", reason, approver, data_dir, store, as_json)


@_guarded
def approvals_trust(
    public_key: Annotated[str, typer.Argument(help="The approver's 64-hex-char Ed25519 public key.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Trust an approver key: its signed approval tokens may answer approvals (POST /approvals/{id}/respond).
    Written to the data directory's `approvers` file; a running sidecar on it sees it at once."""
    kernel = _kernel(data_dir, must_exist=False, store=store)
    kernel.trust_approver(public_key)
    out.print(f"trusted approver key {public_key[:16]}… ({kernel.data_dir / 'approvers'})", markup=False)
