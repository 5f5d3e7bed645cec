"""Evaluate one governed call against any Chio client, fail closed (the public entry points).

The layers build a :class:`~chio_durable.KernelTransport` once, at construction
(:func:`as_transport`), and evaluate through it; :func:`evaluate` / :func:`evaluate_sync` here are
the one-shot form for a client object (the transport is chosen for that call). How each client
kind is reached, what counts as a decision and what fails closed: ``chio_durable._transport``.
"""

from __future__ import annotations

from typing import Any

from chio_sdk.models import MonetaryAmount

from chio_durable._call import GovernedCall, idempotency_key, wire_parameter_hash
from chio_durable._decision import Evaluation
from chio_durable._errors import KernelRejected, KernelUnavailable
from chio_durable._loop import await_on_kernel_loop, run_on_kernel_loop
from chio_durable._transport import (
    NO_IDEMPOTENCY_WARNING,
    ChioClientLike,
    KernelTransport,
    as_transport,
    client_url,
)

__all__ = [
    "Evaluation",
    "KernelRejected",
    "KernelTransport",
    "KernelUnavailable",
    "NO_IDEMPOTENCY_WARNING",
    "as_transport",
    "await_on_kernel_loop",
    "client_url",
    "evaluate",
    "evaluate_sync",
    "idempotency_key",
    "run_on_kernel_loop",
    "wire_parameter_hash",
]


def _one_shot(
    client: ChioClientLike | Any, tool_server: str, tool_name: str, parameters: dict[str, Any]
) -> tuple[KernelTransport, GovernedCall]:
    try:
        transport = as_transport(client)
    except TypeError as err:
        raise KernelUnavailable(client_url(client), str(err)) from err
    return transport, GovernedCall("tool", tool_server, tool_name, parameters)


async def evaluate(
    client: ChioClientLike | Any,
    *,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idempotency_key: str | None = None,
    cost: MonetaryAmount | None = None,
    approval_id: str | None = None,
) -> Evaluation:
    """Ask the kernel behind a client about one call.

    Args:
        client: a Chio client (see :func:`as_transport`).
        capability_id: the capability the call runs under.
        tool_server: the server (or engine namespace) the tool belongs to.
        tool_name: the tool.
        parameters: the call's JSON-able arguments.
        idempotency_key: the same key re-evaluated returns the same receipt.
        cost: the call's declared cost, held against the grant's budget.
        approval_id: re-evaluate a pending call under a person's approval (docs/approvals.md).

    Returns:
        The kernel's :class:`Evaluation` (allow, deny or pending).

    Raises:
        KernelUnavailable: the kernel could not say.
        KernelRejected: the kernel refused the request.
    """
    transport, call = _one_shot(client, tool_server, tool_name, parameters)
    extra = {} if approval_id is None else {"approval_id": approval_id}  # user transports may predate it
    return await transport.evaluate(
        call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost, **extra
    )


def evaluate_sync(
    client: ChioClientLike | Any,
    *,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idempotency_key: str | None = None,
    cost: MonetaryAmount | None = None,
    approval_id: str | None = None,
) -> Evaluation:
    """Ask the kernel about one call from sync code: inline for the embedded kernel, else on the kernel loop.

    Args:
        client: a Chio client (see :func:`as_transport`).
        capability_id: the capability the call runs under.
        tool_server: the server (or engine namespace) the tool belongs to.
        tool_name: the tool.
        parameters: the call's JSON-able arguments.
        idempotency_key: as :func:`evaluate`.
        cost: as :func:`evaluate`.
        approval_id: as :func:`evaluate`.

    Returns:
        The kernel's :class:`Evaluation`.

    Raises:
        KernelUnavailable: the kernel could not say.
        KernelRejected: the kernel refused the request.
    """
    transport, call = _one_shot(client, tool_server, tool_name, parameters)
    extra = {} if approval_id is None else {"approval_id": approval_id}
    return transport.evaluate_sync(
        call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost, **extra
    )
