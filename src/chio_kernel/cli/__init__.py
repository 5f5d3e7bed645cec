"""``chio-durable``: the command line of the embedded kernel (typer + rich).

Commands: ``sidecar``; ``capability create|attenuate|revoke|list|show``;
``receipts list|tail|show|verify|export``; ``approvals list|show|approve|deny|trust``;
``budgets show|settle|release|expire``; ``demo``; ``--version``. Every command takes ``--data-dir`` (default
``$CHIO_HOME`` or ``~/.chio-durable``); listing commands print tables for people and ``--json`` for
scripts. Errors are one line on stderr and a non-zero exit code, never a traceback.
See ``docs/cli.md``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from chio_kernel._render import _receipt_dict, _token_dict, _token_table, _ts, receipt_table

__all__ = ["app", "main", "parse_grant"]

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="chio-durable",
    help="Chio capability governance for durable Python workflows: the embedded kernel, its sidecar, receipts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
capability_app = typer.Typer(help="Issue, attenuate, revoke and list capability tokens.", no_args_is_help=True)
receipts_app = typer.Typer(help="List, follow, show, verify and export signed receipts.", no_args_is_help=True)
app.add_typer(capability_app, name="capability")
app.add_typer(receipts_app, name="receipts")
keys_app = typer.Typer(help="The kernel keys registered in a shared PostgreSQL store (a fleet).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# emoji=False: user text such as a grant "a:b:" must print as typed, never as an emoji code
_OUT_OPTIONS: dict[str, Any] = {"soft_wrap": False, "emoji": False}
_ERR_OPTIONS: dict[str, Any] = {"stderr": True, "soft_wrap": True, "emoji": False}
out = Console(**_OUT_OPTIONS)
err = Console(**_ERR_OPTIONS)


def _read_environment_into_consoles() -> None:
    """Set ``out`` and ``err`` up again from this invocation's environment: a Console reads $COLUMNS,
    NO_COLOR/FORCE_COLOR and whether its stream is a terminal when it is made, and these two are made
    at import, then imported by name by the command modules. One process may run the app several
    times (the tests run it in-process with typer's CliRunner); each run must see its own settings."""
    Console.__init__(out, **_OUT_OPTIONS)
    Console.__init__(err, **_ERR_OPTIONS)


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Kernel data directory (signing key, receipt store). Default: $CHIO_HOME or ~/.chio-durable.",
        show_default=False,
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="CHIO_STORE",
        help="The store: a PostgreSQL URL (postgresql://user@host/db) shared by a fleet of kernels, or "
        "'sqlite' (kernel.db in the data directory). Default: $CHIO_STORE, else sqlite.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def _guarded(fn: F) -> F:
    """Turn every failure into one clear line + exit 1 (no tracebacks for users)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except CliError as e:
            err.print(f"error: {e}", markup=False, highlight=False)
        except Exception as e:  # anything else: say what it was, in one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(f"error: {type(e).__name__}: {msg}", markup=False, highlight=False)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("chio-durable")
        except PackageNotFoundError:  # running from a source tree that was never installed
            v = "unknown (not installed)"
        sys.stdout.write(f"chio-durable {v}\n")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the installed chio-durable version and exit."),
    ] = False,
) -> None:
    """Chio capability governance for durable Python workflows: the embedded kernel, its sidecar, receipts."""
    _read_environment_into_consoles()


# --- helpers ----------------------------------------------------------------------------------


def _resolve_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir.expanduser()
    env = os.environ.get("CHIO_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".chio-durable"


def _kernel(data_dir: Path | None, *, must_exist: bool = True, store: str | None = None) -> Any:
    """Open the kernel; for read/revoke commands on the SQLite store the data dir must already exist
    (nothing to read otherwise, and a typo must not silently create a fresh kernel). With a
    PostgreSQL store the data dir holds only this host's signing key: it is created if needed."""
    path = _resolve_dir(data_dir)
    from chio_kernel import Kernel
    from chio_kernel._kernel import KernelInputError, KernelKeyMissingError, resolve_store

    try:
        dsn = resolve_store(store)
    except KernelInputError as e:
        raise CliError(str(e)) from None
    if must_exist and dsn is None and not path.exists():
        raise CliError(f"no kernel data directory at {path}: pass --data-dir DIR or set CHIO_HOME")
    try:
        return Kernel(data_dir=path, store=dsn or "sqlite")
    except KernelKeyMissingError as e:
        raise CliError(str(e)) from None


def _known_capability(kernel: Any, capability_id: str, data_dir: Path | None) -> Any:
    """The stored token of ``capability_id``; a CliError naming the data dir if there is none."""
    token = kernel.get_capability(capability_id)
    if token is None:
        raise CliError(f"no capability {capability_id!r} in {_resolve_dir(data_dir)}")
    return token


def _print_token(kernel: Any, token: Any, as_json: bool, title: str) -> None:
    """One token: JSON for scripts, else a one-row table titled ``title``."""
    if as_json:
        _print_json(_token_dict(kernel, token))
    else:
        out.print(_token_table(kernel, [token], title))


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def parse_grant(spec: str, *, max_invocations: int | None = None) -> Any:
    """``server:tool[:Op,Op]`` -> ``ToolGrant`` (operations default to ``Invoke``; ``*`` wildcards ok).

    Strict: when the part after the server has a colon, the text after the LAST colon must be a
    list of operations (``Invoke``, ``Read``...), else the grant is refused naming the valid ones;
    a typo such as ``files:read_fle:Invok`` must not grant a tool literally named ``read_fle:Invok``.
    A tool name that contains a colon is granted by giving its operations (``srv:a:b:Invoke``), or
    with a trailing colon when the name itself ends with one (``model:function:my_fn:``, the name
    pydantic-ai gives a ``FunctionModel``).
    """
    from chio_sdk.models import Operation, ToolGrant

    by_name = {o.value.lower(): o for o in Operation} | {o.name.lower(): o for o in Operation}
    valid = ", ".join(o.value for o in Operation)
    server, sep, rest = spec.partition(":")
    if not sep or not server or not rest:
        raise CliError(f"bad --grant {spec!r}: use server:tool or server:tool:Op,Op (e.g. files:read_file:Invoke)")
    tool, ops = rest, [Operation.INVOKE]
    if ":" in rest:
        head, _, tail = rest.rpartition(":")
        if tail:  # an empty tail: the tool name ends with ':' (e.g. model:function:my_fn:)
            names = [n.strip().lower() for n in tail.split(",")]
            unknown = [n for n in tail.split(",") if n.strip().lower() not in by_name]
            if unknown:
                import difflib

                hint = difflib.get_close_matches(unknown[0].strip(), [o.value for o in Operation], n=1)
                maybe = f"; did you mean {hint[0]!r}?" if hint else ""
                raise CliError(
                    f"bad --grant {spec!r}: unknown operation {unknown[0].strip()!r} after the last ':' "
                    f"(valid operations: {valid}){maybe} (a tool name that contains ':' is granted with "
                    "its operations given: server:my:tool:Invoke)"
                )
            tool, ops = head, [by_name[n] for n in names]
    if not tool:
        raise CliError(f"bad --grant {spec!r}: empty tool name")
    return ToolGrant(server_id=server, tool_name=tool, operations=ops, max_invocations=max_invocations)


def _build_scope(grants: list[str] | None, scope_file: Path | None, max_invocations: int | None) -> Any:
    from chio_sdk.models import ChioScope
    from pydantic import ValidationError

    scope = ChioScope()
    if scope_file is not None:
        try:
            raw = json.loads(scope_file.read_text(encoding="utf-8"))
        except OSError as e:
            raise CliError(f"cannot read --scope-file {scope_file}: {e.strerror or e}") from None
        except ValueError as e:
            raise CliError(f"--scope-file {scope_file} is not JSON: {e}") from None
        from chio_kernel._kernel import KernelInputError, check_scope_fields

        try:
            # the kernel's check: pydantic would drop a misspelt field and issue a wider scope
            check_scope_fields(raw, f"--scope-file {scope_file}")
            from chio_kernel._coerce import normalize_scope_constraints

            raw = normalize_scope_constraints(raw, f"--scope-file {scope_file}")  # upstream's approval shape
        except KernelInputError as e:
            raise CliError(str(e)) from None
        try:
            scope = ChioScope.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise CliError(f"--scope-file {scope_file} is not a ChioScope: {loc}: {first.get('msg')}") from None
    for spec in grants or []:
        scope.grants.append(parse_grant(spec, max_invocations=max_invocations))
    if not (scope.grants or scope.resource_grants or scope.prompt_grants):
        raise CliError("empty scope: pass at least one --grant server:tool[:Op,Op] or --scope-file FILE")
    return scope


def _parse_rate_limit(spec: str | None) -> tuple[int, float] | None:
    if spec is None:
        return None
    calls, sep, per = spec.partition("/")
    try:
        n, s = int(calls), float(per) if sep else 1.0
    except ValueError:
        raise CliError(f"bad --rate-limit {spec!r}: use CALLS/SECONDS, e.g. 10/60") from None
    if n <= 0 or s <= 0:
        raise CliError(f"bad --rate-limit {spec!r}: both numbers must be positive")
    return n, s


# --- sidecar ----------------------------------------------------------------------------------


@app.command()
@_guarded
def sidecar(
    host: Annotated[str, typer.Option(help="Address to bind. Non-loopback requires --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 9090,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CHIO_SIDECAR_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every request (env CHIO_SIDECAR_TOKEN).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            envvar="CHIO_SIDECAR_HEADER_TIMEOUT",
            min=0.1,
            help="Close a connection that has not sent complete request headers within this many seconds.",
        ),
    ] = 10.0,
) -> None:
    """Serve the kernel over HTTP for chio_sdk.ChioClient (loopback by default)."""
    from chio_kernel._postgres_store import KernelKeyRetiredError
    from chio_kernel._kernel import KernelKeyMissingError
    from chio_kernel.sidecar import SidecarConfigError, check_bind, serve

    try:
        check_bind(host, token)
    except SidecarConfigError as e:
        raise CliError(str(e)) from None
    path = _resolve_dir(data_dir)
    if store is not None:  # the sidecar's Kernel reads $CHIO_STORE
        os.environ["CHIO_STORE"] = store

    def ready(kernel: Any) -> None:
        auth = "bearer token required" if token else "no auth (loopback only)"
        err.print(
            f"chio-durable sidecar on http://{host}:{port}  data dir {path}  "
            f"kernel key {kernel.public_key_hex[:16]}…  {auth}",
            markup=False,
            highlight=False,
        )

    try:
        serve(host, port, data_dir=path, token=token, log_level=log_level, on_ready=ready,
              header_timeout=header_timeout)
    except (SidecarConfigError, KernelKeyMissingError, KernelKeyRetiredError) as e:
        raise CliError(str(e)) from None


# --- capability -------------------------------------------------------------------------------

GrantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grant",
        metavar="SERVER:TOOL[:OPS]",
        help="server:tool[:Op,Op] (repeatable; operations default to Invoke; '*' wildcards).",
    ),
]
ScopeFileOpt = Annotated[
    Path | None, typer.Option("--scope-file", help="A ChioScope as JSON (grants with constraints, budgets...).")
]
MaxInvOpt = Annotated[
    int | None, typer.Option("--max-invocations", min=1, help="max_invocations for every --grant.")
]


