"""The pydantic-ai internals chio_dbos relies on (chio_dbos._seams), pinned loudly, and the three
shapes ChioDBOSAgent accepts: a plain Agent, an Agent with DBOSDurability, a deprecated DBOSAgent."""

from __future__ import annotations

import warnings

import pytest
from dbos import SetWorkflowID
from pydantic_ai import Agent
from pydantic_ai.durable_exec.dbos import DBOSAgent, DBOSDurability
from pydantic_ai.exceptions import UserError
from pydantic_ai.models.test import TestModel

from chio_dbos import ChioDBOSAgent
from chio_dbos._seams import DBOS_AGENT_HIDDEN_OPTIONS
from chio_durable.agent import ChioGovernance
from chio_kernel import LocalChioClient

from chio_dbos_kit import grant, issue, step_names


def test_agent_root_capability_is_still_where_the_seam_writes_it() -> None:
    agent = Agent(TestModel(), name="seam-root")
    assert hasattr(agent, "_root_capability") and agent.root_capability is agent._root_capability


def test_dbos_agent_options_are_still_where_the_seam_reads_them() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dbos_agent = DBOSAgent(Agent(TestModel(), name="seam-dbos-agent"), model_step_config={"max_attempts": 2})
    for attribute in DBOS_AGENT_HIDDEN_OPTIONS.values():
        assert hasattr(dbos_agent, attribute), attribute
    assert dbos_agent._model_step_config == {"max_attempts": 2}


def test_the_users_agent_is_left_untouched_and_a_name_is_required(chio: LocalChioClient) -> None:
    agent = Agent(TestModel(), name="untouched")
    governed = ChioDBOSAgent(agent, capability_id="cap-x", chio_client=chio)
    assert DBOSDurability.from_agent(agent) is None and DBOSDurability.from_agent(governed.wrapped) is not None
    with pytest.raises(UserError, match="unique agent name"):
        ChioDBOSAgent(Agent(TestModel()), capability_id="cap-x", chio_client=chio)
    with pytest.raises(UserError, match="already a ChioDBOSAgent"):
        ChioDBOSAgent(governed, capability_id="cap-x", chio_client=chio)  # type: ignore[arg-type]
    already = Agent(TestModel(), name="governed-twice", capabilities=[
        ChioGovernance(capability_id="cap-x", chio_client=chio), DBOSDurability()])
    with pytest.raises(UserError, match="already carries ChioGovernance"):
        ChioDBOSAgent(already, capability_id="cap-x", chio_client=chio)


@pytest.mark.parametrize("shape", ["durable-agent", "dbos-agent"])
async def test_a_durable_agent_or_dbos_agent_is_governed_in_dbos_steps(
    shape: str, chio: LocalChioClient, dbos_url: str
) -> None:
    name = f"shape-{shape}"
    cap = issue(chio, f"cap-{name}", grant("model"), grant(name))
    if shape == "durable-agent":
        given = Agent(TestModel(call_tools=[]), name=name, capabilities=[DBOSDurability()])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            given = DBOSAgent(Agent(TestModel(call_tools=[]), name=name))
    governed = ChioDBOSAgent(given, capability_id=cap, chio_client=chio)
    with SetWorkflowID(f"wf-{name}"):
        result = await governed.run("hi")
    assert len(governed.receipt_ids_of(result)) == 1
    assert await step_names(f"wf-{name}") == [f"{name}__capability__chio.evaluate", f"{name}__model.request"]


async def test_governance_passed_to_a_run_inside_a_workflow_is_refused_not_ungoverned(
    chio: LocalChioClient, dbos_url: str
) -> None:
    """Why ChioDBOSAgent puts governance on the agent: per-run, pydantic-ai refuses it in a workflow
    (the same rule holds for Hatchet's registered backend, see docs/dbos.md)."""
    from dbos import DBOS

    ran: list[str] = []

    def tool() -> str:
        ran.append("tool")
        return "ran"

    agent = Agent(TestModel(), name="per-run-gov", tools=[tool], capabilities=[DBOSDurability()])

    @DBOS.workflow(name="chio-test-per-run")
    async def wf() -> str:
        gov = ChioGovernance(capability_id="cap-x", chio_client=chio)
        return (await agent.run("hi", capabilities=[gov])).output

    with SetWorkflowID("wf-per-run"), pytest.raises(UserError, match="added per-run"):
        await wf()
    assert ran == []
