"""Evaluate one governed call against any Chio client, fail closed.

The engine layers (Prefect, Temporal, the agent capability) accept three kinds of client
interchangeably: the real ``chio_sdk.ChioClient`` talking to a sidecar, our in-process
``chio_kernel.LocalChioClient``, and the ``chio_sdk.testing`` mocks. This module is the one place
that knows their differences:

* only the kernel speaks idempotency keys: ``LocalChioClient`` and ``chio_kernel.SidecarClient`` (a
  ``ChioClient`` for the sidecar) take ``idempotency_key=`` (and ``cost=``); a stock
  ``chio_sdk.ChioClient`` has no public way to send them, so it is called through its public
  ``evaluate_tool_call`` without a key (a retry then gets a fresh receipt; warned once per client)
  and a call with a ``cost`` is refused rather than evaluated without its cost; a mock ignores both;
* a mock (or an upstream sidecar answering HTTP 403) raises ``ChioDeniedError`` on deny, where our
  kernel returns a signed deny receipt — both become a denied :class:`Evaluation`;
* a remote receipt must answer the call asked (capability, server, tool; and, when a real kernel
  signed it, ``action.parameter_hash`` = sha256 of the canonical JSON of the parameters sent);
* anything that is not a decision (connection refused, timeout, 5xx, a malformed answer, a receipt
  for another call) raises :class:`KernelUnavailable` (retryable), so the governed body never runs;
* a request the kernel refuses as malformed (embedded: ``KernelInputError``; remote: HTTP 4xx other
  than 403/408/425/429; parameters that have no JSON form) raises :class:`KernelRejected` — not
  retryable, the same input would be refused again — and the governed body does not run either.

Async ``httpx`` clients are bound to the event loop that opened their connections, while Prefect
runs sync tasks in worker threads and async tasks on its own loop. Every call to a remote client is
therefore driven on one private background loop (:func:`run_on_kernel_loop`); the embedded kernel
is called directly, with no loop hop at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import threading
import warnings
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chio_sdk.client import ChioClient
from chio_sdk.errors import ChioDeniedError
from chio_sdk.models import ChioReceipt, MonetaryAmount
from pydantic import ValidationError

__all__ = [
    "Evaluation",
    "KernelRejected",
    "KernelUnavailable",
    "NO_IDEMPOTENCY_WARNING",
    "await_on_kernel_loop",
    "client_url",
    "evaluate",
    "evaluate_sync",
    "idempotency_key",
    "run_on_kernel_loop",
    "wire_parameter_hash",
]

T = TypeVar("T")


class _NoDecision(Exception):
    """Shared shape of the two "the kernel gave no decision" errors: where, and why."""

    _message: str

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(self._message.format(url=url, detail=detail))
        self.url = url
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.detail))


class KernelUnavailable(_NoDecision, RuntimeError):
    """The kernel could not decide: the governed call must not run.

    Retryable: the same call may succeed once the sidecar is reachable again.
    """

    _message = (
        "Chio kernel at {url} could not evaluate the call ({detail}); the call was not run. "
        "Start the sidecar (`chio-durable sidecar`) or pass chio_client=LocalChioClient()."
    )


class KernelRejected(_NoDecision, ValueError):
    """The kernel refused the *request* as malformed: the governed call was not run.

    Not retryable: the same input would be refused again. ``detail`` carries the kernel's own
    message (e.g. ``parameters are not JSON-able: ... NaN ...``).
    """

    _message = (
        "Chio kernel at {url} rejected the request as malformed ({detail}); the call was not run. "
        "Retrying the same input will not help: fix the call's parameters or identifiers."
    )


@dataclass(frozen=True)
class Evaluation:
    """The kernel's answer for one call, normalised across client kinds."""

    allowed: bool
    receipt_id: str | None
    capability_id: str
    tool_server: str
    tool_name: str
    guard: str | None = None
    reason: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    receipt: ChioReceipt | None = None
    timestamp: int | None = None

    @classmethod
    def from_receipt(cls, receipt: ChioReceipt) -> Evaluation:
        return cls(
            allowed=receipt.decision.is_allowed,
            receipt_id=receipt.id,
            capability_id=receipt.capability_id,
            tool_server=receipt.tool_server,
            tool_name=receipt.tool_name,
            guard=receipt.decision.guard,
            reason=receipt.decision.reason,
            decision=receipt.decision.model_dump(exclude_none=True),
            receipt=receipt,
            timestamp=receipt.timestamp,
        )


