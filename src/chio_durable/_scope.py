"""The receipt id of the governed call running in this context (engine-neutral, no pydantic-ai import).

Set around a governed call by ``ChioGovernance`` (and the Temporal agent interceptor); read by the one
receipt-id cache policy of the Prefect layer, so a cached result is bound to the receipt that allowed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["current_receipt_id", "receipt_scope"]

_CURRENT_RECEIPT: ContextVar[str | None] = ContextVar("chio_durable.agent.current_receipt", default=None)


def current_receipt_id() -> str | None:
    """Read the receipt id of the governed call running in this context.

    Returns:
        The allow receipt's id, or None outside a governed call.
    """
    return _CURRENT_RECEIPT.get()


@contextmanager
def receipt_scope(receipt_id: str | None) -> Iterator[None]:
    """Make a receipt id the :func:`current_receipt_id` while the governed call runs.

    Args:
        receipt_id: the allow receipt of the call.

    Yields:
        Nothing; the previous id is restored on exit.
    """
    token = _CURRENT_RECEIPT.set(receipt_id)
    try:
        yield
    finally:
        _CURRENT_RECEIPT.reset(token)
