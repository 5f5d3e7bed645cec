"""Decoration-time checks of ``@chio_task`` / ``@chio_flow`` options: fail early, say what to pass."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from chio_sdk.models import ChioScope

from chio_durable._engine import is_client
from chio_prefect._clients import DEFAULT_SIDECAR_URL
from chio_prefect.errors import ChioPrefectConfigError

__all__ = [
    "check_callable",
    "check_common",
    "check_options",
    "check_positional",
    "check_text",
    "flow_option_names",
    "task_option_names",
]


def _prefect_options(decorator: Callable[..., Any]) -> frozenset[str]:
    return frozenset(
        name for name in inspect.signature(decorator).parameters if not name.startswith("_")
    )


def task_option_names() -> frozenset[str]:
    """The options ``prefect.task()`` accepts (read off its signature)."""
    import prefect

    return _prefect_options(prefect.task)


def flow_option_names() -> frozenset[str]:
    """The options ``prefect.flow()`` accepts (read off its signature)."""
    import prefect

    return _prefect_options(prefect.flow.__call__)


def check_callable(fn: Any, decorator: str) -> None:
    """Refuse what cannot be governed: a non-callable, or a (async) generator function."""
    if not callable(fn):
        raise ChioPrefectConfigError(
            f"@{decorator} decorates a function, got {type(fn).__name__} {fn!r}. Use it as "
            f"@{decorator}(tool_server=...) above a `def` or `async def`."
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ChioPrefectConfigError(
            f"@{decorator} does not govern generator functions ({fn.__qualname__}): the body would "
            f"start lazily, after the evaluation's context is gone. Return a list instead of yielding."
        )


def check_positional(fn: object, decorator: str, hint: str = "") -> None:
    """Refuse a positional string (``@chio_task("srv")``): the options are keyword-only."""
    if isinstance(fn, str):
        raise ChioPrefectConfigError(
            f"@{decorator} takes keyword arguments only; got the positional string {fn!r}.{hint}"
        )


def check_text(value: Any, name: str, decorator: str, example: str) -> None:
    """An optional text option must be a non-empty string."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ChioPrefectConfigError(
            f"@{decorator}({name}=...) must be a non-empty string, got {value!r}; "
            f"pass e.g. {name}={example!r}."
        )


def check_common(
    decorator: str,
    *,
    scope: Any,
    capability_id: Any,
    tool_server: Any,
    chio_client: object,
    sidecar_url: object,
) -> None:
    """Check the chio options both decorators take."""
    if scope is not None and not isinstance(scope, ChioScope):
        raise ChioPrefectConfigError(
            f"@{decorator}(scope=...) must be a chio_sdk.models.ChioScope, got "
            f"{type(scope).__name__}; pass scope=ChioScope(grants=[ToolGrant(server_id=..., "
            f"tool_name=..., operations=[Operation.INVOKE])])."
        )
    check_text(capability_id, "capability_id", decorator, "cap-research-pipeline")
    check_text(tool_server, "tool_server", decorator, "search-srv")
    _check_client(decorator, chio_client, sidecar_url)


def _check_client(decorator: str, chio_client: object, sidecar_url: object) -> None:
    if chio_client is not None and sidecar_url is not None:
        raise ChioPrefectConfigError(
            f"@{decorator} got both chio_client= and sidecar_url=; pass one: chio_client= for a "
            f"client object (ChioClient, LocalChioClient, a chio_sdk.testing mock) or sidecar_url= "
            f"for the address of a running sidecar."
        )
    if chio_client is not None and not is_client(chio_client):
        raise ChioPrefectConfigError(
            f"@{decorator}(chio_client=...) must be a Chio client with evaluate_tool_call() "
            f"(chio_sdk.ChioClient, chio_kernel.LocalChioClient or a chio_sdk.testing mock), got "
            f"{type(chio_client).__name__}."
        )
    if sidecar_url is not None and (
        not isinstance(sidecar_url, str) or not sidecar_url.startswith(("http://", "https://"))
    ):
        raise ChioPrefectConfigError(
            f"@{decorator}(sidecar_url=...) must be an http(s) URL, got {sidecar_url!r}; "
            f"pass e.g. sidecar_url={DEFAULT_SIDECAR_URL!r}."
        )


def check_options(decorator: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    """Refuse options that are neither chio's nor Prefect's, naming those that are."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ChioPrefectConfigError(
            f"@{decorator} got unknown option(s) {', '.join(unknown)}. Chio options: scope, "
            f"capability_id, tool_server, chio_client, sidecar_url; every other option is passed "
            f"to Prefect, which accepts: {', '.join(sorted(allowed))}."
        )
