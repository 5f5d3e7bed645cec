"""Seed 000's quickstart, runnable offline: a governed Prefect research pipeline.

    python examples/prefect_research_pipeline.py                      # embedded kernel, temp dir
    python examples/prefect_research_pipeline.py --data-dir ./chio    # embedded kernel, kept
    python examples/prefect_research_pipeline.py --sidecar-url http://127.0.0.1:9090

It provisions the capability ``cap-research-pipeline`` (search-srv: search_documents,
analyze_results) on the kernel, runs the quickstart flow (every task evaluated before its body, each
decision mirrored as a ``chio.receipt.*`` Prefect event), prints the receipts, then runs a task that
tries to leave the flow's scope (``fs-srv/write_file``) and shows the deny.

The search and analysis bodies are local stand-ins (no network). Without ``PREFECT_API_URL`` Prefect
starts a temporary local API for the run, which takes a few seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

import httpx
from chio_sdk.models import ChioReceipt, ChioScope, Operation, ToolGrant

from chio_durable import client_url
from chio_kernel import SidecarClient
from chio_prefect import ChioPrefectError, chio_flow, chio_task
from chio_prefect import ephemeral_start_hint, quiet_expected_denials, use_local_prefect_defaults

CAPABILITY_ID = "cap-research-pipeline"

PIPELINE_SCOPE = ChioScope(
    grants=[
        ToolGrant(
            server_id="search-srv",
            tool_name="search_documents",
            operations=[Operation.INVOKE],
        ),
        ToolGrant(
            server_id="search-srv",
            tool_name="analyze_results",
            operations=[Operation.INVOKE],
        ),
    ]
)


class external_search:  # noqa: N801 - the quickstart's name
    """Offline stand-in for a search backend."""

    @staticmethod
    def run(query: str) -> list[dict]:
        words = query.split()
        return [{"title": f"{w.capitalize()} in practice", "score": round(1 / (i + 1), 2)} for i, w in enumerate(words)]


class analyzer:  # noqa: N801 - the quickstart's name
    """Offline stand-in for an analysis step."""

    @staticmethod
    def run(documents: list[dict]) -> dict:
        best = max(documents, key=lambda d: d["score"]) if documents else None
        return {"documents": len(documents), "best": best["title"] if best else None}


def build_pipeline(client: Any) -> tuple[Any, Any]:
    """The quickstart's tasks and flow (the client is injected so the example runs offline)."""

    @chio_task(tool_server="search-srv")
    def search_documents(query: str) -> list[dict]:
        return external_search.run(query)

    @chio_task(tool_server="search-srv")
    def analyze_results(documents: list[dict]) -> dict:
        return analyzer.run(documents)

    @chio_task(tool_server="fs-srv")
    def write_file(path: str, body: str) -> None:
        raise AssertionError("the flow scope must stop this before it runs")

    @chio_flow(
        scope=PIPELINE_SCOPE,
        capability_id=CAPABILITY_ID,
        tool_server="search-srv",
        chio_client=client,
    )
    def research_pipeline(query: str) -> dict:
        docs = search_documents(query)
        return analyze_results(docs)

    @chio_flow(scope=PIPELINE_SCOPE, capability_id=CAPABILITY_ID, chio_client=client)
    def exfiltrate(query: str) -> None:
        write_file("/tmp/leak.txt", query)

    return research_pipeline, exfiltrate


# --- provisioning and receipts, for both kinds of client ------------------------------------------


def provision(client: Any) -> None:
    """Create ``cap-research-pipeline`` on the kernel unless it already exists."""
    kernel = getattr(client, "kernel", None)
    if kernel is not None:  # embedded: LocalChioClient
        if kernel.get_capability(CAPABILITY_ID) is None:
            kernel.create_capability(subject="research-pipeline", scope=PIPELINE_SCOPE, capability_id=CAPABILITY_ID)
        return

    # Sidecar: its own short-lived sync HTTP client (the async client's connections belong to the
    # evaluation loop). POST /v1/capabilities accepts the capability id.
    with httpx.Client(base_url=client_url(client), timeout=10) as http:
        found = http.get(f"/v1/capabilities/{CAPABILITY_ID}")
        if found.status_code == 404:
            body = {"subject": "research-pipeline", "scope": PIPELINE_SCOPE.model_dump(mode="json"),
                    "id": CAPABILITY_ID}
            http.post("/v1/capabilities", json=body).raise_for_status()
        else:
            found.raise_for_status()


def receipts(client: Any) -> list[Any]:
    kernel = getattr(client, "kernel", None)
    if kernel is not None:
        return kernel.list_receipts(capability_id=CAPABILITY_ID)

    with httpx.Client(base_url=client_url(client), timeout=10) as http:
        response = http.get("/v1/receipts", params={"capability_id": CAPABILITY_ID})
        response.raise_for_status()
        return [ChioReceipt.model_validate(r) for r in response.json()["receipts"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--query", default="capability-based security")
    parser.add_argument("--data-dir", help="embedded kernel directory (default: a new temp dir)")
    parser.add_argument("--sidecar-url", help="use a running sidecar instead of the embedded kernel")
    args = parser.parse_args(argv)
    # Prefect's temporary server (no PREFECT_API_URL): a start limit a busy machine meets, no analytics.
    use_local_prefect_defaults()
    quiet_expected_denials()  # a deny below is expected: one line, not a traceback

    if args.sidecar_url:
        # SidecarClient: a chio_sdk.ChioClient that also sends idempotency keys (retries replay receipts)
        client: Any = SidecarClient(args.sidecar_url)
        where = f"sidecar {args.sidecar_url}"
    else:
        from chio_kernel import LocalChioClient

        data_dir = args.data_dir or tempfile.mkdtemp(prefix="chio-research-")
        client = LocalChioClient(data_dir)
        where = f"embedded kernel in {data_dir}"

    provision(client)
    research_pipeline, exfiltrate = build_pipeline(client)
    print(f"kernel: {where}")

    before = len(receipts(client))
    result = research_pipeline(args.query)
    print(f"result: {result}")

    try:
        exfiltrate(args.query)
        print("write_file was NOT denied", file=sys.stderr)
        return 1
    except PermissionError as e:
        if not isinstance(e.__cause__, ChioPrefectError):
            raise
        print(f"denied: {e.__cause__.guard}: {e.__cause__.reason}")

    print("receipts:")
    for receipt in receipts(client)[before:]:
        print(f"  {receipt.id}  {receipt.decision.verdict:5}  {receipt.tool_server}/{receipt.tool_name}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RuntimeError as err:
        if (hint := ephemeral_start_hint(err)) is None:
            raise
        raise SystemExit(hint) from None  # one line naming the setting, exit 1
