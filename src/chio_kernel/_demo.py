"""``chio-durable demo``: governance end to end on the embedded kernel, in sections.

The kernel section issues a capability, makes allowed calls, a call outside the scope (denied by
the ``scope`` guard), one outside a constraint (``constraints``), revokes the capability (then
``revocation`` denies), shows the receipts as a table and verifies the chain. Engine sections
follow when their modules exist: ``chio_prefect._demo.run_demo(console, data_dir)`` and
``chio_temporal._demo.run_demo(console, data_dir)``. No API key, no running services.
"""

from __future__ import annotations

import importlib
import shlex
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["ENGINE_SECTIONS", "run", "run_kernel_section"]

#: (section title, module with ``run_demo(console, data_dir)``), run in this order.
ENGINE_SECTIONS: tuple[tuple[str, str], ...] = (
    ("Prefect agent", "chio_prefect._demo"),
    ("Temporal agent", "chio_temporal._demo"),
)


def _show(console: Console, receipt: Any, call: str) -> None:
    if receipt.decision.is_allowed:
        console.print(f"  [green]✓ allow[/]  {escape(call)}  [dim]{receipt.id}[/]", highlight=False)
    else:
        d = receipt.decision
        console.print(f"  [red]✗ deny[/]   {escape(call)}", highlight=False)
        console.print(f"           guard [bold]{escape(str(d.guard))}[/]: {escape(str(d.reason))}", highlight=False, soft_wrap=True)


def run_kernel_section(console: Console, data_dir: Path) -> bool:
    """The embedded-kernel walkthrough. Returns True if every step behaved as shown."""
    from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

    from chio_kernel import Kernel
    from chio_kernel._render import receipt_table

    console.rule("[bold]1. The embedded kernel")
    kernel = Kernel(data_dir=data_dir)
    scope = ChioScope(
        grants=[
            ToolGrant(
                server_id="files",
                tool_name="read_file",
                operations=[Operation.INVOKE],
                constraints=[Constraint.path_prefix("/data/")],
            ),
            ToolGrant(server_id="web", tool_name="search", operations=[Operation.INVOKE], max_invocations=10),
        ]
    )
    token = kernel.create_capability(
        subject="agent:demo-research",
        scope=scope,
        ttl_seconds=600,
        capability_id=f"cap-demo-{uuid.uuid4().hex[:6]}",  # readable, and unique if --data-dir is reused
    )
    console.print(
        f"Issued capability [bold]{token.id}[/] to agent:demo-research, valid 10 min:\n"
        "  files:read_file (path_prefix /data/)   web:search (max 10 calls)",
        highlight=False,
    )
    console.print()
    ok = True

    def call(server: str, tool: str, params: dict[str, Any], expect: str | None) -> None:
        nonlocal ok
        receipt = kernel.evaluate(token.id, server, tool, params)
        args = ", ".join(f"{k}={v!r}" for k, v in params.items())
        _show(console, receipt, f"{server}/{tool}({args})")
        got = None if receipt.decision.is_allowed else receipt.decision.guard
        if got != expect:
            ok = False
            console.print(f"  [yellow]! expected {expect or 'allow'}, got {got or 'allow'}[/]")

    console.print("[bold]Calls inside the scope[/]")
    call("files", "read_file", {"path": "/data/report.txt"}, None)
    call("web", "search", {"query": "durable workflows"}, None)
    console.print("[bold]A tool the capability does not grant[/]")
    call("files", "write_file", {"path": "/data/report.txt", "text": "overwritten"}, "scope")
    console.print("[bold]A path outside the granted prefix[/]")
    call("files", "read_file", {"path": "/etc/passwd"}, "constraints")
    revoked = kernel.revoke_capability(token.id)
    console.print(f"[bold]Revoked[/] {', '.join(revoked)} — the same allowed call again:")
    call("files", "read_file", {"path": "/data/report.txt"}, "revocation")
    console.print()

    receipts = kernel.list_receipts(capability_id=token.id)
    console.print(receipt_table(receipts, "Signed receipts (allow and deny alike)", compact=True))
    report = kernel.verify_chain()
    if report.ok:
        signed = sum(1 for r in receipts if kernel.verify_receipt(r))
        console.print(
            f"[green]Chain verified[/]: {report.count} receipts hash-linked; "
            f"{signed}/{len(receipts)} signatures valid (kernel key {kernel.public_key_hex[:16]}…)",
            highlight=False,
        )
    else:
        ok = False
        console.print(f"[red]Chain broken at index {report.first_broken_index}: {escape(str(report.reason))}[/]")
    return ok


