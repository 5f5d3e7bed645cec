"""One evaluation request: input checks, canonical forms and hashes, computed before any store work."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chio_sdk.models import MonetaryAmount, Operation, ToolGrant

from chio_kernel._coerce import _coerce_cost, _coerce_operation, _require_str
from chio_kernel._errors import KernelInputError
from chio_kernel._idempotency import entry_hashes
from chio_kernel._policy import Deny
from chio_kernel._receipts import _chain_dumps
from chio_kernel._run_context import check_run_metadata
from chio_kernel.canonical import canonical_json_str

__all__ = ["EvalRequest", "call_hash", "canonical_forms", "make_request"]

Precheck = dict[str, list[tuple[int, ToolGrant]] | Deny]


@dataclass(slots=True)
class EvalRequest:
    """One evaluation, coerced and hashed before the write transaction (see ``Kernel.evaluate``)."""

    capability_id: str
    tool_server: str
    tool_name: str
    op: Operation
    params: dict[str, Any]
    params_text: str  # canonical JSON (what the signature covers)
    params_ascii: str  # the chain-hash serialisation
    param_hash: str
    cost_t: tuple[int, str] | None
    idem_hash: str | None  # the call's fingerprint under its idempotency key (chio_kernel._idempotency)
    pre: Precheck | None  # the pure guards' outcome, per capability id (None: decided in the transaction)
    approval_id: str | None = None  # a re-evaluation under this approval (chio_kernel._approvals)
    key: str | None = None  # the idempotency key itself (for the key-reuse rule's message)
    key_hash: str | None = None  # the key's own hash (the key-reuse rule)
    metadata: dict[str, str] | None = None  # the caller's run context, signed (chio_kernel._run_context)


def call_hash(req: EvalRequest) -> str:
    """What an approval binds: capability, tool, operation, parameters and declared cost."""
    cost = "" if req.cost_t is None else f"{req.cost_t[0]} {req.cost_t[1]}"
    parts = (req.capability_id, req.tool_server, req.tool_name, req.op.value, req.param_hash, cost)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def canonical_forms(
    parameters: Any, canonical_parameters: str | None = None, parameter_hash: str | None = None
) -> tuple[dict[str, Any], str, str, str]:
    """``(params, params_text, params_ascii, param_hash)`` of a call's parameters.

    ``params`` is a private, JSON-normalised copy (tuples -> lists, enums -> values; floats keep
    their exact value), via the text the chain hash uses (``params_ascii``); ``params_text`` is the
    canonical JSON the signature covers and ``param_hash`` its sha256. ``canonical_parameters`` /
    ``parameter_hash``: an in-process caller's own, trusted as given (both or neither).

    Raises:
        KernelInputError: not a dict, not JSON-able, or only one of the two precomputed forms.
    """
    if not isinstance(parameters, dict):
        raise KernelInputError(
            f"parameters must be a dict of parameter name -> JSON value, got {type(parameters).__name__}"
        )
    if canonical_parameters is not None or parameter_hash is not None:
        if type(canonical_parameters) is not str or type(parameter_hash) is not str or len(parameter_hash) != 64:
            raise KernelInputError(
                "canonical_parameters and parameter_hash go together: the canonical JSON of the parameters "
                "and its sha256 hex (or neither)"
            )
        params_text, param_hash = canonical_parameters, parameter_hash
    else:
        try:
            params_text = canonical_json_str(parameters)
        except (TypeError, ValueError) as err:
            raise KernelInputError(f"parameters are not JSON-able: {err}") from None
        param_hash = hashlib.sha256(params_text.encode("utf-8")).hexdigest()
    try:
        params_ascii = _chain_dumps(parameters)
    except (TypeError, ValueError) as err:  # pragma: no cover - canonical_json refused these already
        raise KernelInputError(f"parameters are not JSON-able: {err}") from None
    return json.loads(params_ascii), params_text, params_ascii, param_hash


def make_request(
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idempotency_key: str | None,
    cost: MonetaryAmount | Mapping[str, Any] | None,
    operation: Operation | str,
    approval_id: str | None = None,
    canonical_parameters: str | None = None,
    parameter_hash: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> EvalRequest:
    """Check and coerce one call into an :class:`EvalRequest` (``pre`` left None).

    Raises:
        KernelInputError: anything malformed (names, parameters, cost, operation, metadata, key).
    """
    for name, value, max_len in (
        ("capability_id", capability_id, 256), ("tool_server", tool_server, 1024), ("tool_name", tool_name, 1024)
    ):
        if type(value) is not str or not value or len(value) > max_len or not value.isascii() or "\x00" in value:
            _require_str(name, value, max_len=max_len)  # raises with the precise message, or accepts Unicode
    params, params_text, params_ascii, param_hash = canonical_forms(parameters, canonical_parameters, parameter_hash)
    op = operation if type(operation) is Operation else _coerce_operation(operation)
    cost_t = None if cost is None else _coerce_cost(cost)
    if approval_id is not None:
        _require_str("approval_id", approval_id, max_len=256)
    run_metadata = None if metadata is None else check_run_metadata(metadata)
    idem_hash = key_hash = None
    if idempotency_key is not None:
        _require_str("idempotency_key", idempotency_key, max_len=1024)
        idem_hash, key_hash = entry_hashes(
            idempotency_key, approval_id, capability_id, tool_server, tool_name, op.value, param_hash, cost_t
        )
    return EvalRequest(
        capability_id, tool_server, tool_name, op, params, params_text, params_ascii, param_hash, cost_t,
        idem_hash, None, approval_id, idempotency_key, key_hash,
        metadata=run_metadata,  # not in the fingerprint: another attempt's context, the same call
    )
