"""The governed Prefect agent, offline: a scripted research agent for demos, examples and notebooks.

``run_demo(console, data_dir)`` is the "Prefect agent" section of ``chio-durable demo``. The
pieces it uses are public so the example (``examples/prefect_governed_agent.py``) runs the same
scripted agent (the notebook, ``notebooks/prefect_agent.ipynb``, defines its own, to show how):

* :func:`scripted_research_model` — a ``FunctionModel`` (clearly a script, no LLM): it searches,
  fetches two of the results (one on an allowed domain, one not), then answers;
* :func:`search` / :func:`fetch` — offline tools with canned data;
* :func:`research_scope` — what the capability grants: every model, ``researcher/search``, and
  ``researcher/fetch`` only for ``*.example.org`` (a ``domain_glob`` constraint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from chio_prefect._local import ephemeral_start_hint

__all__ = [
    "ALLOWED_URL",
    "FORBIDDEN_URL",
    "build_research_agent",
    "fetch",
    "research_scope",
    "run_demo",
    "scripted_research_model",
    "search",
]

#: For ``chio-durable demo`` (entry point ``chio.demo_sections``: ``prefect = "chio_prefect._demo:run_demo"``):
#: the section's title, and the one-line hint it prints when Prefect's temporary server starts too slowly.
TITLE = "Prefect agent"
failure_hint = ephemeral_start_hint

ALLOWED_URL = "https://docs.example.org/durable-agents"
FORBIDDEN_URL = "https://paste.attacker.net/upload"

_PAGES = {
    ALLOWED_URL: "Durable agents checkpoint every model call and tool call as a task.",
    FORBIDDEN_URL: "(upload accepted)",
}


def search(query: str) -> list[str]:
    """Search the (offline, canned) web for ``query``; returns result URLs."""
    return [ALLOWED_URL, FORBIDDEN_URL]


def fetch(url: str) -> str:
    """Fetch a page (offline, canned)."""
    return _PAGES.get(url, "404 not found")


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The script: 1) search the prompt, 2) fetch both results, 3) answer from what came back."""
    returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    if not returns:
        prompt = " ".join(
            str(getattr(p, "content", "")) for m in messages for p in m.parts if p.part_kind == "user-prompt"
        )
        return ModelResponse(parts=[ToolCallPart("search", {"query": prompt[:200]}, tool_call_id="scripted-search")])
    if returns[0].tool_name == "search":
        urls = returns[0].content if isinstance(returns[0].content, list) else []  # search returns a list
        return ModelResponse(
            parts=[ToolCallPart("fetch", {"url": url}, tool_call_id=f"scripted-fetch-{i}") for i, url in enumerate(urls)]
        )
    lines = [f"- {ret.tool_call_id}: {ret.model_response_str()}" for ret in returns]
    return ModelResponse(parts=[TextPart("Scripted summary of what I could read:\n" + "\n".join(lines))])


def scripted_research_model() -> FunctionModel:
    """A scripted stand-in for an LLM (offline, deterministic): search -> fetch x2 -> answer."""
    return FunctionModel(_scripted, model_name="scripted-research")


def build_research_agent(model: Model | str | None = None, *, name: str = "researcher") -> Agent[None, str]:
    """A plain research ``Agent`` with the ``search`` and ``fetch`` tools (scripted model by default)."""
    return Agent(
        model or scripted_research_model(),
        name=name,
        instructions="Research the question with the tools, then answer briefly.",
        tools=[search, fetch],
    )


def research_scope(agent_name: str = "researcher") -> ChioScope:
    """Every model; ``search``; ``fetch`` only on ``*.example.org``."""
    invoke = [Operation.INVOKE]
    return ChioScope(
        grants=[
            ToolGrant(server_id="model", tool_name="*", operations=invoke),
            ToolGrant(server_id=agent_name, tool_name="search", operations=invoke),
            ToolGrant(
                server_id=agent_name,
                tool_name="fetch",
                operations=invoke,
                constraints=[Constraint.domain_glob("*.example.org")],
            ),
        ]
    )


def run_demo(console: Any, data_dir: Path) -> None:
    """The governed Prefect agent in a few steps (for ``chio-durable demo``); raises if a step misbehaves."""
    import uuid

    from rich.markup import escape

    from chio_durable.agent import records_table
    from chio_kernel import LocalChioClient
    from chio_prefect._agent import ChioPrefectAgent
    from chio_prefect._local import use_local_prefect_defaults

    use_local_prefect_defaults()  # a start limit for Prefect's temporary server that a busy machine meets; no analytics
    chio = LocalChioClient(data_dir=data_dir)
    capability_id = f"cap-demo-researcher-{uuid.uuid4().hex[:8]}"
    chio.kernel.create_capability(subject="demo-researcher", scope=research_scope(), capability_id=capability_id)
    console.print(
        f"Capability [bold]{capability_id}[/]: any model, researcher/search, researcher/fetch on *.example.org",
        highlight=False,
    )
    governed = ChioPrefectAgent(build_research_agent(), capability_id=capability_id, chio_client=chio)
    console.print("Running the governed agent as a Prefect flow (scripted model, offline)...")
    result = governed.run_sync("How do durable agents survive crashes?")
    console.print(escape(result.output), highlight=False)
    records = governed.receipts_of(result)
    console.print(records_table(records, title="receipts of the run (model, tool calls)"))
    denied = [r for r in records if not r.allowed]
    if [r.call.label for r in denied] != ["researcher/fetch"]:
        raise RuntimeError(f"expected exactly the fetch outside *.example.org to be denied, got {denied}")

    revoked = chio.kernel.revoke_capability(capability_id)
    console.print(f"Revoked {', '.join(revoked)}; running again...", highlight=False)
    import logging

    flow_log = logging.getLogger("prefect.flow_runs")
    level = flow_log.level
    flow_log.setLevel(logging.CRITICAL)  # the failed flow's traceback is expected here, not news
    try:
        governed.run_sync("How do durable agents survive crashes?")
    except PermissionError as err:
        cause = err.__cause__
        console.print(
            f"[red]✗ denied[/] before the first model call: guard [bold]{escape(str(getattr(cause, 'guard', '?')))}[/], "
            f"receipt {escape(str(getattr(cause, 'receipt_id', '?')))}",
            highlight=False,
        )
    else:
        raise RuntimeError("the revoked capability still ran the agent")
    finally:
        flow_log.setLevel(level)
