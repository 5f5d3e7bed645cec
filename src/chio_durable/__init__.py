"""Engine-neutral core of chio-durable: what the Prefect and Temporal layers share."""

from chio_durable.evaluation import (
    Evaluation,
    KernelRejected,
    KernelUnavailable,
    client_url,
    evaluate,
    evaluate_sync,
    idempotency_key,
)
from chio_durable.params import bind_parameters, jsonable

__all__ = [
    "Evaluation",
    "KernelRejected",
    "KernelUnavailable",
    "bind_parameters",
    "client_url",
    "evaluate",
    "evaluate_sync",
    "idempotency_key",
    "jsonable",
]
