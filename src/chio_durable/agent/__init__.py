"""Engine-neutral agent governance: call mapping, idempotency keys, deny handling, the capability.

Shared by ``chio_prefect.ChioPrefectAgent`` and ``chio_temporal.ChioTemporalAgent``; usable on its
own on any pydantic-ai ``Agent``, durable or not::

    agent = Agent(model, capabilities=[ChioGovernance(capability_id="cap-1", chio_client=chio)])

See ``docs/agents.md`` for the mapping, the parameter shapes and the deny semantics.
"""

from chio_durable.agent._approvals import APPROVAL_METADATA_KEY, approval_results
from chio_durable.agent._capability import (
    ChioGovernance,
    GovernedToolset,
    OnDeny,
    current_receipt_id,
    receipt_scope,
)
from chio_durable.agent._denials import (
    DenyErrorFactory,
    GovernanceDenied,
    GovernedRecord,
    denied_tool_message,
)
from chio_durable.agent._mapping import (
    AGENT_TOOLSET_ID,
    MCP_LIST_TOOL,
    MODEL_SERVER,
    CallKind,
    CallMapper,
    GovernedCall,
    messages_digest,
    parameter_hash,
    settings_digest,
)
from chio_durable._metering import (
    COST_METADATA_KEY,
    DEFAULT_MAX_TOKENS,
    ModelMetering,
    ModelPrices,
    PriceLookup,
    TokenPrice,
)
from chio_durable.agent._display import ReceiptTable, records_html, records_table
from chio_durable.agent._models import model_setup_problem

__all__ = [
    "AGENT_TOOLSET_ID",
    "COST_METADATA_KEY",
    "DEFAULT_MAX_TOKENS",
    "APPROVAL_METADATA_KEY",
    "MCP_LIST_TOOL",
    "MODEL_SERVER",
    "ModelMetering",
    "ModelPrices",
    "PriceLookup",
    "TokenPrice",
    "CallKind",
    "CallMapper",
    "ChioGovernance",
    "DenyErrorFactory",
    "GovernanceDenied",
    "GovernedCall",
    "GovernedRecord",
    "GovernedToolset",
    "OnDeny",
    "ReceiptTable",
    "approval_results",
    "current_receipt_id",
    "denied_tool_message",
    "messages_digest",
    "model_setup_problem",
    "parameter_hash",
    "receipt_scope",
    "records_html",
    "records_table",
    "settings_digest",
]
