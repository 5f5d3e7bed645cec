"""What every command module shares: the consoles ``out`` / ``err``, ``CliError`` and ``_guarded``
(one error line, exit 1), opening the kernel of ``--data-dir`` / ``--store``, printing JSON."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from chio_kernel._errors import ChioKernelError
from chio_kernel._render import _token_dict, _token_table
from chio_kernel._secrets import mask_secrets
from chio_kernel.signing import KEY_FILE

__all__ = [
    "CliError",
    "err",
    "out",
]

F = TypeVar("F", bound=Callable[..., Any])

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


def _guarded(fn: F) -> F:
    """Turn every failure into one clear line + exit 1 (no tracebacks for users)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opened = len(_OPENED)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except CliError as e:
            err.print(mask_secrets(f"error: {e}"), markup=False, highlight=False)
        except (ChioKernelError, NotADirectoryError) as e:  # written as sentences for people: no type name
            err.print(mask_secrets(f"error: {_one_line(e)}"), markup=False, highlight=False)
        except OSError as e:  # a path the system refused: say which, and why, in words
            err.print(mask_secrets(f"error: {_os_error(e)}"), markup=False, highlight=False)
        except Exception as e:  # anything else: say what it was, in one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            err.print(mask_secrets(f"error: {type(e).__name__}: {msg}"), markup=False, highlight=False)
        finally:
            _close_opened(opened)
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


_OPENED: list[Any] = []
"""The kernels this command opened (``_kernel``), closed when it ends."""


def _close_opened(since: int) -> None:
    """Close the kernels opened since ``since`` (their store connections and checkpoint cutters)."""
    while len(_OPENED) > since:
        with contextlib.suppress(Exception):  # the command's answer stands; exit would close it anyway
            _OPENED.pop().close()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _os_error(e: OSError) -> str:
    where = f" ({str(e.filename)[:80]!r}{'…' if len(str(e.filename)) > 80 else ''})" if e.filename else ""
    return f"the system refused a path{where}: {e.strerror or e}; pass a path that can be used here"


def _resolve_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        if str(data_dir).strip() in ("", "."):
            raise CliError("--data-dir is empty (or '.'): name the kernel's data directory, e.g. --data-dir "
                           "~/.chio-durable, or --data-dir \"$PWD\" for this one")
        return data_dir.expanduser()
    env = os.environ.get("CHIO_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".chio-durable"


def _kernel(data_dir: Path | None, *, must_exist: bool = True, store: str | None = None) -> Any:
    """Open the kernel; for read/revoke commands (``must_exist``) the data dir must already exist
    (nothing to read otherwise, and a typo must not silently create a fresh kernel); on a PostgreSQL
    store it must hold this host's key, since a new one would be minted and registered in the fleet.
    Writing commands create the data dir (and, on PostgreSQL, register its new key)."""
    path = _resolve_dir(data_dir)
    from chio_kernel import Kernel
    from chio_kernel._kernel import KernelInputError, KernelKeyMissingError, resolve_store

    try:
        dsn = resolve_store(store)
    except KernelInputError as e:
        raise CliError(str(e)) from None
    if must_exist and dsn is None and not path.exists():
        raise CliError(f"no kernel data directory at {path}: pass --data-dir DIR or set CHIO_HOME")
    if must_exist and dsn is not None and not (path / KEY_FILE).is_file():
        # on a fleet store a new data dir would mint a key and register it: read and revoke commands make no identity
        raise CliError(
            f"no kernel key at {path / KEY_FILE}: pass --data-dir the data directory of a kernel of this store "
            "(or set CHIO_HOME); this command creates no data directory and registers no key"
        )
    try:
        kernel = Kernel(data_dir=path, store=dsn or "sqlite")
    except KernelKeyMissingError as e:
        raise CliError(str(e)) from None
    except PermissionError as e:
        raise CliError(_no_access(path, e)) from None
    _OPENED.append(kernel)
    return kernel


def _no_access(path: Path, e: PermissionError) -> str:
    """The sentence for a data directory (or its key or store) this OS user may not use."""
    where = e.filename or path
    return (
        f"permission denied on {where}: the kernel data directory {path} belongs to another OS user. The CLI "
        "acts on the store as the kernel's operator, so only the user that owns the data directory can run it "
        "(e.g. `sudo -u chio chio-durable ...`); a workload reaches the kernel through the sidecar with its "
        "credential (docs/security.md)"
    )


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
