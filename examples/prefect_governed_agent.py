"""A governed, durable Pydantic AI agent on Prefect, in one line: ``ChioPrefectAgent``.

Offline by default: the model is a *scripted* ``FunctionModel`` (no LLM, no API key) that searches,
fetches two pages — one on an allowed domain, one not — and answers. With a real model::

    pip install "chio-durable[openai]"
    OPENAI_API_KEY=... python examples/prefect_governed_agent.py --model openai:gpt-4o

What it shows: the embedded Chio kernel (no sidecar), a capability that grants the model, the
``search`` tool and ``fetch`` only on ``*.example.org``; every model request and tool call
evaluated before it runs (a Prefect task each, its cache key carrying the receipt id); the denied
fetch told to the model; the receipts of the run; and, after revoking the capability, the next run
denied before its first model call.

Prefect: set ``PREFECT_API_URL`` to use your server; otherwise Prefect starts a temporary local one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from chio_durable.agent import model_setup_problem, records_table
from chio_kernel import LocalChioClient
from chio_prefect import ChioPrefectAgent
from chio_prefect._demo import build_research_agent, research_scope
from chio_prefect import ephemeral_start_hint, quiet_expected_denials, use_local_prefect_defaults


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a real model, e.g. openai:gpt-4o (default: the scripted one)")
    parser.add_argument("--data-dir", type=Path, default=None, help="kernel data directory (default: a temp dir)")
    parser.add_argument("--prompt", default="How do durable agents survive crashes?")
    args = parser.parse_args(argv)
    console = console or Console()
    if args.model is not None:
        problem = model_setup_problem(args.model)  # a missing extra or API key: say so, no traceback
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
    # Prefect's temporary server (no PREFECT_API_URL): a start limit a busy machine meets, no analytics.
    use_local_prefect_defaults()
    quiet_expected_denials()  # a deny below is expected: one line, not a traceback

    # 1. The embedded kernel: signing key + receipt store in one directory, no server.
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="chio-example-"))
    chio = LocalChioClient(data_dir=data_dir)

    # 2. A capability: any model, `search`, and `fetch` only on *.example.org.
    capability_id = f"cap-researcher-{uuid.uuid4().hex[:8]}"
    chio.kernel.create_capability(subject="researcher-agent", scope=research_scope(), capability_id=capability_id)

    # 3. A plain Pydantic AI agent, made durable and governed in one line.
    agent = build_research_agent(args.model)  # scripted model unless --model is given
    governed = ChioPrefectAgent(agent, capability_id=capability_id, chio_client=chio)

    # 4. Run it: a Prefect flow; each model request and tool call is a task, evaluated first.
    result = governed.run_sync(args.prompt)
    console.print(f"[bold]answer[/] ({'scripted model' if args.model is None else args.model}):")
    console.print(result.output, highlight=False, markup=False)
    console.print(records_table(governed.receipts_of(result)))

    # 5. Revoke: the next run is denied before its first model call.
    chio.kernel.revoke_capability(capability_id)
    try:
        governed.run_sync(args.prompt)
    except PermissionError as err:
        cause = err.__cause__
        console.print(
            f"after revocation: [red]denied[/] (guard {getattr(cause, 'guard', '?')}, "
            f"receipt {getattr(cause, 'receipt_id', '?')})",
            highlight=False,
        )
    else:
        console.print("[red]after revocation the agent still ran: this should not happen[/]")
        return 1
    console.print(f"kernel data (receipts, key) in {data_dir}", highlight=False)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as err:
        if (hint := ephemeral_start_hint(err)) is None:
            raise
        raise SystemExit(hint) from None  # one line naming the setting, exit 1
