"""The engines' internal API: the one internal module of ``chio_durable`` an engine package may import.

``chio_prefect``, ``chio_temporal`` and ``chio_dbos`` import from ``chio_durable`` only three
modules: ``chio_durable`` and ``chio_durable.agent`` (the public surface, their ``__all__``) and
this one (``tests/test_import_graph.py`` holds it). What an engine needs beyond the public surface
is re-exported here, from where it lives; nothing is defined here. Stable within a release, for
the engine packages of this distribution; not for users: it may change in any release.

A name public in ``chio_durable`` or ``chio_durable.agent`` is imported from there, not from here.
The exceptions, marked below, are three names public only in ``chio_durable.agent``
(``current_receipt_id``, ``receipt_scope``, ``COST_METADATA_KEY``) that live in the engine-neutral
core: importing ``chio_durable.agent`` loads pydantic-ai, so an engine module that is not an agent
module (``chio_temporal``'s interceptor side must stay light: ``import chio_temporal`` loads no
pydantic-ai) takes them from here.

Sections:

* transport & evaluation: the transports an engine builds itself, the client check, the kernel loop;
* calls, keys & run metadata: the run metadata a receipt carries;
* decisions & records: observers notified, denies decided before evaluation, the receipt in force;
* approvals: a call waiting for a person, re-evaluation under an approval, the agent's waiter type;
* budgets & metering: tool costs checked and resolved, holds settled and released, reported costs;
* agent governance internals: the capability's realtime refusal, MCP toolsets, denied messages, and
  the pydantic-ai seams (``chio_durable.agent._seams``);
* display: nothing private (``records_table`` / ``records_html`` are public in ``chio_durable.agent``).

The names that live in ``chio_durable.agent`` (marked *agent* below) are loaded on first use, so
importing this module loads no pydantic-ai; an engine's agent module that imports one loads it, as
it always did.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# --- transport & evaluation ----------------------------------------------------------------------
from chio_durable._loop import run_on_kernel_loop
from chio_durable._transport import EmbeddedTransport, HttpTransport, TransportSlot, is_client

# --- calls, keys & run metadata ------------------------------------------------------------------
from chio_durable._call import run_metadata

# --- decisions & records -------------------------------------------------------------------------
from chio_durable._decision import notify
from chio_durable._denial_record import deny_before_evaluation, deny_before_evaluation_async
from chio_durable._scope import current_receipt_id, receipt_scope  # also public in chio_durable.agent

# --- approvals -----------------------------------------------------------------------------------
from chio_durable._approval import PendingApproval, evaluate_under, evaluate_under_sync, pending_approval

# --- budgets & metering --------------------------------------------------------------------------
from chio_durable._metering import (
    COST_METADATA_KEY,  # also public in chio_durable.agent
    HOLDS,
    check_cost,
    cost_report_open,
    release_hold,
    reported_cost_scope,
    resolve_cost,
    settle_hold,
)

# --- agent (loaded on first use: chio_durable.agent imports pydantic-ai) --------------------------
_AGENT = {
    # approvals
    "ApprovalWaiter": ("chio_durable.agent._approvals", "ApprovalWaiter"),
    # agent governance internals
    "REALTIME_REFUSED": ("chio_durable.agent._capability", "REALTIME_REFUSED"),
    "is_mcp_toolset": ("chio_durable.agent._capability", "_is_mcp_toolset"),
    "receipt_id_in_denied_message": ("chio_durable.agent._denials", "receipt_id_in_denied_message"),
    "check_realtime_hooks": ("chio_durable.agent._seams", "check_realtime_hooks"),
    "prefect_agent_hidden_options": ("chio_durable.agent._seams", "prefect_agent_hidden_options"),
    "refuse_realtime": ("chio_durable.agent._seams", "refuse_realtime"),
    "set_root_capability": ("chio_durable.agent._seams", "set_root_capability"),
    "GovernedAgentFace": ("chio_durable.agent._wrapper", "GovernedAgentFace"),
}

if TYPE_CHECKING:
    from chio_durable.agent._approvals import ApprovalWaiter
    from chio_durable.agent._capability import REALTIME_REFUSED
    from chio_durable.agent._capability import _is_mcp_toolset as is_mcp_toolset
    from chio_durable.agent._denials import receipt_id_in_denied_message
    from chio_durable.agent._seams import (
        check_realtime_hooks,
        prefect_agent_hidden_options,
        refuse_realtime,
        set_root_capability,
    )
    from chio_durable.agent._wrapper import GovernedAgentFace
else:

    def __getattr__(name: str) -> object:
        """An *agent* name, imported from where it lives on first use (then a module attribute)."""
        try:
            module, attribute = _AGENT[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value


__all__ = [
    # transport & evaluation
    "EmbeddedTransport",
    "HttpTransport",
    "TransportSlot",
    "is_client",
    "run_on_kernel_loop",
    # calls, keys & run metadata
    "run_metadata",
    # decisions & records
    "current_receipt_id",
    "deny_before_evaluation",
    "deny_before_evaluation_async",
    "notify",
    "receipt_scope",
    # approvals
    "ApprovalWaiter",
    "PendingApproval",
    "evaluate_under",
    "evaluate_under_sync",
    "pending_approval",
    # budgets & metering
    "COST_METADATA_KEY",
    "HOLDS",
    "check_cost",
    "cost_report_open",
    "release_hold",
    "reported_cost_scope",
    "resolve_cost",
    "settle_hold",
    # agent governance internals
    "REALTIME_REFUSED",
    "check_realtime_hooks",
    "is_mcp_toolset",
    "prefect_agent_hidden_options",
    "receipt_id_in_denied_message",
    "refuse_realtime",
    "set_root_capability",
    "GovernedAgentFace",
]