@capability_app.command("create")
@_guarded
def capability_create(
    subject: Annotated[str, typer.Option(help="Who holds it: a hex public key or an id like agent:my-pipeline.")],
    grant: GrantOpt = None,
    scope_file: ScopeFileOpt = None,
    capability_id: Annotated[str | None, typer.Option("--id", help="Choose the capability id.")] = None,
    ttl: Annotated[int, typer.Option("--ttl", min=1, help="Lifetime in seconds.")] = 3600,
    max_invocations: MaxInvOpt = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(
            "--rate-limit",
            metavar="CALLS/SECONDS",
            help="At most CALLS allowed calls in any sliding window of SECONDS seconds, for the whole "
            "capability and every capability attenuated from it (e.g. 10/60 = 10 calls per minute; "
            "CALLS alone means per 1 second). Denied calls do not count.",
        ),
    ] = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue a signed capability token."""
    scope = _build_scope(grant, scope_file, max_invocations)
    kernel = _kernel(data_dir, must_exist=False, store=store)
    token = kernel.create_capability(
        subject=subject,
        scope=scope,
        ttl_seconds=ttl,
        capability_id=capability_id,
        rate_limit=_parse_rate_limit(rate_limit),
    )
    _print_token(kernel, token, as_json, "capability issued")


@capability_app.command("attenuate")
@_guarded
def capability_attenuate(
    parent_id: Annotated[str, typer.Argument(help="Id of the parent capability.")],
    grant: GrantOpt = None,
    scope_file: ScopeFileOpt = None,
    capability_id: Annotated[str | None, typer.Option("--id", help="Choose the child's id.")] = None,
    ttl: Annotated[int | None, typer.Option("--ttl", min=1, help="Child lifetime (capped at the parent's).")] = None,
    max_invocations: MaxInvOpt = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Derive a child capability whose scope is a subset of its parent's."""
    scope = _build_scope(grant, scope_file, max_invocations)
    kernel = _kernel(data_dir, store=store)
    _known_capability(kernel, parent_id, data_dir)
    child = kernel.attenuate_capability(parent_id, scope, ttl_seconds=ttl, capability_id=capability_id)
    _print_token(kernel, child, as_json, "capability attenuated")


