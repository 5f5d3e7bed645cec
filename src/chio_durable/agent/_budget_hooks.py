"""What :class:`~chio_durable.agent.ChioGovernance` does about money (docs/budgets.md).

Kept apart from the capability so its hooks stay one line each: the estimated cost a model request
or a tool call declares, and settling its hold afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chio_durable._metering import (
    COST_METADATA_KEY,
    HOLDS,
    check_cost,
    reported_cost_scope,
    resolve_cost,
    settle_hold,
)
from chio_durable._transport import HttpTransport

if TYPE_CHECKING:
    from chio_sdk.models import MonetaryAmount
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.tools import RunContext
    from pydantic_ai.toolsets.abstract import ToolsetTool

    from chio_durable.agent._capability import ChioGovernance
    from chio_durable.agent._denials import GovernedRecord

__all__ = [
    "can_declare_cost",
    "hold_opened",
    "model_request_cost",
    "reported_cost_scope",
    "settle_model_request",
    "settle_now",
    "settle_tool",
    "tool_cost",
]

log = logging.getLogger("chio_durable.agent")


def can_declare_cost(transport: Any) -> bool:
    """Whether a cost reaches the kernel through ``transport``.

    A stock ``chio_sdk.ChioClient`` cannot send one: its calls declare none, so a grant with cost
    limits denies them (fail closed) and a grant without any lets them through, as before.
    """
    return not (isinstance(transport, HttpTransport) and not transport.sends_idempotency_keys)


def model_request_cost(gov: ChioGovernance, request_context: ModelRequestContext) -> MonetaryAmount | None:
    """The estimated cost a model request declares (``None``: the model is priced nowhere)."""
    if not can_declare_cost(gov.transport):
        return None
    model = request_context.model
    settings = request_context.model_settings
    return gov.metering.estimate(
        model.model_name, settings if isinstance(settings, Mapping) else None, getattr(model, "system", None)
    )


def hold_opened(scope: str, receipt_id: str, transport: Any) -> None:
    """An allow with a cost is a hold: remember it until it is settled or released."""
    HOLDS.opened(scope, receipt_id, transport)


async def settle_model_request(
    gov: ChioGovernance,
    ctx: RunContext[Any],
    record: GovernedRecord,
    cost: MonetaryAmount | None,
    request_context: ModelRequestContext,
    response: Any,
) -> None:
    """Settle a model request's hold with the response's actual usage (the estimate if unpriced)."""
    if cost is None or record.receipt_id is None:
        return
    model = request_context.model
    usage = getattr(response, "usage", None)
    actual = None
    if usage is not None:
        actual = gov.metering.actual(model.model_name, usage, getattr(model, "system", None))
    await gov.settle_in_kernel(ctx, record.receipt_id, actual if actual is not None else cost)


def tool_cost(gov: ChioGovernance, tool: ToolsetTool[Any], tool_args: Mapping[str, Any]) -> MonetaryAmount | None:
    """A tool's declared cost, from ``metadata={"chio_cost": <amount or callable of the tool's arguments>}``."""
    metadata = getattr(tool.tool_def, "metadata", None)
    if not isinstance(metadata, Mapping) or metadata.get(COST_METADATA_KEY) is None:
        return None
    declared = metadata[COST_METADATA_KEY]
    check_cost(declared, f"tool {tool.tool_def.name!r} metadata[{COST_METADATA_KEY!r}]")
    if not can_declare_cost(gov.transport):
        return None  # fail closed: the kernel sees no cost, a grant with cost limits denies
    return resolve_cost(declared, **dict(tool_args))


async def settle_tool(gov: ChioGovernance, ctx: RunContext[Any], record: GovernedRecord, actual: MonetaryAmount) -> None:
    """Settle a tool call's hold: at what the tool reported (``report_cost``), else at its declared cost."""
    if record.receipt_id is not None:
        await gov.settle_in_kernel(ctx, record.receipt_id, actual)


async def settle_now(transport: Any, receipt_id: str, amount: MonetaryAmount) -> None:
    """Settle the hold of ``receipt_id`` at ``amount`` on ``transport`` (the body of the durable ``settle``)."""
    await settle_hold(transport, receipt_id, amount)