def idempotency_key(*parts: object) -> str:
    """A stable key for one governed call position: sha256 over its parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return "idem-" + digest.hexdigest()


def client_url(client: Any) -> str:
    """Where a client sends its evaluations, for error messages and events.

    Its public ``base_url`` (``SidecarClient``, ``LocalChioClient``); a stock ``chio_sdk.ChioClient``
    does not expose its URL, so it is named by its type.
    """
    value = getattr(client, "base_url", None)
    if isinstance(value, str):
        return value
    if isinstance(client, ChioClient):
        return "chio_sdk.ChioClient"
    value = getattr(client, "DEFAULT_BASE_URL", None)  # a mock says where it stands in for
    return value if isinstance(value, str) else type(client).__name__


# --- the background loop for remote clients --------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _kernel_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="chio-kernel-loop", daemon=True).start()
        return _loop


def run_on_kernel_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the private kernel loop and block this thread until it is done.

    Safe from any thread that is not the kernel loop itself (sync Prefect tasks run in worker
    threads; the caller's own event loop, if any, is never blocked by the network call).
    """
    return asyncio.run_coroutine_threadsafe(coro, _kernel_loop()).result()


async def _await_on_kernel_loop(coro: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, _kernel_loop()))


# Public name for layers that make other remote calls (create/attenuate/fetch capabilities) with the
# same httpx client evaluations use: it must stay on the one loop that owns its connections.
await_on_kernel_loop = _await_on_kernel_loop


# --- evaluation -------------------------------------------------------------------------------


def _embedded_kernel(client: Any) -> Any | None:
    """The in-process kernel behind a ``LocalChioClient``, if that is what ``client`` is."""
    kernel = getattr(client, "kernel", None)
    return kernel if kernel is not None and hasattr(kernel, "evaluate") else None


def _evaluate_parameters(client: Any) -> frozenset[str]:
    """The keyword parameters of ``client.evaluate_tool_call`` (empty if it cannot be inspected)."""
    try:
        return frozenset(inspect.signature(client.evaluate_tool_call).parameters)
    except (TypeError, ValueError, AttributeError):
        return frozenset()


_warned_no_idempotency: weakref.WeakSet[Any] = weakref.WeakSet()

NO_IDEMPOTENCY_WARNING = (
    "chio: this chio_sdk.ChioClient cannot send idempotency keys (its public evaluate_tool_call has no "
    "such field), so a retried flow/workflow gets fresh receipts, misses the receipt-keyed cache and is "
    "charged again. Use chio_kernel.SidecarClient(url) (a ChioClient) to keep retries idempotent."
)


async def _remote_evaluate(
    client: Any,
    body: dict[str, Any],
    idem: str | None,
    cost: MonetaryAmount | None,
) -> ChioReceipt:
    accepted = _evaluate_parameters(client)
    if "idempotency_key" in accepted:  # SidecarClient, or any client speaking the kernel's extras
        extras: dict[str, Any] = {"idempotency_key": idem}
        if cost is not None and "cost" in accepted:
            extras["cost"] = cost
        receipt: ChioReceipt = await client.evaluate_tool_call(**body, **extras)
        return receipt
    if isinstance(client, ChioClient) and idem is not None and client not in _warned_no_idempotency:
        _warned_no_idempotency.add(client)
        warnings.warn(NO_IDEMPOTENCY_WARNING, RuntimeWarning, stacklevel=2)
    receipt = await client.evaluate_tool_call(**body)
    return receipt


# 4xx answers that say "not now" rather than "not this request": still retryable.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_KERNEL_KEY = re.compile(r"[0-9a-f]{64}")


def _http_status(err: BaseException) -> int | None:
    """The HTTP status of a ``chio_sdk`` error raised for a non-2xx answer (``code="HTTP_<n>"``)."""
    code = getattr(err, "code", None)
    if isinstance(code, str) and code.startswith("HTTP_") and code[5:].isdigit():
        return int(code[5:])
    return None