@capability_app.command("revoke")
@_guarded
def capability_revoke(
    capability_id: Annotated[str, typer.Argument(help="Id of the capability to revoke (children too).")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a capability and every capability derived from it."""
    kernel = _kernel(data_dir, store=store)
    _known_capability(kernel, capability_id, data_dir)
    revoked = list(kernel.revoke_capability(capability_id))
    if as_json:
        _print_json({"revoked": revoked})
    else:
        out.print(f"revoked {len(revoked)} capabilit{'y' if len(revoked) == 1 else 'ies'}: {', '.join(revoked)}",
                  markup=False, highlight=False)


@capability_app.command("list")
@_guarded
def capability_list(data_dir: DataDir = None,
    store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """List the capabilities this kernel issued, with their status (--json: {"token", "status", "reason"} each)."""
    kernel = _kernel(data_dir, store=store)
    tokens = kernel.list_capabilities()
    if as_json:
        _print_json([_token_dict(kernel, t) for t in tokens])
    else:
        out.print(_token_table(kernel, tokens, f"capabilities ({len(tokens)})"))


@capability_app.command("show")
@_guarded
def capability_show(
    capability_id: Annotated[str, typer.Argument(help="Capability id.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Print one capability as JSON: {"token": ..., "status": ..., "reason": ...}."""
    kernel = _kernel(data_dir, store=store)
    _print_json(_token_dict(kernel, _known_capability(kernel, capability_id, data_dir)))


# --- receipts ---------------------------------------------------------------------------------


@receipts_app.command("show")
@_guarded
def receipts_show(
    receipt_id: Annotated[str, typer.Argument(help="Receipt id (rcpt-...).")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Show one receipt and whether its signature verifies."""
    kernel = _kernel(data_dir, store=store)
    receipt = kernel.get_receipt(receipt_id)
    if receipt is None:
        raise CliError(f"no receipt {receipt_id!r} in {_resolve_dir(data_dir)}")
    data = _receipt_dict(receipt)
    if as_json:
        _print_json(data)
        return
    ok = kernel.verify_receipt(receipt)
    out.print_json(json.dumps(data, ensure_ascii=False))
    out.print("signature: " + ("[green]valid[/]" if ok else "[red]INVALID[/]"))


@receipts_app.command("verify")
@_guarded
def receipts_verify(data_dir: DataDir = None,
    store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Walk the whole receipt chain: every signature and every hash link. Exit 1 at the first break."""
    kernel = _kernel(data_dir, store=store)
    started = time.perf_counter()
    report = kernel.verify_chain()
    took = time.perf_counter() - started
    data = {
        "ok": bool(report.ok),
        "count": report.count,
        "first_broken_index": report.first_broken_index,
        "reason": report.reason,
    }
    if as_json:
        _print_json(data)
    elif report.ok:
        out.print(f"[green]chain ok[/]: {report.count} receipts, signatures and hash links verified ({took:.2f}s)")
    if not report.ok:
        err.print(
            f"error: receipt chain broken at index {report.first_broken_index}: {report.reason}",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1)


@receipts_app.command("export")
@_guarded
def receipts_export(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to FILE instead of stdout.")] = None,
    capability: Annotated[str | None, typer.Option("--capability", help="Only receipts of this capability.")] = None,
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Export receipts as JSON lines (one receipt per line, store order)."""
    kernel = _kernel(data_dir, store=store)
    receipts = kernel.list_receipts(capability_id=capability)
    lines = (
        json.dumps(_receipt_dict(r), ensure_ascii=False, separators=(",", ":")) + "\n"
        for r in receipts
    )
    if out_file is None:
        for line in lines:
            sys.stdout.write(line)
        sys.stdout.flush()
        return
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)
    tmp.replace(out_file)  # never leave a half-written export behind
    err.print(f"exported {len(receipts)} receipts to {out_file}", markup=False, highlight=False)


# --- keys (a fleet sharing a PostgreSQL store) ------------------------------------------------


def _fleet_kernel(data_dir: Path | None, store: str | None) -> Any:
    kernel = _kernel(data_dir, must_exist=False, store=store)
    if not hasattr(kernel, "registered_keys"):
        raise CliError("kernel keys are registered in a PostgreSQL store only: pass --store postgresql://... "
                       "(or set CHIO_STORE)")
    return kernel


@keys_app.command("list")
@_guarded
def keys_list(data_dir: DataDir = None, store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Every kernel key registered in the store: which host/data dir, since when, retired or active."""
    from rich.table import Table

    keys = _fleet_kernel(data_dir, store).registered_keys()
    if as_json:
        _print_json(keys)
        return
    table = Table(title="kernel keys")
    for col in ("public key", "host:data dir", "registered", "status"):
        table.add_column(col)
    for k in keys:
        status = f"retired {_ts(int(k['retired_at']))} ({k['retired_reason']})" if k["retired_at"] else "active"
        mine = " (this kernel)" if k["this_kernel"] else ""
        # the label is host:data dir, user text: a Text cell is never read as markup
        table.add_row(k["public_key"][:16] + "…" + mine, Text(str(k["label"])), _ts(int(k["registered_at"])),
                      Text(status))
    out.print(table)


@keys_app.command("retire")
@_guarded
def keys_retire(
    public_key: Annotated[str, typer.Argument(help="The 64-hex-char public key to retire.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the store).")] = "retired",
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Retire a kernel key: it signs nothing more and capabilities it issued deny on every kernel;
    receipts it signed before still verify."""
    _fleet_kernel(data_dir, store).retire_key(public_key, reason)
    out.print(f"retired kernel key {public_key[:16]}…", markup=False, highlight=False)


# --- demo -------------------------------------------------------------------------------------


@app.command()
@_guarded
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Kernel data directory for the demo (default: a fresh temp directory)."),
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Show governance end to end on the embedded kernel (no API key, no services)."""
    from chio_kernel._demo import run

    if store is not None:  # the demo's kernels read $CHIO_STORE
        os.environ["CHIO_STORE"] = store

    code = run(out, data_dir)
    if code:
        raise typer.Exit(code)


# after the definitions above, which it imports
from chio_kernel.cli import _approvals as _approvals  # noqa: E402,F401  (registers `approvals`)

# budgets (money holds): chio_kernel.cli._budgets, which imports the helpers above
from chio_kernel.cli._budgets import budgets_app  # noqa: E402

app.add_typer(budgets_app, name="budgets")


def main() -> None:
    """Entry point for ``python -m chio_kernel.cli``."""
    app()


# receipts list / tail live in their own module; importing it registers them on receipts_app
from chio_kernel.cli import _receipts as _receipts  # noqa: E402,F401
