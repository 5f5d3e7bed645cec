"""``chio-durable budgets show|holds|settle|release|expire``: the money budgets and their holds (docs/budgets.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from chio_kernel.cli._common import CliError, _guarded, _kernel, _known_capability, _print_json, out
from chio_kernel._coerce import MAX_STORED_INT
from chio_kernel._money import format_money
from chio_kernel.cli._options import CursorOpt, DataDir, JsonFlag, LimitOpt, StoreOpt, print_next_cursor

__all__ = ["budgets_expire", "budgets_holds", "budgets_release", "budgets_settle", "budgets_show"]


def _amount(units: int | None, currency: str | None) -> str:
    if units is None:
        return "-"
    return format_money(units, currency) if currency else f"{units} (minor units)"


@_guarded
def budgets_show(
    capability_id: Annotated[str, typer.Argument(help="Capability id.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Captured, held and remaining amounts per budgeted grant (the capability's and its ancestors').

    Holds past the TTL are expired first (signed expiry receipts), so the numbers are exact.
    """
    kernel = _kernel(data_dir, store=store)
    _known_capability(kernel, capability_id, data_dir)
    rows = kernel.budgets(capability_id)
    if as_json:
        _print_json({"capability_id": capability_id, "budgets": rows})
        return
    if not rows:
        out.print(f"capability {escape(capability_id)} has no budgeted grants")
        return
    table = Table(title=f"budgets of {escape(capability_id)}")
    for col in ("capability", "grant", "limit", "captured", "held", "remaining", "invocations"):
        table.add_column(col)
    for r in rows:
        who = escape(r["capability_id"]) + (" (ancestor)" if r["inherited"] else "")
        grant = f"#{r['grant_index']} {escape(r['server_id'])}:{escape(r['tool_name'])}"
        cur = r["currency"]
        held = _amount(r["held"], cur) + (f" ({r['open_holds']} open)" if r["open_holds"] else "")
        inv = str(r["invocations"]) + (f" of {r['max_invocations']}" if r["max_invocations"] is not None else "")
        table.add_row(
            who, grant, _amount(r["max_total_cost"], cur), _amount(r["captured"], cur), held,
            _amount(r["remaining"], cur), inv,
        )
    out.print(table)


@_guarded
def budgets_holds(
    state: Annotated[
        str | None, typer.Option("--state", help="open, settled, released or expired (default: every state).")
    ] = None,
    capability: Annotated[str | None, typer.Option("--capability", help="Only holds of this capability.")] = None,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """List budget holds, one page, newest first (an open hold past its TTL shows open until swept)."""
    kernel = _kernel(data_dir, store=store)
    if capability is not None:
        _known_capability(kernel, capability, data_dir)
    page = kernel.holds_page(state=state, capability_id=capability, limit=limit, cursor=cursor)
    if as_json:
        _print_json(page.items)
    else:
        table = Table(title=f"holds ({len(page.items)}{' shown' if page.next_cursor else ''}, newest first)")
        for col in ("receipt", "capability", "amount", "state", "captured", "closed by"):
            table.add_column(col)
        for h in page.items:
            amount = h["amount"]
            table.add_row(
                escape(h["receipt_id"]), escape(h["capability_id"]), _amount(amount["units"], amount["currency"]),
                h["state"], _amount(h["captured_units"], amount["currency"]), escape(h["closed_by"] or "-"),
            )
        out.print(table)
    print_next_cursor(page.next_cursor)


def _print_receipt(receipt: Any, as_json: bool) -> None:
    from chio_kernel._render import _receipt_dict

    data = _receipt_dict(receipt)
    if as_json:
        _print_json(data)
        return
    budget = (receipt.metadata or {}).get("budget", {})
    out.print(f"{receipt.tool_name} receipt {receipt.id}: " + _budget_text(budget), markup=False)


def _budget_text(budget: dict[str, Any]) -> str:
    """A settle/release receipt's budget record for people: amounts in their currency (JSON keeps minor units)."""
    hold = budget.get("hold") if isinstance(budget.get("hold"), dict) else None
    currency = hold.get("currency") if hold else None
    parts = []
    for key, value in budget.items():
        if isinstance(value, dict) and isinstance(value.get("units"), int) and isinstance(value.get("currency"), str):
            parts.append(f"{key} {format_money(value['units'], value['currency'])}")
        elif key.endswith("_units") and isinstance(value, int) and isinstance(currency, str):
            parts.append(f"{key[: -len('_units')]} {format_money(value, currency)}")
        else:
            parts.append(f"{key} {json.dumps(value, ensure_ascii=False)}")
    return ", ".join(parts)


def _hold_errors(fn: Any) -> Any:
    from chio_kernel._holds import HoldConflictError, UnknownHoldError

    try:
        return fn()
    except (HoldConflictError, UnknownHoldError) as e:
        raise CliError(str(e)) from None


@_guarded
def budgets_settle(
    receipt_id: Annotated[str, typer.Argument(help="The allow receipt whose hold to settle (rcpt-...).")],
    units: Annotated[int, typer.Option("--units", min=0, max=MAX_STORED_INT, help="Actual cost in minor units (e.g. cents).")],
    currency: Annotated[str, typer.Option("--currency", help="Currency of the hold, e.g. USD.")],
    op_id: Annotated[str, typer.Option("--op-id", help="Names this settlement: the same op id returns its receipt.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Capture the actual cost of a hold and free the rest (capped at the budget left)."""
    kernel = _kernel(data_dir, store=store)
    cost = {"units": units, "currency": currency}
    _print_receipt(_hold_errors(lambda: kernel.settle(receipt_id, cost, op_id)), as_json)


@_guarded
def budgets_release(
    receipt_id: Annotated[str, typer.Argument(help="The allow receipt whose hold to release (rcpt-...).")],
    op_id: Annotated[str, typer.Option("--op-id", help="Names this release: the same op id returns its receipt.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the signed receipt).")] = "released",
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Free the whole hold (compensation)."""
    kernel = _kernel(data_dir, store=store)
    _print_receipt(_hold_errors(lambda: kernel.release(receipt_id, op_id, reason)), as_json)


@_guarded
def budgets_expire(data_dir: DataDir = None, store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Expire every hold past the hold TTL now (a signed expiry receipt each)."""
    from chio_kernel._render import _receipt_dict

    receipts = _kernel(data_dir, store=store).expire_holds()
    if as_json:
        _print_json([_receipt_dict(r) for r in receipts])
    else:
        out.print(f"expired {len(receipts)} hold{'s' if len(receipts) != 1 else ''}")