def wire_parameter_hash(parameters: dict[str, Any]) -> str:
    """The ``action.parameter_hash`` a Chio kernel computes for ``parameters`` sent over JSON.

    sha256 of the RFC 8785 canonical JSON (``chio_kernel.canonical``) of the parameters as the kernel
    receives them (after the JSON round trip: tuples become lists, non-string keys strings).
    Raises ``ValueError`` when they have no JSON form (NaN, infinities...), as the kernel would.
    """
    from chio_kernel.canonical import canonical_json  # lazy: keeps `import chio_durable` light

    try:
        return hashlib.sha256(canonical_json(parameters)).hexdigest()
    except ValueError as err:
        first = err  # the kernel's own words, if the wire form does not help either
    try:
        wire = json.loads(json.dumps(parameters, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise ValueError(f"parameters are not JSON-able: {first}") from None
    return hashlib.sha256(canonical_json(wire)).hexdigest()


def _check_answers_call(
    receipt: ChioReceipt, body: dict[str, Any], expected_hash: str | None, url: str
) -> None:
    """Fail closed unless a remote receipt answers the very call that was asked.

    ``parameter_hash`` is checked for receipts signed by a real kernel (``kernel_key`` = 64 hex
    chars, an Ed25519 public key): ``chio_sdk.testing`` mocks hash with their own (ASCII-escaped)
    JSON and sign with a placeholder key, so their hash is not the kernel's.
    """
    mismatches = [
        f"{name} {getattr(receipt, name)!r} != {body[name]!r}"
        for name in ("capability_id", "tool_server", "tool_name")
        if getattr(receipt, name) != body[name]
    ]
    if (
        expected_hash is not None
        and isinstance(receipt.kernel_key, str)
        and _KERNEL_KEY.fullmatch(receipt.kernel_key)
        and receipt.action.parameter_hash != expected_hash
    ):
        mismatches.append(f"action.parameter_hash {receipt.action.parameter_hash!r} != {expected_hash!r}")
    if mismatches:
        raise KernelUnavailable(
            url, f"receipt {receipt.id} does not answer the call that was asked: {'; '.join(mismatches)}"
        )


def _denied_by_error(err: ChioDeniedError, body: dict[str, Any]) -> Evaluation:
    decision = {"verdict": "deny", "guard": err.guard, "reason": err.reason or err.message}
    return Evaluation(
        allowed=False,
        receipt_id=err.receipt_id,
        capability_id=body["capability_id"],
        tool_server=body["tool_server"],
        tool_name=body["tool_name"],
        guard=err.guard,
        reason=err.reason or err.message,
        decision={k: v for k, v in decision.items() if v is not None},
    )


async def _decide_remotely(
    client: Any,
    body: dict[str, Any],
    idem: str | None,
    cost: MonetaryAmount | None,
) -> Evaluation:
    url = client_url(client)
    try:
        expected_hash: str | None = wire_parameter_hash(body["parameters"])
    except ValueError as err:
        if isinstance(client, ChioClient):  # the kernel would refuse it: do not even send it
            raise KernelRejected(url, str(err)) from err
        expected_hash = None  # a mock decides on its own terms
    except Exception:  # noqa: BLE001 - not a dict at all: the client/kernel says what is wrong
        expected_hash = None
    if cost is not None and isinstance(client, ChioClient) and "cost" not in _evaluate_parameters(client):
        # Evaluating without the cost would skip the budget: refuse instead (fail closed).
        raise KernelRejected(
            url, "a stock chio_sdk.ChioClient cannot send a cost; use chio_kernel.SidecarClient(url)"
        )
    try:
        receipt = await _remote_evaluate(client, body, idem, cost)
    except ChioDeniedError as err:
        return _denied_by_error(err, body)
    except Exception as err:  # unreachable, timed out, 4xx/5xx, malformed answer: not a decision
        status = _http_status(err)
        if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise KernelRejected(url, str(err)) from err
        raise KernelUnavailable(url, f"{type(err).__name__}: {err}") from err
    # A receipt for another call (a misrouting proxy, a replayed answer) is not a decision on this one.
    _check_answers_call(receipt, body, expected_hash, url)
    return Evaluation.from_receipt(receipt)


async def evaluate(
    client: Any,
    *,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idempotency_key: str | None = None,
    cost: MonetaryAmount | None = None,
) -> Evaluation:
    """Ask the kernel behind ``client`` about one call; raise :class:`KernelUnavailable` if it can't say."""
    decided = _decide(client, capability_id, tool_server, tool_name, parameters, idempotency_key, cost)
    return decided if isinstance(decided, Evaluation) else await _await_on_kernel_loop(decided)


def evaluate_sync(
    client: Any,
    *,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idempotency_key: str | None = None,
    cost: MonetaryAmount | None = None,
) -> Evaluation:
    """:func:`evaluate` for sync callers: inline for the embedded kernel, else on the kernel loop."""
    decided = _decide(client, capability_id, tool_server, tool_name, parameters, idempotency_key, cost)
    return decided if isinstance(decided, Evaluation) else run_on_kernel_loop(decided)


def _decide(
    client: Any,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idem: str | None,
    cost: MonetaryAmount | None,
) -> Evaluation | Coroutine[Any, Any, Evaluation]:
    """The embedded kernel's decision, made inline; else the remote decision, still to be awaited
    on the kernel loop (by :func:`evaluate` / :func:`evaluate_sync`, each its own way)."""
    kernel = _embedded_kernel(client)
    if kernel is not None:
        return _evaluate_embedded(kernel, capability_id, tool_server, tool_name, parameters, idem, cost)
    body = {
        "capability_id": capability_id,
        "tool_server": tool_server,
        "tool_name": tool_name,
        "parameters": parameters,
    }
    return _decide_remotely(client, body, idem, cost)


def _evaluate_embedded(
    kernel: Any,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    parameters: dict[str, Any],
    idem: str | None,
    cost: MonetaryAmount | None,
) -> Evaluation:
    try:
        receipt = kernel.evaluate(
            capability_id, tool_server, tool_name, parameters, idempotency_key=idem, cost=cost
        )
    except ValueError as err:
        if isinstance(err, ValidationError):  # our receipt model, not the caller's input
            raise KernelUnavailable(client_url(kernel), f"{type(err).__name__}: {err}") from err
        # KernelInputError (a ValueError): the kernel refuses this input; retrying won't change that
        raise KernelRejected(client_url(kernel), str(err)) from err
    except Exception as err:  # the kernel could not decide (disk full, locked store...)
        raise KernelUnavailable(client_url(kernel), f"{type(err).__name__}: {err}") from err
    return Evaluation.from_receipt(receipt)