def _start_hint(error: BaseException) -> str | None:
    """The one-line hint for an engine server that did not start in time, if that is what ``error`` is."""
    try:
        from chio_prefect._local import ephemeral_start_hint
    except ImportError:  # no Prefect installed: nothing of it can have timed out
        return None
    return ephemeral_start_hint(error)


def _run_engine_section(console: Console, index: int, title: str, module: str, data_dir: Path) -> bool:
    """Run one engine's ``run_demo``; a broken section is reported and the others still run."""
    console.rule(f"[bold]{index}. {title}")
    try:
        importlib.import_module(module).run_demo(console, data_dir)
    except Exception as e:
        hint = _start_hint(e)
        if hint is not None:  # Prefect's temporary server was too slow to start: say what to set
            console.print(f"[red]The {title} section failed: {escape(hint)}[/]", highlight=False, soft_wrap=True)
        else:
            console.print(f"[red]The {title} section failed: {type(e).__name__}: {escape(str(e))}[/]", highlight=False)
        return False
    return True


PIPED_WIDTH = 120
"""The demo's width when its output is not a terminal (receipt ids never wrap)."""


def _inspect_command(data_dir: Path) -> str:
    """The command that lists the demo's receipts: with the demo's ``--store`` when it ran on a
    PostgreSQL store (``$CHIO_STORE``, set by ``chio-durable demo --store``), shell-quoted; a
    password in the URL is shown as ``***``, with a note to put it back."""
    from chio_kernel._postgres_store import mask_dsn
    from chio_kernel._kernel import resolve_store

    command = f"chio-durable receipts list --data-dir {shlex.quote(str(data_dir))}"
    dsn = resolve_store(None)
    if dsn is None:
        return command
    shown = mask_dsn(dsn)
    command += f" --store {shlex.quote(shown)}"
    return command if shown == dsn else command + "  (put the store's password in place of ***)"


def run(console: Console | None = None, data_dir: Path | None = None) -> int:
    """Run every demo section; return the process exit code (0 if all behaved as shown)."""
    console = console or Console()
    if not console.is_terminal and console.width < PIPED_WIDTH:
        # Piped or captured: no terminal to fit (rich would assume 80 columns); keep every receipt
        # id on one line, whole, so it can be copied or grepped.
        console.width = PIPED_WIDTH
    started = time.perf_counter()
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="chio-demo-"))
    else:
        data_dir = data_dir.expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"chio-durable demo — kernel data in [bold]{data_dir}[/]", highlight=False)
    failures = 0 if run_kernel_section(console, data_dir) else 1
    for index, (title, module) in enumerate(ENGINE_SECTIONS, start=2):
        failures += 0 if _run_engine_section(console, index, title, module, data_dir) else 1
    console.rule()
    from chio_kernel import Kernel

    report = Kernel(data_dir=data_dir).verify_chain()
    if report.ok:
        console.print(f"[green]All {report.count} receipts of the demo verify as one chain.[/]")
    else:
        failures += 1
        console.print(f"[red]Chain broken at index {report.first_broken_index}: {escape(str(report.reason))}[/]")
    console.print(
        f"Done in {time.perf_counter() - started:.1f}s. Inspect: {escape(_inspect_command(data_dir))}",
        highlight=False,
        soft_wrap=True,
    )
    if failures:
        console.print(f"[red]{failures} section(s) did not behave as expected.[/]")
        return 1
    return 0
