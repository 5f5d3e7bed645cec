"""``chio-durable approvals list|show|approve|deny|trust``: answer human approvals from the command
line, as the kernel's operator (docs/approvals.md). Every command honours ``--data-dir`` and
``--store`` like the others, so it reaches the same store as a running sidecar or a fleet."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from chio_kernel._render import TableColumn, _receipt_dict, _ts, fitted_table
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


_STATUSES = ("pending", "approved", "denied", "expired", "all")


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
    if status not in _STATUSES:
        raise CliError(f"--status must be one of {', '.join(_STATUSES)}; got {status!r:.40}")
    kernel = _kernel(data_dir, store=store)
    page = kernel.approvals_page(None if status == "all" else status, limit=limit, cursor=cursor)
    rows = page.items
    if as_json:
        _print_json(rows)
        print_next_cursor(page.next_cursor)
        return
    columns = [TableColumn("id", is_id=True), TableColumn("status", rank=3), TableColumn("call", rank=0),
               TableColumn("subject", rank=2), TableColumn("expires (UTC)", rank=4), TableColumn("summary", rank=1)]
    cells = [[Text(a["id"]), Text(a["status"]), Text(f"{a['tool_server']}/{a['tool_name']}"), Text(a["subject"]),
              _ts(a["expires_at"]), Text(a["summary"])] for a in rows]
    shown = f"approvals ({status}: {len(rows)}{' shown' if page.next_cursor else ''}, newest first)"
    out.print(fitted_table(shown, columns, cells, out.width))
    if rows and status == "pending":
        _answer_footer([a["id"] for a in rows])
    print_next_cursor(page.next_cursor)


_FOOTER_IDS = 10  # more pending approvals than this: the footer says how to list their ids


def _answer_footer(ids: list[str]) -> None:
    """How to answer: the command, then every pending id whole (one a line), or how to list them."""
    out.print("approve with: chio-durable approvals approve ID --reason '...'", markup=False, highlight=False)
    out.print("deny with:    chio-durable approvals deny ID --reason '...'", markup=False, highlight=False)
    if len(ids) <= _FOOTER_IDS:
        out.print("pending: " + ("\n         ".join(ids)), markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(f"{len(ids)} pending: every id with `chio-durable approvals list --json` "
                  "(or `approvals list --json | jq -r '.[].id'`)", markup=False, highlight=False, soft_wrap=True)


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
    out.print(f"trusted approver key {public_key} ({kernel.data_dir / 'approvers'})", markup=False)
