"""Money as a person reads it: integer minor units shown in their currency's ISO 4217 digits.

The store, the wire and every JSON answer keep integer minor units (``{"units": 500, "currency":
"USD"}`` is USD 5.00); only text for people goes through :func:`format_money`. The currency table is
Babel's (CLDR), not ours.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

__all__ = ["format_money", "currency_digits"]

_PATTERN = "¤¤ #,##0.00"  # the ISO code, a space, the amount with the currency's own digits


@lru_cache(maxsize=256)
def currency_digits(currency: str) -> int | None:
    """The number of minor-unit digits of an ISO 4217 currency.

    Args:
        currency: an ISO 4217 code such as ``"USD"`` (case-insensitive).

    Returns:
        2 for USD, 0 for JPY, 3 for BHD; ``None`` for a code Babel does not know.
    """
    from babel.numbers import get_currency_precision, is_currency

    code = currency.upper()
    if not is_currency(code):
        return None
    return int(get_currency_precision(code))


def format_money(units: int, currency: str) -> str:
    """Format integer minor units in their currency, for people.

    Args:
        units: the amount in minor units (cents for USD, yen for JPY, fils for BHD).
        currency: an ISO 4217 code; a code that is not one is shown with its raw units.

    Returns:
        ``"USD 5.00"`` for ``(500, "USD")``, ``"JPY 500"`` for ``(500, "JPY")``, ``"BHD 1.250"`` for
        ``(1250, "BHD")``; ``"125 CREDITS (minor units)"`` for a code that is not ISO 4217.
    """
    digits = currency_digits(currency)
    if digits is None:
        return f"{units} {currency} (minor units)"
    from babel.numbers import format_currency

    amount = Decimal(int(units)).scaleb(-digits)
    return str(format_currency(amount, currency.upper(), format=_PATTERN, locale="en_US", currency_digits=True))
