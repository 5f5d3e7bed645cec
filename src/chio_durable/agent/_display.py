"""Receipts of an agent run as a table: rich for terminals, an HTML string for notebooks."""

from __future__ import annotations

import html
from collections.abc import Iterable

from rich.markup import escape
from rich.table import Table

from chio_durable.agent._denials import GovernedRecord

__all__ = ["records_html", "records_table"]

_COLUMNS = ("#", "kind", "call", "verdict", "guard", "receipt")


def _row(i: int, record: GovernedRecord, compact: bool = False) -> tuple[str, ...]:
    ev = record.evaluation
    receipt = ev.receipt_id or "-"
    if compact and len(receipt) > 14:
        receipt = "…" + receipt[-12:]
    return (
        str(i),
        record.call.kind,
        record.call.label,
        "allow" if ev.allowed else ("pending" if ev.pending else "deny"),
        "" if ev.allowed else (ev.guard or "-"),
        receipt,
    )


def records_table(
    records: Iterable[GovernedRecord], title: str = "receipts of the run", *, compact: bool = False
) -> Table:
    """A rich table of a run's evaluations (``governed.receipts_of(result)``), in order.

    ``compact`` shows only the tail of each receipt id (for narrow terminals).
    """
    table = Table(title=title, title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, overflow="fold", justify="right" if name == "#" else "left")
    for i, record in enumerate(records):
        cells = [escape(c) for c in _row(i, record, compact)]
        cells[3] = "[green]allow[/]" if record.allowed else (
            "[yellow]pending[/]" if record.evaluation.pending else "[red]deny[/]"
        )
        table.add_row(*cells)
    return table


def records_html(records: Iterable[GovernedRecord]) -> str:
    """The same table as a plain HTML string (for ``IPython.display.HTML``; no pandas needed)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    rows = []
    for i, record in enumerate(records):
        color = "green" if record.allowed else "crimson"
        cells = [html.escape(c) for c in _row(i, record)]
        cells[3] = f'<span style="color:{color}">{cells[3]}</span>'
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
