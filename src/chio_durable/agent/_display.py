"""Receipts as a table: rich for terminals, HTML for notebooks — one layout for every engine.

Rows can be any decision-like object: an agent run's :class:`GovernedRecord` (a ``Decision``), a
Temporal ``WorkflowStepReceipt``, or a signed ``ChioReceipt`` from the kernel's store. The columns
(``#, receipt, call, verdict, guard``) are the demo's and the CLI's. Receipt ids never wrap: a
receipt id is something people copy.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from rich.markup import escape
from rich.table import Table

__all__ = ["ReceiptTable", "decision_cells", "records_html", "records_table"]

_COLUMNS = ("#", "receipt", "call", "verdict", "guard")

RECEIPT_ID_WIDTH = 41
"""Length of a kernel receipt id (``rcpt-`` + a UUID): the receipt column's minimum width."""


def decision_cells(item: Any) -> tuple[str, str, bool, str]:
    """``(receipt id, "server/tool", allowed, guard)`` of a record, an envelope step or a receipt."""
    evaluation = getattr(item, "evaluation", None)
    if evaluation is not None:  # a Decision / GovernedRecord
        call = item.call
        label = getattr(call, "label", None) or f"{call.tool_server}/{call.tool_name}"
        return evaluation.receipt_id or "-", label, bool(evaluation.allowed), evaluation.guard or "-"
    decision = getattr(item, "decision", None)
    if decision is not None and hasattr(decision, "is_allowed"):  # a signed ChioReceipt
        return item.id, f"{item.tool_server}/{item.tool_name}", bool(decision.is_allowed), decision.guard or "-"
    # a WorkflowStepReceipt (or anything with these fields)
    allowed = bool(getattr(item, "allowed", getattr(item, "verdict", "") == "allow"))
    return (
        getattr(item, "receipt_id", None) or "-",
        f"{item.tool_server}/{item.tool_name}",
        allowed,
        getattr(item, "guard", None) or "-",
    )


def _is_pending(item: Any) -> bool:
    """A decision waiting for a person (a kernel ``pending_approval`` answer)."""
    evaluation = getattr(item, "evaluation", None)
    verdict = getattr(getattr(item, "decision", None), "verdict", None) or getattr(item, "verdict", None)
    return bool(getattr(evaluation, "pending", False)) or verdict == "pending_approval"


def records_table(records: Iterable[Any], title: str = "receipts of the run", *, compact: bool = False) -> Table:
    """Render decisions as a rich table, in order.

    Args:
        records: decisions (``governed.receipts_of(result)``), envelope steps or receipts.
        title: the table's title.
        compact: leave out the ``#`` and ``guard`` columns (narrow terminals); ids are never cut
            and never wrap (the other columns fold first).

    Returns:
        The ``rich`` table.
    """
    table = Table(title=title, title_justify="left")
    if not compact:
        table.add_column("#", justify="right")
    table.add_column("receipt", no_wrap=True, min_width=RECEIPT_ID_WIDTH)
    table.add_column("call", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    if not compact:
        table.add_column("guard", overflow="fold")
    for i, record in enumerate(records):
        receipt, call, allowed, guard = decision_cells(record)
        pending = _is_pending(record)
        verdict = "[green]allow[/]" if allowed else ("[yellow]pending[/]" if pending else "[red]deny[/]")
        cells = [escape(receipt), escape(call), verdict]
        table.add_row(*(cells if compact else [str(i), *cells, "" if allowed else escape(guard)]))
    return table


def records_html(records: Iterable[Any], title: str | None = None) -> str:
    """Render decisions as the same table in plain HTML (``IPython.display.HTML``; no pandas needed).

    Args:
        records: decisions, envelope steps or receipts.
        title: the table's caption.

    Returns:
        The HTML text.
    """
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    rows = []
    for i, record in enumerate(records):
        receipt, call, allowed, guard = decision_cells(record)
        pending = _is_pending(record)
        color = "green" if allowed else ("darkorange" if pending else "crimson")
        shown = "allow" if allowed else ("pending" if pending else "deny")
        cells = [
            str(i),
            f'<code style="white-space:nowrap">{html.escape(receipt)}</code>',
            html.escape(call),
            f'<span style="color:{color}">{shown}</span>',
            "" if allowed else html.escape(guard),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return (
        f'<table class="chio-receipts">{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


class ReceiptTable(list[Any]):
    """A list of decisions that shows as the receipt table: HTML in notebooks, rich in terminals.

    ``ReceiptTable(governed.receipts_of(result))``, ``ReceiptTable(await chio.list_receipts(cap))``,
    ``ReceiptTable(envelope.steps)`` — the same table on every engine.

    Args:
        items: decisions, records, envelope steps or receipts, in order.
        title: the table's caption.
    """

    def __init__(self, items: Iterable[Any] = (), title: str | None = None) -> None:
        super().__init__(items)
        self.title = title

    def _repr_html_(self) -> str:
        return records_html(self, self.title)

    def __rich__(self) -> Table:
        return records_table(self, self.title or "receipts")
