"""What every engine's governed agent wrapper answers the same way: its fixed name, its capability, its receipts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_ai.exceptions import UserError

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from chio_durable.agent._capability import ChioGovernance
    from chio_durable.agent._denials import GovernedRecord

__all__ = ["GovernedAgentFace"]


class GovernedAgentFace:
    """Mixin of a governed ``WrapperAgent`` (put it first in the bases): reads ``self.governance`` and
    ``self._agent_name``, which the engine's wrapper sets."""

    governance: ChioGovernance
    _agent_name: str | None

    @property
    def name(self) -> str | None:
        """The agent's name: it names the engine's durable units, so it is fixed."""
        return self._agent_name

    @name.setter
    def name(self, value: str | None) -> None:
        raise UserError(f"a {type(self).__name__}'s name is fixed; create a new one to change it")

    @property
    def capability_id(self) -> str:
        """The capability every call of the agent is evaluated against."""
        return self.governance.capability_id

    def receipts_of(self, result: AgentRunResult[Any] | str) -> list[GovernedRecord]:
        """The evaluations of one run in this process (its result or run id), in order, allow and deny."""
        return self.governance.receipts_of(result)

    def receipt_ids_of(self, result: AgentRunResult[Any] | str) -> list[str]:
        """The receipt ids of one run (model requests, tool and MCP tool calls), in order, each once."""
        return self.governance.receipt_ids_of(result)
