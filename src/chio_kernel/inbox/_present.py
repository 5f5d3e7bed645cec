"""What the inbox shows, computed from the kernel's answers: no HTML here (the templates escape
everything they print), only text, numbers and links (docs/inbox.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from chio_sdk.models import ChioReceipt

from chio_kernel._money import format_money

__all__ = ["EngineLinks", "RUN_KEYS", "approval_card", "duration", "pretty_json", "receipt_row", "budget_row", "when"]

#: The run-context keys each engine signs into receipts, and the engine's name.
RUN_KEYS: tuple[tuple[str, str], ...] = (
    ("workflow_id", "Temporal workflow"),
    ("flow_run_id", "Prefect flow run"),
    ("dbos_workflow_id", "DBOS workflow"),
)


@dataclass(frozen=True)
class EngineLinks:
    """The engines' UI addresses (``--temporal-ui``, ``--prefect-ui``); None: the run is shown as text."""

    temporal_ui: str | None = None
    temporal_namespace: str = "default"
    prefect_ui: str | None = None

    def run_link(self, metadata: Mapping[str, Any]) -> dict[str, str] | None:
        """``{"engine", "id", "href"?}`` of the run a receipt's metadata names, or None."""
        for key, engine in RUN_KEYS:
            run = metadata.get(key)
            if not isinstance(run, str) or not run:
                continue
            out = {"engine": engine, "id": run}
            if key == "workflow_id" and self.temporal_ui:
                tail = f"/{quote(str(metadata['run_id']), safe='')}" if isinstance(metadata.get("run_id"), str) else ""
                out["href"] = (
                    f"{self.temporal_ui.rstrip('/')}/namespaces/{quote(self.temporal_namespace, safe='')}/workflows/"
                    f"{quote(run, safe='')}{tail}/history"
                )
            elif key == "flow_run_id" and self.prefect_ui:
                out["href"] = f"{self.prefect_ui.rstrip('/')}/runs/flow-run/{quote(run, safe='')}"
            return out
        return None


def pretty_json(value: Any) -> str:
    """Parameters as indented JSON text (the template escapes it; it is never HTML)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def when(ts: float | None) -> str:
    """A unix time as ``2026-12-07 05:12:11 UTC`` (empty for None)."""
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def duration(seconds: float) -> str:
    """``2 h 05 min``, ``4 min 10 s``, ``12 s`` (never negative)."""
    s = max(int(seconds), 0)
    if s >= 86_400:
        return f"{s // 86_400} d {s % 86_400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _money(cost: Any) -> str:
    if isinstance(cost, Mapping) and isinstance(cost.get("units"), int) and isinstance(cost.get("currency"), str):
        return format_money(cost["units"], cost["currency"])
    return "no declared cost"


def approval_card(
    approval: Mapping[str, Any], pending: ChioReceipt | None, links: EngineLinks, now: float
) -> dict[str, Any]:
    """One approval as the inbox shows it (``pending``: its pending receipt, for the run and the cost)."""
    metadata = dict(pending.metadata or {}) if pending is not None else {}
    pending_meta = metadata.get("pending_approval") if isinstance(metadata.get("pending_approval"), Mapping) else {}
    needed = int(approval.get("approvals_needed") or 1)
    given = list(approval.get("approvals") or [])
    status = str(approval["status"])
    return {
        "id": approval["id"],
        "status": status,
        "tool": f"{approval['tool_server']}/{approval['tool_name']}",
        "server": approval["tool_server"],
        "tool_name": approval["tool_name"],
        "params": pretty_json(approval.get("parameters")),
        "cost": _money(pending_meta.get("cost") if isinstance(pending_meta, Mapping) else None),
        "subject": approval["subject"],
        "capability_id": approval["capability_id"],
        "run": links.run_link(metadata),
        "created": when(approval["created_at"]),
        "expires": when(approval["expires_at"]),
        "expires_in": duration(approval["expires_at"] - now) if status == "pending" else None,
        "approvals_needed": needed,
        "approvals_given": [str(a.get("name", "")) for a in given if isinstance(a, Mapping)],
        "second_approver": needed > 1,
        "approver": answered_by(approval),
        "reason": approval.get("reason"),
        "resolved": when(approval.get("resolved_at")),
        "resolution_receipt_id": approval.get("resolution_receipt_id"),
        "consumed_receipt_id": approval.get("consumed_receipt_id"),
        "pending_receipt_id": approval.get("pending_receipt_id"),
    }


def answered_by(approval: Mapping[str, Any]) -> str | None:
    """Who answered, by name (each approver of a two-person approval), else what the kernel recorded."""
    names = [str(a["name"]) for a in approval.get("approvals") or [] if isinstance(a, Mapping) and a.get("name")]
    return ", ".join(names) if names else approval.get("approver")


def state_key(approval: Mapping[str, Any]) -> str:
    """What changes when an approval moves on (answered, another approver, its call ran)."""
    return f"{approval['status']}|{len(approval.get('approvals') or [])}|{approval.get('consumed_receipt_id') or ''}"


def state_text(approval: Mapping[str, Any]) -> str:
    """One sentence saying where an approval stands (the page's live status line)."""
    status = approval["status"]
    if status == "pending":
        return "Waiting for an answer."
    if status == "expired":
        return f"Expired at {when(approval['expires_at'])}: nobody answered in time, so the call was denied."
    who = answered_by(approval) or "someone"
    text = f"Answered: {status} by {who} at {when(approval.get('resolved_at'))}"
    if approval.get("reason"):
        text += f" ({approval['reason']})"
    return text + "."


def receipt_row(seq: int, receipt: ChioReceipt, links: EngineLinks) -> dict[str, Any]:
    """One receipt as a row of the receipts view."""
    decision = receipt.decision
    return {
        "seq": seq,
        "id": receipt.id,
        "time": when(receipt.timestamp),
        "verdict": decision.verdict,
        "guard": decision.guard or "",
        "reason": decision.reason or "",
        "tool": f"{receipt.tool_server}/{receipt.tool_name}",
        "capability_id": receipt.capability_id,
        "run": links.run_link(receipt.metadata or {}),
    }


def budget_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One budgeted grant with its amounts in currency units (``USD 5.00``)."""
    currency = row.get("currency")

    def money(units: Any) -> str:
        if units is None:
            return "no limit"
        return format_money(int(units), currency) if currency else f"{units} (minor units)"

    return {
        "capability_id": row["capability_id"],
        "grant": f"{row['server_id']}/{row['tool_name']}",
        "inherited": bool(row.get("inherited")),
        "limit": money(row.get("max_total_cost")),
        "per_call": money(row.get("max_cost_per_invocation")),
        "captured": money(row.get("captured", 0)),
        "held": money(row.get("held", 0)),
        "remaining": money(row.get("remaining")),
        "invocations": f"{row.get('invocations', 0)}"
        + (f" of {row['max_invocations']}" if row.get("max_invocations") is not None else ""),
    }
