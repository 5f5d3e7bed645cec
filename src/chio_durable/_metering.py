"""Money budgets from the engines' side: what a governed call costs, and settling its hold.

The kernel turns an allow for a call that declares a cost into a **hold** on the grant's budgets;
the caller later **settles** it with the actual cost (the rest of the hold is freed) or **releases**
it (all of it is freed: the compensation). Holds left open expire by the kernel's TTL. This module
is the engine-neutral part both engines share (docs/budgets.md, "Engines and agents"):

* :class:`TokenPrice` / :class:`ModelMetering`: the estimated cost of a model request (the model's
  price x the request's token limit) declared before it runs, and its actual cost from the response's
  usage. Prices come from ``genai-prices`` (the price data pydantic-ai itself uses); a user supplies
  prices for models it does not know (``FunctionModel``, ``TestModel``, a private deployment).
* :data:`ToolCost` / :func:`resolve_cost`: the declared cost of a tool or task (an amount, or a
  callable of the call's arguments), and :func:`report_cost`, with which a tool body reports what
  it actually cost.
* :class:`HoldLedger` / :data:`HOLDS`: the open holds this process took, per run, so the engines'
  failure paths can release them (op ids derived from the receipt id: exactly once).

Amounts are ``chio_sdk.models.MonetaryAmount`` in minor units (cents for USD). Prices in USD are
rounded **up** to the cent, per call: the budget is never under-counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Union

from chio_sdk.models import ChioReceipt, MonetaryAmount

from chio_durable._transport import KernelTransport

__all__ = [
    "COST_METADATA_KEY",
    "DEFAULT_MAX_TOKENS",
    "HOLDS",
    "HoldLedger",
    "ModelMetering",
    "ModelPrices",
    "PriceLookup",
    "TokenPrice",
    "ToolCost",
    "as_metering",
    "check_cost",
    "release_op_id",
    "report_cost",
    "cost_report_open",
    "reported_cost_scope",
    "resolve_cost",
    "settle_op_id",
    "usd",
]

log = logging.getLogger("chio_durable.budgets")

DEFAULT_MAX_TOKENS = 4096
"""The token limit of a model request whose model settings set no ``max_tokens``."""

COST_METADATA_KEY = "chio_cost"
"""Key of a tool's declared cost in pydantic-ai tool metadata: ``Tool(fn, metadata={"chio_cost": ...})``."""

USD = "USD"
_MILLION = Decimal(1_000_000)


def usd(dollars: Decimal | float | int | str) -> MonetaryAmount:
    """Make a USD amount in cents, rounded up: ``usd("0.031")`` is 4 cents, ``usd(5)`` 500.

    Args:
        dollars: the amount in dollars (a string keeps it exact).

    Returns:
        The amount in minor units, currency ``USD``.

    Raises:
        ValueError: not finite, or below 0.
    """
    value = Decimal(str(dollars))
    if not value.is_finite() or value < 0:
        raise ValueError(f"a cost is a finite amount >= 0, got {dollars!r}")
    return MonetaryAmount(units=int(math.ceil(value * 100)), currency=USD)


