"""``chio-durable demo``: governance end to end on the embedded kernel, in sections.

The kernel section issues a capability, makes allowed calls, a call outside the scope (denied by
the ``scope`` guard), one outside a constraint (``constraints``), revokes the capability (then
``revocation`` denies), shows the receipts as a table and verifies the chain. No API key, no
running services.

The engine sections follow, found as entry points of the group ``chio.demo_sections`` (declared in
``pyproject.toml``: ``prefect = "chio_prefect._demo:run_demo"``, ``temporal = ...``), so the kernel
never imports an engine. Each names a ``run_demo(console, data_dir)`` function; they run in the
alphabetical order of their entry point names. The module of that function may define ``TITLE``
(the section's title, else the entry point's name) and ``failure_hint(error) -> str | None`` (a
one-line hint printed instead of the error, for a failure the user can fix). A section whose
module cannot be imported (an engine whose dependencies are not installed) is reported in one
line and skipped; it does not fail the demo.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["SECTIONS_GROUP", "engine_sections", "run", "run_kernel_section"]

SECTIONS_GROUP = "chio.demo_sections"
"""The entry point group of the engine sections: each names a ``run_demo(console, data_dir)``."""


def engine_sections() -> list[EntryPoint]:
    """The installed engine sections (group ``chio.demo_sections``), in the order they run: by name.
    A name declared twice (two distributions on the path) runs once: the first found on the path."""
    first: dict[str, EntryPoint] = {}
    for ep in entry_points(group=SECTIONS_GROUP):
        first.setdefault(ep.name, ep)
    return [first[name] for name in sorted(first)]


def _show(console: Console, receipt: Any, call: str) -> None:
    if receipt.decision.is_allowed:
        console.print(f"  [green]✓ allow[/]  {escape(call)}  [dim]{receipt.id}[/]", highlight=False)
    else:
        d = receipt.decision
        console.print(f"  [red]✗ deny[/]   {escape(call)}", highlight=False)
        console.print(f"           guard [bold]{escape(str(d.guard))}[/]: {escape(str(d.reason))}", highlight=False, soft_wrap=True)


def _kernel_scope() -> Any:
    """What the kernel section's capability grants."""
    from chio_sdk.models import ChioScope, Constraint, Operation, ToolGrant

    return ChioScope(
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


def _show_receipts(console: Console, kernel: Any, capability_id: str) -> bool:
    """The section's receipts as a table, then the chain's check; False if the chain is broken."""
    from chio_kernel._render import receipt_table

    receipts = kernel.list_receipts(capability_id=capability_id)
    console.print(receipt_table(receipts, "Signed receipts (allow and deny alike)", compact=True, width=console.width))
    report = kernel.verify_chain()
    if report.ok:
        signed = sum(1 for r in receipts if kernel.verify_receipt(r))
        console.print(
            f"[green]Chain verified[/]: {report.count} receipts hash-linked; "
            f"{signed}/{len(receipts)} signatures valid (kernel key {kernel.public_key_hex})",
            highlight=False,
        )
        return True
    console.print(f"[red]Chain broken at index {report.first_broken_index}: {escape(str(report.reason))}[/]")
    return False


def run_kernel_section(console: Console, data_dir: Path) -> bool:
    """The embedded-kernel walkthrough. Returns True if every step behaved as shown."""
    from chio_kernel import Kernel

    console.rule("[bold]1. The embedded kernel")
    kernel = Kernel(data_dir=data_dir)
    token = kernel.create_capability(
        subject="agent:demo-research",
        scope=_kernel_scope(),
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

    return _show_receipts(console, kernel, token.id) and ok


@dataclass(frozen=True)
class _Section:
    title: str
    value: str  # the entry point's module:function
    run_demo: Callable[[Console, Path], object]
    failure_hint: Callable[[BaseException], str | None] | None


def _load_section(section: EntryPoint) -> _Section:
    """Import the section's ``run_demo`` and read its module's ``TITLE`` and ``failure_hint``."""
    run_demo = section.load()
    module = sys.modules.get(section.module)
    title = str(getattr(module, "TITLE", section.name))
    return _Section(title, section.value, run_demo, getattr(module, "failure_hint", None))


def _say_skipped(console: Console, title: str, value: str, error: ModuleNotFoundError) -> None:
    """One line: the section cannot run here, a module it needs is not installed (not a failure)."""
    console.print(f"[yellow]The {escape(title)} section is skipped ({escape(value)}): ModuleNotFoundError: "
                  f"{escape(str(error))}[/]", highlight=False, soft_wrap=True)


def _run_engine_section(console: Console, index: int, section: _Section, data_dir: Path) -> bool:
    """Run one engine's ``run_demo``; a broken section is reported and the others still run. An engine
    that imports its framework when it runs (Prefect) and finds it missing is skipped, as at loading."""
    title = section.title
    console.rule(f"[bold]{index}. {title}")
    try:
        section.run_demo(console, data_dir)
    except ModuleNotFoundError as e:
        _say_skipped(console, title, section.value, e)
    except Exception as e:
        said = section.failure_hint(e) if section.failure_hint is not None else None
        if said is not None:  # e.g. Prefect's temporary server was too slow to start: say what to set
            console.print(f"[red]The {title} section failed: {escape(said)}[/]", highlight=False, soft_wrap=True)
        else:
            console.print(f"[red]The {title} section failed: {type(e).__name__}: {escape(str(e))}[/]", highlight=False)
        return False
    return True


def _run_engine_sections(console: Console, sections: Sequence[EntryPoint] | None, data_dir: Path) -> int:
    """Every engine section after the kernel's (numbered from 2); returns how many failed."""
    if sections is None:
        sections = engine_sections()
        if not sections:
            console.print(f"[yellow]No engine sections: no {SECTIONS_GROUP} entry points are installed "
                          "(reinstall chio-durable).[/]", highlight=False)
    failures, index = 0, 2
    for entry in sections:
        try:
            section = _load_section(entry)
        except ModuleNotFoundError as e:  # the engine's dependencies are not installed: say so, go on
            _say_skipped(console, entry.name, entry.value, e)
            continue
        except Exception as e:
            console.print(f"[red]The {escape(entry.name)} section failed to load ({escape(entry.value)}): "
                          f"{type(e).__name__}: {escape(str(e))}[/]", highlight=False, soft_wrap=True)
            failures += 1
            continue
        failures += 0 if _run_engine_section(console, index, section, data_dir) else 1
        index += 1
    return failures


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


def run(console: Console | None = None, data_dir: Path | None = None,
        sections: Sequence[EntryPoint] | None = None) -> int:
    """Run every demo section; return the process exit code (0 if all behaved as shown). ``sections``:
    the engine sections to run (default: the installed ``chio.demo_sections`` entry points)."""
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
    failures += _run_engine_sections(console, sections, data_dir)
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
