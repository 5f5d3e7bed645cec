"""Rendering shared by the CLI and the demo: rich tables of capabilities and receipts, and the JSON
forms the CLI prints (always the signed objects, untouched)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from rich.table import Table
from rich.text import Text

from chio_kernel._money import format_money

__all__ = ["TableColumn", "fitted_table", "receipt_table"]


def _ts(value: int | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _grant_text(grant: Any) -> str:
    ops = ",".join(o.value for o in grant.operations)
    extras = []
    if grant.constraints:
        extras.append(" ".join(f"{c.type}={c.value}" for c in grant.constraints))
    if grant.max_invocations is not None:
        extras.append(f"max {grant.max_invocations}")
    if grant.max_total_cost is not None:
        extras.append(f"budget {format_money(grant.max_total_cost.units, grant.max_total_cost.currency)}")
    tail = f" ({'; '.join(extras)})" if extras else ""
    return f"{grant.server_id}:{grant.tool_name}:{ops}{tail}"


@dataclass(frozen=True)
class TableColumn:
    """One column of a :func:`fitted_table`.

    ``is_id``: its cells are ids (copied by people): never wrapped, folded or cut (shown whole or not at all).
    ``rank``: the order in which other columns stay when the terminal is narrow (lower stays longer);
    ``None``: always shown (folded when narrow).
    """

    header: str
    is_id: bool = False
    rank: int | None = None
    justify: Literal["default", "left", "center", "right", "full"] = "default"


_FOLDED_MIN = 8  # the narrowest a folded (non-id) column is worth showing


def fitted_table(title: str, columns: Sequence[TableColumn], rows: Sequence[Sequence[Any]], width: int) -> Table:
    """A table whose id columns are whole at ``width``: narrow terminals get fewer columns, not cut ids.

    Columns with a ``rank`` are dropped, highest rank first, until the ids and the folded minimum of
    every other column fit; the caption names what was left out (``--json`` shows every field).
    """
    cells = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]

    def need(i: int) -> int:
        col = columns[i]
        longest = max([len(col.header), *(row[i].cell_len for row in cells)])
        return (longest if col.is_id else min(longest, _FOLDED_MIN)) + 3  # padding and a rule

    shown = list(range(len(columns)))
    droppable = sorted((i for i, c in enumerate(columns) if c.rank is not None),
                       key=lambda i: -(columns[i].rank or 0))
    hidden: list[str] = []
    while droppable and 1 + sum(need(i) for i in shown) > width:
        i = droppable.pop(0)
        shown.remove(i)
        hidden.insert(0, columns[i].header)
    caption = f"not shown at this width: {', '.join(hidden)} (--json shows every field)" if hidden else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i in shown:
        col = columns[i]
        if col.is_id:
            table.add_column(col.header, no_wrap=True, min_width=need(i) - 3, justify=col.justify)
        else:
            table.add_column(col.header, overflow="fold", justify=col.justify)
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    return table


def _plain(value: Any, style: str = "") -> Text:
    """User data as a table cell: a Text is never parsed as rich markup (``[red]``) nor emoji
    codes (``a:b`` would print as an emoji), unlike a plain ``str`` cell."""
    return Text(str(value), style=style)


def _rate_limit(kernel: Any, token: Any) -> tuple[int, float] | None:
    """``(max_calls, per_seconds)`` the kernel enforces on this capability, or None."""
    info = kernel.capability_info(token.id)
    rate = info.get("rate_limit") if info else None
    return (int(rate[0]), float(rate[1])) if rate else None


def _rate_text(rate: tuple[int, float] | None) -> str:
    return "-" if rate is None else f"{rate[0]}/{rate[1]:g}s"


def _status(kernel: Any, token: Any) -> tuple[str, str | None]:
    valid, reason = kernel.validate_capability(token)
    if valid:
        return "valid", None
    text = (reason or "").lower()
    if "revok" in text:
        return "revoked", reason
    if "expir" in text:
        return "expired", reason
    return "invalid", reason


def _token_table(kernel: Any, tokens: Iterable[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("id", no_wrap=True)
    table.add_column("subject", overflow="fold")
    table.add_column("grants", overflow="fold")
    table.add_column("rate limit", no_wrap=True)
    table.add_column("expires (UTC)")
    table.add_column("status")
    for t in tokens:
        status, _ = _status(kernel, t)
        style = {"valid": "green", "revoked": "red"}.get(status, "yellow")
        grants = "\n".join(_grant_text(g) for g in t.scope.grants) or "-"
        parent = f"\n(child of {t.delegation_chain[-1].capability_id})" if t.delegation_chain else ""
        table.add_row(_plain(t.id + parent), _plain(t.subject), _plain(grants),
                      _plain(_rate_text(_rate_limit(kernel, t))), _ts(t.expires_at), _plain(status, style))
    return table


def _token_dict(kernel: Any, token: Any) -> dict[str, Any]:
    """``{"token": <the signed token, untouched>, "status": ..., "reason": ...}``: display fields stay
    beside the token, so ``token`` verifies as issued (Ed25519 over its canonical JSON)."""
    status, reason = _status(kernel, token)
    data: dict[str, Any] = {"token": token.model_dump(mode="json", exclude_none=True), "status": status}
    rate = _rate_limit(kernel, token)  # kernel-side state, not part of the signed token
    data["rate_limit"] = None if rate is None else {"max_calls": rate[0], "per_seconds": rate[1]}
    if reason:
        data["reason"] = reason
    return data


def _receipt_dict(receipt: Any) -> dict[str, Any]:
    """A receipt exactly as signed (no empty evidence/metadata): the one rule of every output path."""
    from chio_kernel._receipts import receipt_wire_dict

    return receipt_wire_dict(receipt)


def receipt_table(
    receipts: Iterable[Any],
    title: str = "receipts",
    *,
    compact: bool = False,
    positions: Iterable[int] | None = None,
    width: int | None = None,
) -> Table:
    """A rich table of receipts (``receipts list``; ``compact`` drops time and capability, for the demo).

    ``positions``: the ``#`` of each row (``receipts list`` passes the 0-based chain index, so a
    filtered or newest-first listing still numbers receipts as ``receipts verify`` does); default
    0, 1, 2... Deny reasons are long sentences: ``receipts show ID`` prints them. ``width``: the
    console's (default: a fresh Console's, which reads $COLUMNS); ids are never cut at any width.
    """
    numbers = iter(positions) if positions is not None else None
    columns = [TableColumn("#", rank=4, justify="right"), TableColumn("receipt", is_id=True)]
    if not compact:
        columns += [TableColumn("time (UTC)", rank=3), TableColumn("capability", is_id=True, rank=5)]
    # the agent tables' name for server/tool is "call"
    columns += [TableColumn("call", rank=1), TableColumn("verdict", rank=0), TableColumn("guard", rank=2)]
    rows: list[list[Any]] = []
    for i, r in enumerate(receipts):
        allowed = r.decision.is_allowed
        verdict = _plain("allow", "green") if allowed else _plain(r.decision.verdict, "red")
        row: list[Any] = [str(next(numbers) if numbers is not None else i), _plain(r.id)]
        if not compact:
            row += [_ts(r.timestamp), _plain(r.capability_id)]
        row += [_plain(f"{r.tool_server}/{r.tool_name}"), verdict, _plain("" if allowed else r.decision.guard or "-")]
        rows.append(row)
    if width is None:
        from rich.console import Console

        width = Console().width
    return fitted_table(title, columns, rows, width)