def _decimal(name: str, value: Decimal | float | int | str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"TokenPrice.{name} must be a number (USD per million tokens), got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"TokenPrice.{name} must be a finite number >= 0 (USD per million tokens), got {value!r}")
    return number


@dataclass(frozen=True)
class TokenPrice:
    """A model's price in USD per million tokens, for models ``genai-prices`` does not know.

    ``TokenPrice(input_per_mtok=2.5, output_per_mtok=10)`` is gpt-4o's list price.

    Attributes:
        input_per_mtok: USD per million input tokens (kept as a ``Decimal``).
        output_per_mtok: USD per million output tokens (kept as a ``Decimal``).
    """

    input_per_mtok: Decimal | float | int | str
    output_per_mtok: Decimal | float | int | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_per_mtok", _decimal("input_per_mtok", self.input_per_mtok))
        object.__setattr__(self, "output_per_mtok", _decimal("output_per_mtok", self.output_per_mtok))

    def usage_usd(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Price a response's token usage.

        Args:
            input_tokens: tokens read.
            output_tokens: tokens written.

        Returns:
            The cost in USD.
        """
        return (
            Decimal(input_tokens) * Decimal(self.input_per_mtok)
            + Decimal(output_tokens) * Decimal(self.output_per_mtok)
        ) / _MILLION

    def limit_usd(self, max_tokens: int) -> Decimal:
        """Price the most a token limit can cost, whether read or written (the dearer rate).

        Args:
            max_tokens: the request's token limit.

        Returns:
            The cost in USD.
        """
        return Decimal(max_tokens) * max(Decimal(self.input_per_mtok), Decimal(self.output_per_mtok)) / _MILLION


PriceLookup = Callable[[str], Union[TokenPrice, None]]
"""``lookup(model_name) -> TokenPrice | None``; ``None``: not known here (``genai-prices`` is asked next)."""

ModelPrices = Union[Mapping[str, TokenPrice], PriceLookup]
"""User prices: ``{model_name: TokenPrice}`` (the model's ``model_name``, or ``"<system>:<model_name>"``)
or a :data:`PriceLookup` callable."""


def _genai_usd(usage: Any, model_name: str, provider: str | None) -> Decimal | None:
    from genai_prices import calc_price  # lazy: its price snapshot loads on first use

    try:
        return Decimal(calc_price(usage, model_name, provider_id=provider).total_price)
    except LookupError:
        if provider is None:
            return None
    try:  # genai-prices may know the model under another provider than the one named
        return Decimal(calc_price(usage, model_name).total_price)
    except LookupError:
        return None


@dataclass(frozen=True)
class ModelMetering:
    """How a governed agent prices its model requests (pass it, or just the prices, as ``model_prices=``).

    Args:
        prices: prices for models ``genai-prices`` does not know (or to override it): a mapping
            ``{model_name: TokenPrice}`` or a callable ``model_name -> TokenPrice | None``.
        default_max_tokens: the token limit of a request whose model settings set no ``max_tokens``
            (:data:`DEFAULT_MAX_TOKENS`). The estimate (the hold) is this many tokens at the model's
            dearer rate; the actual cost, from the response's usage, is settled afterwards.
        use_genai_prices: look unknown models up in ``genai-prices`` (default ``True``).

    A model priced nowhere declares no cost: its requests then pass grants without cost limits and
    are denied (kernel guard ``cost``) by grants with cost limits. Fail closed.
    """

    prices: ModelPrices | None = None
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    use_genai_prices: bool = True

    def __post_init__(self) -> None:
        if self.prices is not None and not (isinstance(self.prices, Mapping) or callable(self.prices)):
            raise TypeError(
                "model prices are a mapping {model_name: TokenPrice} or a callable model_name -> TokenPrice | None, "
                f"got {type(self.prices).__name__}"
            )
        if isinstance(self.prices, Mapping):
            for key, price in self.prices.items():
                if not isinstance(price, TokenPrice):
                    raise TypeError(f"model price for {key!r} must be a TokenPrice, got {type(price).__name__}")
        if isinstance(self.default_max_tokens, bool) or not isinstance(self.default_max_tokens, int) or self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be an int >= 1, got {self.default_max_tokens!r}")

    def user_price(self, model_name: str, system: str | None = None) -> TokenPrice | None:
        """Look up the user's price for a model, if one was supplied.

        Args:
            model_name: the model's name (``"gpt-4o"``).
            system: the provider (``"openai"``); a mapping is also looked up as ``"<system>:<model>"``.

        Returns:
            The :class:`TokenPrice`, or None.

        Raises:
            TypeError: the user's price function returned something other than a ``TokenPrice``.
        """
        if self.prices is None:
            return None
        if isinstance(self.prices, Mapping):
            price = self.prices.get(model_name)
            if price is None and system:
                price = self.prices.get(f"{system}:{model_name}")
            return price
        price = self.prices(model_name)
        if price is not None and not isinstance(price, TokenPrice):
            raise TypeError(f"the model price lookup returned {type(price).__name__} for {model_name!r}, not a TokenPrice")
        return price

    def max_tokens(self, model_settings: Mapping[str, Any] | None) -> int:
        """Read a request's token limit.

        Args:
            model_settings: the request's model settings.

        Returns:
            Their ``max_tokens``, else :attr:`default_max_tokens`.
        """
        value = (model_settings or {}).get("max_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return self.default_max_tokens

    def estimate(
        self, model_name: str, model_settings: Mapping[str, Any] | None, system: str | None = None
    ) -> MonetaryAmount | None:
        """Estimate the hold for one model request: the token limit at the model's dearer rate.

        Args:
            model_name: the model's name.
            model_settings: the request's model settings (for ``max_tokens``).
            system: the provider, for the price lookup.

        Returns:
            The amount to hold, or None if the model is unpriced.
        """
        limit = self.max_tokens(model_settings)
        price = self.user_price(model_name, system)
        if price is not None:
            return usd(price.limit_usd(limit))
        if not self.use_genai_prices:
            return None
        from genai_prices import Usage

        reading = _genai_usd(Usage(input_tokens=limit), model_name, system)
        writing = _genai_usd(Usage(output_tokens=limit), model_name, system)
        if reading is None or writing is None:
            return None
        return usd(max(reading, writing))

    def actual(self, model_name: str, usage: Any, system: str | None = None) -> MonetaryAmount | None:
        """Price a model response's actual usage.

        Args:
            model_name: the model's name.
            usage: the response's usage (a pydantic-ai ``RequestUsage``).
            system: the provider, for the price lookup.

        Returns:
            The cost, or None if the model is unpriced.
        """
        price = self.user_price(model_name, system)
        if price is not None:
            return usd(price.usage_usd(int(getattr(usage, "input_tokens", 0) or 0), int(getattr(usage, "output_tokens", 0) or 0)))
        if not self.use_genai_prices:
            return None
        value = _genai_usd(usage, model_name, system)
        return usd(value) if value is not None else None


def as_metering(value: ModelMetering | ModelPrices | None) -> ModelMetering:
    """``model_prices=`` as a :class:`ModelMetering` (``None``: ``genai-prices`` only)."""
    if value is None:
        return ModelMetering()
    if isinstance(value, ModelMetering):
        return value
    return ModelMetering(prices=value)


# --- tools and tasks --------------------------------------------------------------------------

ToolCost = Union[MonetaryAmount, Callable[..., Union[MonetaryAmount, None]]]
"""A declared cost: an amount, or a callable of the call's arguments returning one (``None``: no cost)."""


def check_cost(cost: object, where: str) -> None:
    """Refuse (``TypeError``/``ValueError``) what cannot be a declared cost; ``where`` names the declaration."""
    if isinstance(cost, MonetaryAmount):
        if cost.units < 0 or not cost.currency:
            raise ValueError(f"{where}: cost must be >= 0 with a currency, got {cost!r}")
        return
    if callable(cost):
        return
    raise TypeError(
        f"{where}: cost= is a chio_sdk.models.MonetaryAmount(units=<minor units>, currency='USD') or a "
        f"callable of the call's arguments returning one; got {type(cost).__name__} {cost!r}"
    )


def resolve_cost(cost: ToolCost | None, *args: Any, **kwargs: Any) -> MonetaryAmount | None:
    """The declared cost of one call: ``cost`` itself, or ``cost(*args, **kwargs)``.

    Raises ``TypeError`` if a callable returns anything but a ``MonetaryAmount`` or ``None``.
    """
    if cost is None or isinstance(cost, MonetaryAmount):
        return cost
    value = cost(*args, **kwargs)
    if value is not None and not isinstance(value, MonetaryAmount):
        raise TypeError(
            f"the cost callable {getattr(cost, '__name__', cost)!r} returned {type(value).__name__}, "
            "not a MonetaryAmount (or None)"
        )
    return value


@dataclass
class _Report:
    amount: MonetaryAmount | None = None


_REPORT: ContextVar[_Report | None] = ContextVar("chio_reported_cost", default=None)


def report_cost(amount: MonetaryAmount) -> None:
    """Report what the running governed tool or task actually cost; its hold settles at this amount.

    Call it in the body of a tool or ``@chio_task`` that declared a cost. The last report wins.

    Args:
        amount: the actual cost.

    Raises:
        TypeError: ``amount`` is not a ``MonetaryAmount``.
        ValueError: a negative amount.
        RuntimeError: called outside a governed call that declared a cost (a report nobody settles
            would be lost silently).
    """
    if not isinstance(amount, MonetaryAmount):
        raise TypeError(f"report_cost() takes a MonetaryAmount, got {type(amount).__name__}")
    if amount.units < 0:
        raise ValueError(f"report_cost(): a cost is >= 0, got {amount!r}")
    report = _REPORT.get()
    if report is None:
        raise RuntimeError("report_cost() was called outside a governed call that declared a cost")
    report.amount = amount


def cost_report_open() -> bool:
    """Whether :func:`report_cost` may be called here: a governed call that declared a cost is running."""
    return _REPORT.get() is not None


@contextlib.contextmanager
def reported_cost_scope() -> Iterator[_Report]:
    """Around a governed body that declared a cost: collects what :func:`report_cost` reports."""
    report = _Report()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


# --- settling and releasing -------------------------------------------------------------------


def settle_op_id(receipt_id: str) -> str:
    """Name the settlement of a hold: one per receipt, so a retried settle returns the first receipt.

    Args:
        receipt_id: the allow receipt that placed the hold.

    Returns:
        ``"settle:<receipt_id>"``.
    """
    return f"settle:{receipt_id}"


def release_op_id(receipt_id: str) -> str:
    """Name the release of a hold: one per receipt, so a release happens exactly once.

    Args:
        receipt_id: the allow receipt that placed the hold.

    Returns:
        ``"release:<receipt_id>"``.
    """
    return f"release:{receipt_id}"


async def settle_hold(transport: KernelTransport, receipt_id: str, actual_cost: MonetaryAmount) -> ChioReceipt | None:
    """Settle the hold of ``receipt_id`` at ``actual_cost`` (op id :func:`settle_op_id`).

    Returns the settlement receipt, or ``None`` if it could not be settled: the hold then stays
    open until released or expired (the budget is over-, never under-counted), so a failed settle
    never fails the governed call; it is logged.
    """
    try:
        receipt = await transport.settle(receipt_id, actual_cost, settle_op_id(receipt_id))
    except Exception as err:  # noqa: BLE001 - the call already ran; the hold expires by TTL
        log.warning("chio: settling hold %s failed (%s: %s); it stays open until it expires", receipt_id, type(err).__name__, err)
        return None
    HOLDS.closed(receipt_id)
    return receipt


async def release_hold(transport: KernelTransport, receipt_id: str, reason: str) -> ChioReceipt | None:
    """Release the whole hold of ``receipt_id`` (op id :func:`release_op_id`: exactly once).

    Raises what the transport raises: ``HoldConflict`` (already settled/expired/released otherwise),
    ``KernelRejected`` (no such hold), ``KernelUnavailable`` (retry: the same op id releases once).
    """
    receipt = await transport.release(receipt_id, release_op_id(receipt_id), reason)
    HOLDS.closed(receipt_id)
    return receipt


@dataclass
class _Hold:
    receipt_id: str
    scope: str
    transport: Any = field(repr=False)


class HoldLedger:
    """The holds this process took and has not settled or released yet, by scope (a run identity).

    Only what this process knows: a hold whose process died is restored by the kernel's expiry. At
    most ``max_open`` are remembered (the oldest is forgotten first; the kernel's TTL frees it), so a
    long-lived worker whose failed runs are never compensated does not grow without bound.
    """

    def __init__(self, max_open: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Hold] = OrderedDict()
        self.max_open = max_open

    def opened(self, scope: str, receipt_id: str, transport: Any) -> None:
        """Record an open hold (idempotent: a retry that got the same receipt back records nothing new)."""
        with self._lock:
            self._open.setdefault(receipt_id, _Hold(receipt_id, scope, transport))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)

    def closed(self, receipt_id: str) -> None:
        """The hold was settled or released."""
        with self._lock:
            self._open.pop(receipt_id, None)

    def open_in(self, scope_prefix: str) -> list[tuple[str, Any]]:
        """``(receipt_id, transport)`` of the open holds whose scope starts with ``scope_prefix``."""
        with self._lock:
            return [(h.receipt_id, h.transport) for h in self._open.values() if h.scope.startswith(scope_prefix)]

    async def release_all(self, scope_prefix: str, reason: str) -> list[str]:
        """Release the open holds of ``scope_prefix``; returns the receipt ids released.

        A release that fails is logged and left to the kernel's expiry (the others still go).
        """
        released: list[str] = []
        for receipt_id, transport in self.open_in(scope_prefix):
            try:
                await release_hold(transport, receipt_id, reason)
            except Exception as err:  # noqa: BLE001 - expiry restores it; release the others
                log.warning("chio: releasing hold %s failed (%s: %s); it expires by TTL", receipt_id, type(err).__name__, err)
                continue
            released.append(receipt_id)
        return released


HOLDS = HoldLedger()
"""This process's open holds (the engines' failure hooks release from here)."""
