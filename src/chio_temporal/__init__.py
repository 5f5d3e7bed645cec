"""chio-temporal: chio capability governance for Temporal activities (seed 001).

Every activity execution on a worker carrying :class:`ChioActivityInterceptor` is evaluated by the chio
kernel with the capability of the :class:`WorkflowGrant` registered for its workflow; a deny fails the
activity with the non-retryable ``ApplicationError(type=DENIED_ERROR_TYPE)``; per-activity receipts are
aggregated into a ``chio-temporal/v1`` :class:`WorkflowReceipt` envelope per workflow run.
"""

from chio_temporal._approvals import (
    APPROVAL_PENDING_ERROR_TYPE,
    APPROVAL_QUERY,
    APPROVAL_UPDATE,
)
from chio_temporal.errors import (
    DENIED_ERROR_TYPE,
    REJECTED_ERROR_TYPE,
    SIDECAR_ERROR_TYPE,
    ChioTemporalConfigError,
    ChioTemporalError,
)
from chio_temporal.grants import WorkflowGrant
from chio_temporal.interceptor import (
    ActivityCall,
    ActivityGrantOverride,
    ChioActivityInterceptor,
    current_evaluation,
    current_receipt_id,
)
from chio_temporal.receipt import ENVELOPE_VERSION, WorkflowReceipt, WorkflowStepReceipt
from chio_temporal._search_attributes import (
    SEARCH_ATTRIBUTES,
    ChioSearchAttributes,
    require_search_attributes,
    set_pending_approval,
)
from chio_temporal.worker import build_chio_worker
from chio_temporal._budgets import (
    RELEASE_HOLDS_ACTIVITY,
    ReleaseHolds,
    release_holds,
    release_holds_activity,
    release_holds_on_failure,
)
from chio_temporal._devserver import release_temporal_clients, run_temporal, temporal_cli_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chio_temporal._agent import ChioTemporalAgent

__all__ = [
    "APPROVAL_PENDING_ERROR_TYPE",
    "APPROVAL_QUERY",
    "APPROVAL_UPDATE",
    "DENIED_ERROR_TYPE",
    "ENVELOPE_VERSION",
    "REJECTED_ERROR_TYPE",
    "RELEASE_HOLDS_ACTIVITY",
    "SEARCH_ATTRIBUTES",
    "SIDECAR_ERROR_TYPE",
    "ActivityCall",
    "ActivityGrantOverride",
    "ChioActivityInterceptor",
    "ChioSearchAttributes",
    "ChioTemporalAgent",
    "ChioTemporalConfigError",
    "ChioTemporalError",
    "ReleaseHolds",
    "WorkflowGrant",
    "WorkflowReceipt",
    "WorkflowStepReceipt",
    "build_chio_worker",
    "current_evaluation",
    "current_receipt_id",
    "release_holds",
    "release_holds_activity",
    "release_holds_on_failure",
    "release_temporal_clients",
    "require_search_attributes",
    "run_temporal",
    "set_pending_approval",
    "temporal_cli_path",
]


def __getattr__(name: str) -> object:
    # Lazy: ChioTemporalAgent pulls in pydantic-ai, which neither seed-001 users nor every workflow
    # sandbox run (the sandbox re-imports this package) should pay for.
    if name == "ChioTemporalAgent":
        from chio_temporal._agent import ChioTemporalAgent

        return ChioTemporalAgent
    raise AttributeError(f"module 'chio_temporal' has no attribute {name!r}")
