"""A deny an engine's resume form gave (Prefect's "decision: deny"): a signed deny receipt, and the
approval resolved as denied.

The form is unauthenticated (whoever can resume the flow run can fill it in), so it may only STOP a
call, never allow one: the kernel records the deny as coming from the form, resolves a still-pending
approval as ``denied`` with that receipt, and otherwise (answered or expired already) only records
the deny; nothing here can lead to an allow. docs/approvals.md, "On the engines and agents".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager

from chio_sdk.models import ChioReceipt

from chio_kernel._capabilities import LoadCap
from chio_kernel._coerce import _require_str
from chio_kernel._errors import ApprovalNotFoundError, KernelInputError
from chio_kernel._receipts import CallRecord, ReceiptChain
from chio_kernel._store import GENESIS_HASH, StoreWriter

__all__ = ["FORM_DENIAL_GUARD", "record_form_denial"]

FORM_DENIAL_GUARD = "approval-denied"
_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,63}")


def record_form_denial(
    write: Callable[[], AbstractContextManager[StoreWriter]],
    load_cap: LoadCap,
    clock: Callable[[], float],
    chain: ReceiptChain,
    approval_id: str,
    reason: str | None,
    source: str,
) -> ChioReceipt:
    """See ``Kernel.record_form_denial`` (the public doc is there)."""
    _require_str("approval_id", approval_id, max_len=256)
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise KernelInputError(f"source must name the form in lowercase letters, digits and dashes (e.g. "
                               f"'prefect-form'), got {source!r:.80}")
    said = None if reason is None else _require_str("reason", reason, max_len=4096)
    who = f"{source} (unauthenticated form)"
    text = f"denied from the {who}: {said or 'no reason given'}"
    with write() as st:
        row = st.approval(approval_id)
        if row is None:
            raise ApprovalNotFoundError(f"no approval {approval_id!r} in this kernel")
        now = clock()
        cap = load_cap(st, row.capability_id)
        head_seq, prev_hash = st.chain_head()
        pending_body = st.receipt_body(row.pending_receipt_id)
        params = ChioReceipt.model_validate_json(pending_body).action.parameters if pending_body else {}
        resolves = row.status == "pending" and now < row.expires_at
        receipt = chain.append(
            st, head_seq, prev_hash, now,
            CallRecord(row.capability_id, row.tool_server, row.tool_name, params, row.parameter_hash),
            {"verdict": "deny", "guard": FORM_DENIAL_GUARD, "reason": text},
            cap.policy_hash if cap is not None else GENESIS_HASH,
            {"form_denial": {
                "approval_id": approval_id, "source": source, "authenticated": False, "reason": said,
                "pending_receipt_id": row.pending_receipt_id,
                "resolved_approval": resolves, "approval_status_before": row.status,
            }},
        )[0]
        if resolves:
            st.resolve_approval(approval_id, "denied", int(now), who, said or "no reason given", receipt.id)
    return receipt
