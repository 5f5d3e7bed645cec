"""``chio-durable capability create|attenuate|revoke|list|show``: issue and manage capability tokens;
``parse_grant`` reads ``--grant server:tool[:Op,Op]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from chio_kernel._render import _token_dict, _token_table
from chio_kernel.cli._common import (
    CliError,
    _guarded,
    _kernel,
    _known_capability,
    _print_json,
    _print_token,
    out,
)
from chio_kernel._coerce import MAX_STORED_INT, MAX_TTL
from chio_kernel.cli._options import CursorOpt, DataDir, JsonFlag, LimitOpt, StoreOpt, print_next_cursor

__all__ = [
    "capability_attenuate",
    "capability_create",
    "capability_list",
    "capability_revoke",
    "capability_show",
    "parse_grant",
]


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
    int | None, typer.Option("--max-invocations", min=1, max=MAX_STORED_INT, help="max_invocations for every --grant.")
]


@_guarded
def capability_create(
    subject: Annotated[str, typer.Option(help="Who holds it: a hex public key or an id like agent:my-pipeline.")],
    grant: GrantOpt = None,
    scope_file: ScopeFileOpt = None,
    capability_id: Annotated[str | None, typer.Option("--id", help="Choose the capability id.")] = None,
    ttl: Annotated[int, typer.Option("--ttl", min=1, max=MAX_TTL, help="Lifetime in seconds.")] = 3600,
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


@_guarded
def capability_attenuate(
    parent_id: Annotated[str, typer.Argument(help="Id of the parent capability.")],
    grant: GrantOpt = None,
    scope_file: ScopeFileOpt = None,
    capability_id: Annotated[str | None, typer.Option("--id", help="Choose the child's id.")] = None,
    ttl: Annotated[int | None, typer.Option("--ttl", min=1, max=MAX_TTL, help="Child lifetime (capped at the parent's).")] = None,
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


@_guarded
def capability_list(limit: LimitOpt = 100, cursor: CursorOpt = None, data_dir: DataDir = None,
    store: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """List the capabilities this kernel issued, one page, oldest first, with their status
    (--json: {"token", "status", "reason"} each)."""
    kernel = _kernel(data_dir, store=store)
    page = kernel.capabilities_page(limit=limit, cursor=cursor)
    tokens = page.items
    if as_json:
        _print_json([_token_dict(kernel, t) for t in tokens])
    else:
        shown = " shown" if page.next_cursor else ""
        out.print(_token_table(kernel, tokens, f"capabilities ({len(tokens)}{shown})"))
    print_next_cursor(page.next_cursor)


@_guarded
def capability_show(
    capability_id: Annotated[str, typer.Argument(help="Capability id.")],
    data_dir: DataDir = None,
    store: StoreOpt = None,
) -> None:
    """Print one capability as JSON: {"token": ..., "status": ..., "reason": ...}."""
    kernel = _kernel(data_dir, store=store)
    _print_json(_token_dict(kernel, _known_capability(kernel, capability_id, data_dir)))
