"""Reading the receipt log: one receipt, listings, filtered queries, signature checks, the chain walk."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chio_sdk.models import ChioReceipt
from pydantic import ValidationError

from chio_kernel._capabilities import Trust
from chio_kernel._coerce import MAX_STORED_INT, _require_str
from chio_kernel._errors import KernelInputError
from chio_kernel._paging import Page, Yielder, check_limit, decode_cursor, encode_cursor
from chio_kernel._receipts import ChainReport, verify_chain, verify_receipt_dict
from chio_kernel._store import ReceiptQuery
from chio_kernel._store_factory import StoreGate

__all__ = ["MAX_RECEIPT_PAGE_LIMIT", "VERDICTS", "ReceiptLog"]

#: The largest page of receipts (the sidecar's ``GET /v1/receipts?limit=`` maximum too).
MAX_RECEIPT_PAGE_LIMIT = 10_000
#: The verdicts a receipt listing filters by (``decision.verdict`` as stored).
VERDICTS = ("allow", "deny", "pending_approval", "approval_resolution")


def _check_count(name: str, value: Any) -> None:
    """A count, position or timestamp the stores hold: an integer from 0 to 2**63 - 1 (a signed 64-bit)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STORED_INT):
        raise KernelInputError(f"{name} must be an integer from 0 to {MAX_STORED_INT}, got {value!r:.40}")


class ReceiptLog:
    """The receipt-reading service (``Kernel.get_receipt``, ``list_receipts``, ``query_receipts``,
    ``verify_receipt``, ``verify_chain`` delegate here)."""

    def __init__(self, gate: StoreGate, trust: Trust) -> None:
        """Read through ``gate``; ``trust`` says whose receipt signatures count."""
        self._gate = gate
        self._trust = trust
        self.busy: Callable[[], bool] | None = None  # evaluations in flight: pages pause for them

    def problem(self, data: dict[str, Any]) -> str | None:
        """Why a receipt (``model_dump(exclude_none=True)`` form) does not verify, or None."""
        trust = self._trust
        if trust.learns and data.get("kernel_key") not in trust.issuers:
            with self._gate.read() as st:  # a fleet kernel that joined after this one started
                trust.learn(st)
        return verify_receipt_dict(data, trust.issuers)

    def verify(self, receipt: ChioReceipt | Mapping[str, Any]) -> bool:
        """True if the receipt's signature and parameter hash verify (see ``Kernel.verify_receipt``)."""
        if isinstance(receipt, ChioReceipt):
            data = receipt.model_dump(exclude_none=True)
        elif isinstance(receipt, Mapping):
            try:
                data = ChioReceipt.model_validate(dict(receipt)).model_dump(exclude_none=True)
            except ValidationError as err:
                raise KernelInputError(f"not a valid ChioReceipt: {err}") from err
        else:
            raise KernelInputError(f"expected a chio_sdk.models.ChioReceipt, got {type(receipt).__name__}")
        return self.problem(data) is None

    def get(self, receipt_id: str) -> ChioReceipt | None:
        """The stored receipt with this id, or None."""
        receipt_id = _require_str("receipt_id", receipt_id, max_len=256)
        with self._gate.read() as st:
            body = st.receipt_body(receipt_id)
        return ChioReceipt.model_validate_json(body) if body is not None else None

    def list_with_seq(
        self, capability_id: str | None, limit: int | None, after_seq: int | None
    ) -> list[tuple[int, ChioReceipt]]:
        """``(seq, receipt)`` pairs in store order (see ``Kernel.list_receipts_with_seq``)."""
        if capability_id is not None:
            _require_str("capability_id", capability_id, max_len=256)
        _check_count("limit", limit)
        _check_count("after_seq", after_seq)
        if capability_id is not None:
            self._index_by_capability()
        with self._gate.read() as st:
            rows = st.receipts_after(after_seq if after_seq is not None else 0, limit, capability_id)
        return [(seq, ChioReceipt.model_validate_json(body)) for seq, body in rows]

    def _index_by_capability(self) -> None:
        """Catch the by-capability receipt index up (the store does it in short transactions)."""
        self._gate.check_open()
        self._gate.store.catch_up_capability_index()

    def count(self) -> int:
        """Number of receipts in the store."""
        with self._gate.read() as st:
            return st.receipt_count()

    def query(
        self,
        capability_id: str | None,
        verdict: str | None,
        since: int | None,
        metadata: Mapping[str, str] | None,
        window: tuple[int, int | None, bool],
        capability_index: bool,
        before_seq: int | None = None,
    ) -> list[tuple[int, ChioReceipt]]:
        """The receipts matching every filter, filtered by the store (see ``Kernel.query_receipts``).

        ``window`` is ``(after_seq, limit, newest_first)``; ``before_seq``: only before this position.
        """
        after_seq, limit, newest_first = window
        if capability_id is not None:
            _require_str("capability_id", capability_id, max_len=256)
        if verdict is not None and verdict not in VERDICTS:
            raise KernelInputError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        for name, value in (("since", since), ("after_seq", after_seq), ("limit", limit)):
            _check_count(name, value)
        pairs = tuple((str(k), _require_str(f"metadata[{k!r}]", v)) for k, v in (metadata or {}).items())
        try:
            query = ReceiptQuery(after_seq=after_seq, limit=limit, newest_first=newest_first,
                                 capability_id=capability_id, verdict=verdict, since=since, metadata=pairs,
                                 capability_index=capability_index, before_seq=before_seq)
        except ValueError as err:
            raise KernelInputError(str(err)) from None
        if capability_id is not None and capability_index:
            self._index_by_capability()
        with self._gate.read() as st:
            rows = st.query_receipts(query)
        return [(seq, ChioReceipt.model_validate_json(body)) for seq, body in rows]

    def page(
        self,
        capability_id: str | None,
        verdict: str | None,
        since: int | None,
        metadata: Mapping[str, str] | None,
        window: tuple[bool, int | None, str | None],
    ) -> Page[tuple[int, ChioReceipt]]:
        """One page of ``(seq, receipt)`` (see ``Kernel.receipts_page``); ``window`` is
        ``(newest_first, limit, cursor)``."""
        newest_first, limit, cursor = window
        n = check_limit(limit, maximum=MAX_RECEIPT_PAGE_LIMIT)
        filters = [capability_id, verdict, since, sorted((metadata or {}).items()), bool(newest_first)]
        pos = decode_cursor(cursor, "receipts", filters, (int,))
        after = pos[0] if pos and not newest_first else 0
        before = pos[0] if pos and newest_first else None
        Yielder(self.busy).pause()
        rows = self.query(capability_id, verdict, since, metadata, (after, n + 1, bool(newest_first)), True, before)
        more = len(rows) > n
        return Page(rows[:n], encode_cursor("receipts", filters, [rows[n - 1][0]]) if more else None)

    def verify_chain(self, batch: int) -> ChainReport:
        """Walk one consistent snapshot checking every signature and link (see ``Kernel.verify_chain``)."""
        self._gate.check_open()
        # One consistent read snapshot: the walk (long on a big store) neither holds the kernel's
        # locks nor blocks writers, so evaluations go on meanwhile.
        return verify_chain(self._gate.store.snapshot(), self.problem, batch)
