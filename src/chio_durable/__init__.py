"""Engine-neutral core of chio-durable: what the Prefect and Temporal layers share.

Public surface (internals live in private modules, as pydantic-ai's ``durable_exec/`` does):
``KernelTransport`` / ``as_transport`` (how a layer reaches the kernel, chosen once),
``GovernedCall`` (one call, parameters hashed once), ``Evaluation`` (the decision), the one
idempotency-key scheme (``call_key``), the no-decision errors and ``instrument_all`` (one
OpenTelemetry span per decision, docs/observability.md).
"""

from chio_durable._call import CallKind, GovernedCall, call_key
from chio_durable._decision import Decision, DecisionObserver
from chio_durable._errors import HoldConflict, NoDecision
from chio_durable._transport import ChioClientLike, KernelTransport, as_transport
from chio_durable._evaluation import (
    Evaluation,
    KernelRejected,
    KernelUnavailable,
    client_url,
    evaluate,
    evaluate_sync,
    idempotency_key,
)
from chio_durable._params import bind_parameters, jsonable
from chio_durable._telemetry import instrument_all
from chio_durable._metering import ToolCost, release_op_id, report_cost, settle_op_id, usd

__all__ = [
    "CallKind",
    "ChioClientLike",
    "Decision",
    "DecisionObserver",
    "Evaluation",
    "GovernedCall",
    "HoldConflict",
    "KernelRejected",
    "KernelTransport",
    "KernelUnavailable",
    "NoDecision",
    "ToolCost",
    "as_transport",
    "bind_parameters",
    "call_key",
    "client_url",
    "evaluate",
    "evaluate_sync",
    "idempotency_key",
    "instrument_all",
    "jsonable",
    "release_op_id",
    "report_cost",
    "settle_op_id",
    "usd",
]
