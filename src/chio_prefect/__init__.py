"""chio-prefect: Chio capability governance for Prefect 3 tasks and flows (seed 000).

``@chio_task`` wraps ``prefect.task``: every attempt is evaluated by the chio kernel before the task
body runs, and the decision is mirrored as a ``chio.receipt.allow`` / ``chio.receipt.deny`` Prefect
event on the task run. ``@chio_flow`` wraps ``prefect.flow``: its scope is the upper bound of what any
enclosed task may call. A deny raises ``PermissionError`` from :class:`ChioPrefectError`.
"""

from chio_prefect.decorators import DEFAULT_SIDECAR_URL, chio_flow, chio_task, retry_unless_chio_denied
from chio_prefect.errors import (
    ChioPermissionError,
    ChioPrefectConfigError,
    ChioPrefectError,
    ChioRequestRejected,
    ChioSidecarUnavailable,
    is_chio_denial,
)
from chio_prefect.events import ALLOW_EVENT, DENY_EVENT, EVENT_ALLOW, EVENT_DENY
from chio_prefect._local import ephemeral_start_hint, quiet_expected_denials, use_local_prefect_defaults

__all__ = [
    "ALLOW_EVENT",
    "DEFAULT_SIDECAR_URL",
    "DENY_EVENT",
    "EVENT_ALLOW",
    "EVENT_DENY",
    "ChioPermissionError",
    "ChioPrefectConfigError",
    "ChioPrefectError",
    "ChioRequestRejected",
    "ChioSidecarUnavailable",
    "chio_flow",
    "chio_task",
    "ephemeral_start_hint",
    "is_chio_denial",
    "quiet_expected_denials",
    "retry_unless_chio_denied",
    "use_local_prefect_defaults",
]

# ChioPrefectAgent (chio_prefect/_agent.py) is exported lazily below (type checkers import it here).
__all__.append("ChioPrefectAgent")
__all__.append("ApprovalInput")  # the pause form of a call waiting for a person (lazy: imports prefect)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chio_prefect._agent import ChioPrefectAgent


def __getattr__(name: str) -> object:  # lazy: ChioPrefectAgent pulls in pydantic-ai (~0.7 s)
    if name == "ChioPrefectAgent":
        from chio_prefect._agent import ChioPrefectAgent

        return ChioPrefectAgent
    if name == "ApprovalInput":
        from chio_prefect._approvals import approval_input_class

        return approval_input_class()
    raise AttributeError(f"module 'chio_prefect' has no attribute {name!r}")
