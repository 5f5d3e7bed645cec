"""``KernelTransport``: how a layer reaches the kernel, chosen ONCE when the layer is built.

Three implementations, picked by :func:`as_transport` from the client a user hands in:

* :class:`EmbeddedTransport` — ``chio_kernel.LocalChioClient`` or a ``chio_kernel.Kernel``: the
  kernel is called inline on the caller's thread (no loop hop); ``KernelInputError`` is a
  :class:`KernelRejected`, any other failure a :class:`KernelUnavailable`.
* :class:`HttpTransport` — a ``chio_sdk.ChioClient`` over HTTP. Our ``chio_kernel.SidecarClient``
  (an ``httpx.AsyncClient`` speaking the Chio wire) sends idempotency keys and costs; a stock
  ``ChioClient`` has no public way to, so it is called through its public ``evaluate_tool_call``
  without a key (warned once per client) and a call with a cost is refused. A remote receipt must
  answer the call asked (capability, server, tool, and the parameter hash the kernel signed).
  ``GovernedCall.metadata`` (the run context) is sent by ``SidecarClient`` only; a stock
  ``ChioClient`` (and a mock) has no field for it, so it is dropped there (the receipt has none).
* :class:`MockTransport` — the ``chio_sdk.testing`` mocks (and any other object with
  ``evaluate_tool_call``): no keys, a ``ChioDeniedError`` is a deny, its own hashes are not checked.

Every transport also settles and releases budget holds (``settle`` / ``release`` and their
``_sync`` forms; docs/budgets.md): the embedded kernel and ``SidecarClient`` return the signed
receipt, a mock or a stock ``ChioClient`` (which cannot declare a cost, so never holds) returns None.

Every transport can register what wakes a run waiting for a person (``register_approval_wake`` and
its ``_sync`` form; docs/approvals.md, "Waking the run"): True when the kernel took it, False when
the client cannot (a mock, a stock ``ChioClient``, a sidecar without the route), so the engine falls
back to its own wake-up command.

Remote transports drive their client on the one private kernel loop (``_loop``). Anything that is
not a decision raises :class:`KernelUnavailable` (retryable) or :class:`KernelRejected` (a
malformed request, not retryable): the governed body never runs.
"""

from __future__ import annotations

import asyncio
import re
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, runtime_checkable

from chio_sdk.client import ChioClient
from chio_sdk.errors import ChioDeniedError
from chio_sdk.models import ChioReceipt, MonetaryAmount
from pydantic import ValidationError

from chio_durable._call import GovernedCall
from chio_durable._decision import Evaluation
from chio_durable._errors import HoldConflict, KernelRejected, KernelUnavailable
from chio_durable._loop import await_on_kernel_loop, run_on_kernel_loop
from chio_durable._telemetry import enabled, record_budgets, traced_evaluation, traced_hold
from chio_kernel import HoldConflictError, Kernel, LocalChioClient, SidecarClient
from chio_kernel._telemetry import otel

if TYPE_CHECKING:
    from chio_sdk.testing import MockChioClient

__all__ = [
    "NO_IDEMPOTENCY_WARNING",
    "ChioClientLike",
    "EmbeddedTransport",
    "HttpTransport",
    "KernelTransport",
    "MockTransport",
    "TransportSlot",
    "as_transport",
    "client_url",
    "is_client",
]

T = TypeVar("T")


@runtime_checkable
class KernelTransport(Protocol):
    """How a layer reaches the kernel: evaluate a :class:`GovernedCall`, or run another client call."""

    @property
    def client(self) -> Any:
        """The client object this transport drives (what the user passed)."""

    @property
    def url(self) -> str:
        """Where evaluations go, for messages and events (``embedded:<dir>``, the sidecar URL...)."""

    @property
    def sends_idempotency_keys(self) -> bool:
        """Whether idempotency keys reach the kernel (a retry then gets its receipt back)."""

    async def evaluate(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        """Ask the kernel for its decision on one call.

        Args:
            call: the governed call to decide.
            capability_id: the capability it runs under.
            idempotency_key: the same key re-evaluated returns the same receipt (a retry is charged once).
            cost: the call's declared cost, held against the grant's budget (docs/budgets.md).
            approval_id: re-evaluate a call that was pending (``Evaluation.pending``) under the approval a
                person gave; only the kernel's allow of THAT re-evaluation authorises the call
                (docs/approvals.md).

        Returns:
            The kernel's :class:`Evaluation` (allow, deny or pending).

        Raises:
            KernelUnavailable: the kernel could not be reached or gave no decision.
            KernelRejected: the kernel refused the request (e.g. a transport that cannot send
                ``approval_id``).
        """

    def evaluate_sync(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        """Ask the kernel for its decision, from sync code (any thread but the kernel loop).

        Args:
            call: the governed call to decide.
            capability_id: the capability it runs under.
            idempotency_key: as :meth:`evaluate`.
            cost: as :meth:`evaluate`.
            approval_id: as :meth:`evaluate`.

        Returns:
            The kernel's :class:`Evaluation`.

        Raises:
            KernelUnavailable: as :meth:`evaluate`.
            KernelRejected: as :meth:`evaluate`.
        """

    async def run(self, make_call: Callable[[], Awaitable[T]]) -> T:
        """Await another call on the client (mint, attenuate, fetch) where its connections live.

        Args:
            make_call: makes the coroutine to await, e.g. ``lambda: client.create_capability(...)``.

        Returns:
            What that coroutine returns.
        """

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        """Settle the budget hold of an allow with the actual cost (docs/budgets.md).

        Args:
            receipt_id: the allow receipt that placed the hold.
            actual_cost: what the call cost, in the hold's currency (minor units).
            op_id: names this operation (:func:`settle_op_id`): the same ``op_id`` again returns the same
                receipt.

        Returns:
            The kernel's signed settle receipt, or None where the client holds no budgets
            (``MockTransport``; a stock ``ChioClient``, which cannot declare a cost).

        Raises:
            HoldConflict: the hold was already closed by another operation.
            KernelRejected: no hold, or bad input.
            KernelUnavailable: the kernel could not be reached (retry with the same ``op_id``).
        """

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        """Free the whole budget hold of an allow (compensation).

        Args:
            receipt_id: the allow receipt that placed the hold.
            op_id: names this operation (:func:`release_op_id`).
            reason: why (recorded and signed).

        Returns:
            The kernel's signed release receipt, or None where the client holds no budgets.

        Raises:
            HoldConflict: as :meth:`settle`.
            KernelRejected: as :meth:`settle`.
            KernelUnavailable: as :meth:`settle`.
        """

    def settle_sync(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        """Settle a budget hold from sync code (any thread but the kernel loop); see :meth:`settle`.

        Args:
            receipt_id: the allow receipt that placed the hold.
            actual_cost: what the call cost.
            op_id: names this operation.

        Returns:
            The signed settle receipt, or None where the client holds no budgets.
        """

    def release_sync(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        """Release a budget hold from sync code (any thread but the kernel loop); see :meth:`release`.

        Args:
            receipt_id: the allow receipt that placed the hold.
            op_id: names this operation.
            reason: why (recorded and signed).

        Returns:
            The signed release receipt, or None where the client holds no budgets.
        """

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        """Register what wakes the run waiting for ``approval_id`` once a person answers it in the kernel.

        A wake is not authority: it only wakes the run, which re-evaluates with ``approval_id``.
        Registering the same wake again is a no-op; on an approval answered already the kernel wakes
        the run at once.

        Args:
            approval_id: the approval (``Evaluation.approval_id``) the run waits for.
            wake: ``{"engine": "<name>", ...engine-specific JSON fields}`` (docs/approvals.md).

        Returns:
            True when the kernel registered it; False (nothing done) when this client cannot (a
            ``chio_sdk.testing`` mock, a stock ``ChioClient``, a sidecar without the route): the
            caller falls back to its own wake-up.

        Raises:
            KernelRejected: unknown approval, or a malformed / too big / one too many wake.
            KernelUnavailable: the kernel could not be reached (retry).
        """

    def register_approval_wake_sync(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        """Register an approval wake from sync code (any thread but the kernel loop).

        See :meth:`register_approval_wake`.

        Args:
            approval_id: the approval the run waits for.
            wake: ``{"engine": "<name>", ...engine-specific JSON fields}``.

        Returns:
            True when the kernel registered it; False when this client cannot.
        """


ChioClientLike = Union["LocalChioClient", "Kernel", ChioClient, "MockChioClient", KernelTransport]
"""What every layer accepts as ``chio_client=``: made a :class:`KernelTransport` once, at construction."""


def client_url(client: object) -> str:
    """Name where a client sends its evaluations, for error messages and events.

    Args:
        client: a Chio client or transport.

    Returns:
        Its public ``base_url`` (``SidecarClient``, ``LocalChioClient``) or transport ``url``; a stock
        ``chio_sdk.ChioClient`` does not expose its URL, so it is named by its type.
    """
    if isinstance(client, KernelTransport):
        return client.url
    value = getattr(client, "base_url", None)
    if isinstance(value, str):
        return value
    if isinstance(client, ChioClient):
        return "chio_sdk.ChioClient"
    value = getattr(client, "DEFAULT_BASE_URL", None)  # a mock says where it stands in for
    return value if isinstance(value, str) else type(client).__name__


def _body(call: GovernedCall, capability_id: str) -> dict[str, Any]:
    return {
        "capability_id": capability_id,
        "tool_server": call.tool_server,
        "tool_name": call.tool_name,
        "parameters": call.parameters,
    }


# --- embedded ------------------------------------------------------------------------------------


class EmbeddedTransport:
    """The in-process kernel, called inline: no HTTP, no thread, no loop hop."""

    sends_idempotency_keys = True
    instrument: bool | None = None
    """Trace its decisions (docs/observability.md): None follows ``chio_durable.instrument_all()``."""

    def __init__(self, kernel: Kernel, client: LocalChioClient | None = None) -> None:
        self.kernel = kernel
        self.client: LocalChioClient | Kernel = client if client is not None else kernel
        self.url: str = client_url(self.client)

    def __repr__(self) -> str:
        return f"EmbeddedTransport({self.url!r})"

    def evaluate_sync(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        if not enabled(self.instrument):
            return self._decide(call, capability_id, idempotency_key, cost, approval_id)
        trace = traced_evaluation(call, capability_id, cost, approval_id, self._pending_metadata)
        try:
            evaluation = self._decide(trace.call, capability_id, idempotency_key, cost, approval_id)
        except BaseException as err:
            trace.failed(err)
            raise
        trace.done(evaluation)
        if cost is not None and evaluation.allowed:
            record_budgets(capability_id, self.kernel.budgets)
        return evaluation

    def _pending_metadata(self, approval_id: str) -> Mapping[str, Any] | None:
        """The signed run context of the pending receipt ``approval_id`` answers (its trace ids)."""
        approval = self.kernel.get_approval(approval_id) or {}
        receipt = self.kernel.get_receipt(str(approval.get("pending_receipt_id")))
        return receipt.metadata if receipt is not None else None

    def _decide(
        self, call: GovernedCall, capability_id: str, idempotency_key: str | None,
        cost: MonetaryAmount | None, approval_id: str | None,
    ) -> Evaluation:
        # The call's canonical form and hash, computed once for its idempotency key, are handed
        # over (in process only), so the kernel does not canonicalise and hash the parameters again.
        text, digest = call.canonical_parameters, call.wire_parameter_hash
        try:
            receipt = self.kernel.evaluate(
                capability_id, call.tool_server, call.tool_name, call.parameters,
                idempotency_key=idempotency_key, cost=cost, approval_id=approval_id,
                canonical_parameters=text, parameter_hash=digest if text is not None else None,
                metadata=call.metadata,
            )
        except ValueError as err:
            if isinstance(err, ValidationError):  # our receipt model, not the caller's input
                raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
            # KernelInputError (a ValueError): the kernel refuses this input; retrying won't change that
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:  # the kernel could not decide (disk full, locked store...)
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return Evaluation.from_receipt(receipt)

    async def evaluate(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        return self.evaluate_sync(
            call, capability_id=capability_id, idempotency_key=idempotency_key, cost=cost, approval_id=approval_id
        )

    async def run(self, make_call: Callable[[], Awaitable[T]]) -> T:
        return await make_call()

    def _hold_op(self, op: Callable[[], ChioReceipt]) -> ChioReceipt:
        try:
            return op()
        except HoldConflictError as err:
            raise HoldConflict(self.url, str(err)) from err
        except ValueError as err:  # no hold, bad amount/op_id (KernelInputError, UnknownHoldError)
            if isinstance(err, ValidationError):
                raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:  # the kernel could not record it (store locked, disk full...)
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err

    def _traced_hold_op(
        self, op: str, receipt_id: str, amount: MonetaryAmount | None, call: Callable[[], ChioReceipt]
    ) -> ChioReceipt:
        if not enabled(self.instrument):
            return self._hold_op(call)
        finish = traced_hold(op, receipt_id, amount, self.kernel.budgets)
        try:
            receipt = self._hold_op(call)
        except BaseException as err:
            finish(None, err)
            raise
        finish(receipt, None)
        return receipt

    def settle_sync(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        return self._traced_hold_op(
            "settle", receipt_id, actual_cost, lambda: self.kernel.settle(receipt_id, actual_cost, op_id)
        )

    def release_sync(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        return self._traced_hold_op("release", receipt_id, None, lambda: self.kernel.release(receipt_id, op_id, reason))

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        return self.settle_sync(receipt_id, actual_cost, op_id)

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        return self.release_sync(receipt_id, op_id, reason)

    def register_approval_wake_sync(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        try:
            self.kernel.register_approval_wake(approval_id, wake)
        except (LookupError, ValueError) as err:  # ApprovalNotFoundError, KernelInputError: not retryable
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:  # the kernel could not record it (store locked, disk full...)
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return True

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        # a thread: on an answered approval the kernel calls the waker at once (it may block)
        return await asyncio.to_thread(self.register_approval_wake_sync, approval_id, wake)

    def record_form_denial_sync(self, approval_id: str, reason: str | None, source: str) -> Evaluation | None:
        """The kernel's signed deny for a deny given in an engine's resume form (it can only stop the call)."""
        try:
            receipt = self.kernel.record_form_denial(approval_id, reason, source=source)
        except (LookupError, ValueError) as err:  # ApprovalNotFoundError, KernelInputError: not retryable
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:  # the kernel could not record it (store locked, disk full...)
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return Evaluation.from_receipt(receipt)

    async def record_form_denial(self, approval_id: str, reason: str | None, source: str) -> Evaluation | None:
        return self.record_form_denial_sync(approval_id, reason, source)


# --- remote (HTTP and mocks) -------------------------------------------------------------------

# 4xx answers that say "not now" rather than "not this request": still retryable.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_KERNEL_KEY = re.compile(r"[0-9a-f]{64}")


def _http_status(err: BaseException) -> int | None:
    """The HTTP status of a ``chio_sdk`` error raised for a non-2xx answer (``code="HTTP_<n>"``)."""
    code = getattr(err, "code", None)
    if isinstance(code, str) and code.startswith("HTTP_") and code[5:].isdigit():
        return int(code[5:])
    return None


def _denied_by_error(err: ChioDeniedError, call: GovernedCall, capability_id: str) -> Evaluation:
    reason = err.reason or err.message
    decision = {"verdict": "deny", "guard": err.guard, "reason": reason}
    return Evaluation(
        allowed=False,
        receipt_id=err.receipt_id,
        capability_id=capability_id,
        tool_server=call.tool_server,
        tool_name=call.tool_name,
        guard=err.guard,
        reason=reason,
        decision={k: v for k, v in decision.items() if v is not None},
    )


class _ToolCallEvaluator(Protocol):
    """What a remote transport calls: ``chio_sdk.ChioClient`` and its mocks both have it."""

    async def evaluate_tool_call(
        self, *, capability_id: str, tool_server: str, tool_name: str, parameters: dict[str, Any]
    ) -> ChioReceipt: ...


class _RemoteTransport:
    """What HTTP and mock transports share: the kernel loop, deny-by-error, no-decision errors."""

    sends_idempotency_keys = False
    checks_parameter_hash = False
    instrument: bool | None = None
    """Trace its decisions (docs/observability.md): None follows ``chio_durable.instrument_all()``."""

    def __init__(self, client: _ToolCallEvaluator) -> None:
        self.client = client
        self.url: str = client_url(client)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    async def _send(
        self, call: GovernedCall, capability_id: str, idempotency_key: str | None, cost: MonetaryAmount | None,
        approval_id: str | None = None,
    ) -> ChioReceipt:
        receipt: ChioReceipt = await self.client.evaluate_tool_call(**_body(call, capability_id))
        return receipt

    def _refuse_early(self, call: GovernedCall, cost: MonetaryAmount | None) -> None:
        """Refuse before sending what the kernel would refuse (or could not honour)."""

    async def _decide(
        self, call: GovernedCall, capability_id: str, idempotency_key: str | None, cost: MonetaryAmount | None,
        approval_id: str | None = None,
    ) -> Evaluation:
        self._refuse_early(call, cost)
        if approval_id is not None and not self.sends_idempotency_keys:
            # without it the kernel would only answer "pending" again: say why instead
            raise KernelRejected(
                self.url, "this client cannot send an approval_id; use chio_kernel.SidecarClient(url) or LocalChioClient"
            )
        try:
            receipt = await self._send(call, capability_id, idempotency_key, cost, approval_id)
        except ChioDeniedError as err:
            return _denied_by_error(err, call, capability_id)
        except Exception as err:  # unreachable, timed out, 4xx/5xx, malformed answer: not a decision
            status = _http_status(err)
            if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
                raise KernelRejected(self.url, str(err)) from err
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        # A receipt for another call (a misrouting proxy, a replayed answer) is not a decision on this one.
        self._check_answers_call(receipt, call, capability_id)
        return Evaluation.from_receipt(receipt)

    def _check_answers_call(self, receipt: ChioReceipt, call: GovernedCall, capability_id: str) -> None:
        """Fail closed unless a remote receipt answers the very call that was asked.

        ``parameter_hash`` is checked for receipts signed by a real kernel (``kernel_key`` = 64 hex
        chars, an Ed25519 public key): ``chio_sdk.testing`` mocks hash with their own (ASCII-escaped)
        JSON and sign with a placeholder key, so their hash is not the kernel's.
        """
        body = _body(call, capability_id)
        mismatches = [
            f"{name} {getattr(receipt, name)!r} != {body[name]!r}"
            for name in ("capability_id", "tool_server", "tool_name")
            if getattr(receipt, name) != body[name]
        ]
        expected = call.wire_parameter_hash
        if (
            expected is not None
            and isinstance(receipt.kernel_key, str)
            and _KERNEL_KEY.fullmatch(receipt.kernel_key)
            and receipt.action.parameter_hash != expected
        ):
            mismatches.append(f"action.parameter_hash {receipt.action.parameter_hash!r} != {expected!r}")
        if mismatches:
            raise KernelUnavailable(
                self.url, f"receipt {receipt.id} does not answer the call that was asked: {'; '.join(mismatches)}"
            )

    async def evaluate(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        if not enabled(self.instrument):
            return await await_on_kernel_loop(self._decide(call, capability_id, idempotency_key, cost, approval_id))
        trace = traced_evaluation(call, capability_id, cost, approval_id)  # in the caller's context
        try:
            evaluation = await await_on_kernel_loop(self._decide(trace.call, capability_id, idempotency_key, cost, approval_id))
        except BaseException as err:
            trace.failed(err)
            raise
        return trace.done(evaluation)

    def evaluate_sync(
        self, call: GovernedCall, *, capability_id: str, idempotency_key: str | None = None,
        cost: MonetaryAmount | None = None, approval_id: str | None = None,
    ) -> Evaluation:
        if not enabled(self.instrument):
            return run_on_kernel_loop(self._decide(call, capability_id, idempotency_key, cost, approval_id))
        trace = traced_evaluation(call, capability_id, cost, approval_id)
        try:
            evaluation = run_on_kernel_loop(self._decide(trace.call, capability_id, idempotency_key, cost, approval_id))
        except BaseException as err:
            trace.failed(err)
            raise
        return trace.done(evaluation)

    async def run(self, make_call: Callable[[], Awaitable[T]]) -> T:
        async def on_loop() -> T:
            return await make_call()

        return await await_on_kernel_loop(on_loop())

    # Budget holds: a mock (and a stock ChioClient, which cannot declare a cost) holds nothing, so
    # there is nothing to settle or release: None. HttpTransport overrides these for SidecarClient.

    async def _hold_op(self, op: str, receipt_id: str, args: tuple[Any, ...]) -> ChioReceipt | None:
        return None

    def _traced(self, op: str, receipt_id: str, amount: MonetaryAmount | None, run: Callable[[], T]) -> T:
        """``run()`` (one hold operation on the kernel loop), in a span when instrumented."""
        if not enabled(self.instrument):
            return run()
        finish = traced_hold(op, receipt_id, amount)
        try:
            result = run()
        except BaseException as err:
            finish(None, err)
            raise
        finish(result if isinstance(result, ChioReceipt) else None, None)
        return result

    async def _traced_async(
        self, op: str, receipt_id: str, amount: MonetaryAmount | None, args: tuple[Any, ...]
    ) -> ChioReceipt | None:
        if not enabled(self.instrument):
            return await await_on_kernel_loop(self._hold_op(op, receipt_id, args))
        finish = traced_hold(op, receipt_id, amount)
        try:
            receipt = await await_on_kernel_loop(self._hold_op(op, receipt_id, args))
        except BaseException as err:
            finish(None, err)
            raise
        finish(receipt, None)
        return receipt

    async def settle(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        return await self._traced_async("settle", receipt_id, actual_cost, (actual_cost, op_id))

    async def release(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        return await self._traced_async("release", receipt_id, None, (op_id, reason))

    def settle_sync(self, receipt_id: str, actual_cost: MonetaryAmount, op_id: str) -> ChioReceipt | None:
        return self._traced(
            "settle", receipt_id, actual_cost,
            lambda: run_on_kernel_loop(self._hold_op("settle", receipt_id, (actual_cost, op_id))),
        )

    def release_sync(self, receipt_id: str, op_id: str, reason: str = "released") -> ChioReceipt | None:
        return self._traced(
            "release", receipt_id, None, lambda: run_on_kernel_loop(self._hold_op("release", receipt_id, (op_id, reason)))
        )

    # Wakes: a mock (and a stock ChioClient) has no way to register one: False, the engine falls
    # back to its own wake-up. HttpTransport overrides _register_wake for SidecarClient.

    async def _register_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        return False

    async def register_approval_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        return await await_on_kernel_loop(self._register_wake(approval_id, dict(wake)))

    def register_approval_wake_sync(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        return run_on_kernel_loop(self._register_wake(approval_id, dict(wake)))

    # A deny from an engine's resume form: recorded by a SidecarClient's kernel (HttpTransport);
    # a mock or a stock ChioClient has no route for it: None, the engine denies without a receipt.

    async def _form_denial(self, approval_id: str, reason: str | None, source: str) -> Evaluation | None:
        record = getattr(self.client, "record_form_denial", None)
        if not self.sends_idempotency_keys or not callable(record):
            return None
        try:
            receipt = await record(approval_id, reason, source=source)
        except (LookupError, ValueError) as err:
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:
            status = _http_status(err)
            if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
                raise KernelRejected(self.url, str(err)) from err
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return Evaluation.from_receipt(receipt)

    async def record_form_denial(self, approval_id: str, reason: str | None, source: str) -> Evaluation | None:
        """The kernel's signed deny for a deny given in an engine's resume form, or None (no route)."""
        return await await_on_kernel_loop(self._form_denial(approval_id, reason, source))

    def record_form_denial_sync(self, approval_id: str, reason: str | None, source: str) -> Evaluation | None:
        """:meth:`record_form_denial` for sync callers."""
        return run_on_kernel_loop(self._form_denial(approval_id, reason, source))


NO_IDEMPOTENCY_WARNING = (
    "chio: this chio_sdk.ChioClient cannot send idempotency keys (its public evaluate_tool_call has no "
    "such field), so a retried flow/workflow gets fresh receipts, misses the receipt-keyed cache and is "
    "charged again. Use chio_kernel.SidecarClient(url) (a ChioClient) to keep retries idempotent."
)

_warned_no_idempotency: weakref.WeakSet[Any] = weakref.WeakSet()


class HttpTransport(_RemoteTransport):
    """A ``chio_sdk.ChioClient`` over HTTP; with ``sends_idempotency_keys`` for ``chio_kernel.SidecarClient``."""

    def __init__(self, client: ChioClient, *, sends_idempotency_keys: bool) -> None:
        super().__init__(client)
        self.sends_idempotency_keys = sends_idempotency_keys

    def _refuse_early(self, call: GovernedCall, cost: MonetaryAmount | None) -> None:
        if call.wire_parameter_hash is None:  # the kernel would refuse it: do not even send it
            raise KernelRejected(self.url, call.wire_error or "parameters are not JSON-able")
        if cost is not None and not self.sends_idempotency_keys:
            # Evaluating without the cost would skip the budget: refuse instead (fail closed).
            raise KernelRejected(
                self.url, "a stock chio_sdk.ChioClient cannot send a cost; use chio_kernel.SidecarClient(url)"
            )

    async def _send(
        self, call: GovernedCall, capability_id: str, idempotency_key: str | None, cost: MonetaryAmount | None,
        approval_id: str | None = None,
    ) -> ChioReceipt:
        if self.sends_idempotency_keys:
            extras: dict[str, Any] = {"idempotency_key": idempotency_key}
            if cost is not None:
                extras["cost"] = cost
            if approval_id is not None:
                extras["approval_id"] = approval_id
            if call.metadata:  # the run context (a stock ChioClient cannot send it: dropped below)
                extras["metadata"] = call.metadata
            # this layer never runs a pending call and re-evaluates it under its approval: say so, and
            # get the pending receipt (without it the sidecar answers a signed deny: fail closed)
            extras["understands_pending"] = True
            sidecar: Any = self.client  # a chio_kernel.SidecarClient: the kernel's wire extras
            receipt: ChioReceipt = await sidecar.evaluate_tool_call(**_body(call, capability_id), **extras)
            return receipt
        if idempotency_key is not None and self.client not in _warned_no_idempotency:
            _warned_no_idempotency.add(self.client)
            warnings.warn(NO_IDEMPOTENCY_WARNING, RuntimeWarning, stacklevel=2)
        return await super()._send(call, capability_id, idempotency_key, cost, approval_id)

    async def _hold_op(self, op: str, receipt_id: str, args: tuple[Any, ...]) -> ChioReceipt | None:
        if not self.sends_idempotency_keys:  # a stock ChioClient cannot declare a cost: nothing is held
            return None
        sidecar: Any = self.client  # a chio_kernel.SidecarClient
        try:
            receipt: ChioReceipt = await getattr(sidecar, op)(receipt_id, *args)
        except Exception as err:
            status = _http_status(err)
            if status == 409:
                raise HoldConflict(self.url, str(err)) from err
            if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
                raise KernelRejected(self.url, str(err)) from err
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return receipt

    async def _register_wake(self, approval_id: str, wake: Mapping[str, Any]) -> bool:
        register = getattr(self.client, "register_approval_wake", None)
        if not self.sends_idempotency_keys or not callable(register):  # a stock ChioClient: no such route
            return False
        try:
            await register(approval_id, wake)
        except (LookupError, ValueError) as err:  # ApprovalNotFoundError, KernelInputError (404 / 422)
            raise KernelRejected(self.url, str(err)) from err
        except Exception as err:
            status = _http_status(err)
            if status in (404, 405):  # a sidecar without the route: the caller falls back
                return False
            if status is not None and 400 <= status < 500 and status not in _RETRYABLE_4XX:
                raise KernelRejected(self.url, str(err)) from err
            raise KernelUnavailable(self.url, f"{type(err).__name__}: {err}") from err
        return True


class MockTransport(_RemoteTransport):
    """A ``chio_sdk.testing`` mock (or any object with ``evaluate_tool_call``): keys and costs ignored."""


# --- choosing one --------------------------------------------------------------------------------


def is_client(value: object) -> bool:
    """Whether ``value`` can be made a transport (for configuration errors raised at construction)."""
    if isinstance(value, KernelTransport):
        return True
    return callable(getattr(value, "evaluate_tool_call", None)) or hasattr(getattr(value, "kernel", None), "evaluate")


def as_transport(client: ChioClientLike | Any) -> KernelTransport:
    """Choose the :class:`KernelTransport` for a client, once (call at construction, not per call).

    Args:
        client: ``chio_kernel.LocalChioClient``, ``chio_kernel.SidecarClient``, a ``Kernel``, a
            ``chio_sdk.ChioClient``, a ``chio_sdk.testing`` mock, or a transport (returned as is).

    Returns:
        The transport that reaches the kernel behind ``client``.

    Raises:
        TypeError: ``client`` is no Chio client at all (the message lists what to pass).
    """
    if isinstance(client, (EmbeddedTransport, _RemoteTransport)):
        return client
    if isinstance(client, LocalChioClient):
        return EmbeddedTransport(client.kernel, client)
    if isinstance(client, Kernel):
        return EmbeddedTransport(client)
    if isinstance(client, ChioClient):
        return HttpTransport(client, sends_idempotency_keys=isinstance(client, SidecarClient))
    if isinstance(client, KernelTransport):  # a user's own transport
        return client
    if callable(getattr(client, "evaluate_tool_call", None)):
        return MockTransport(client)  # duck-typed: a mock stands in for ChioClient
    raise TypeError(
        "a Chio client is chio_kernel.LocalChioClient(), chio_kernel.SidecarClient(url), a chio_sdk.ChioClient "
        f"or a chio_sdk.testing mock; got {type(client).__name__}"
    )


class TransportSlot:
    """The ``chio_client`` attribute of a governing object: the client handed in, and the
    :class:`KernelTransport` chosen for it once, on assignment (not per call)."""

    transport: KernelTransport
    _chio_client: ChioClientLike

    @property
    def chio_client(self) -> ChioClientLike:
        """The client handed in; assigning another one chooses its transport anew."""
        return self._chio_client

    @chio_client.setter
    def chio_client(self, client: ChioClientLike) -> None:
        self.transport = as_transport(client)
        self._chio_client = client
        self._apply_instrument()

    @property
    def instrument(self) -> bool | None:
        """Trace this layer's decisions (docs/observability.md): True, False, or None (default) to
        follow ``chio_durable.instrument_all()`` and pydantic-ai's ``Agent.instrument_all()``."""
        return getattr(self, "_instrument", None)

    @instrument.setter
    def instrument(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"instrument must be True, False or None, got {value!r}")
        if value:
            otel()  # say now, in one line, if the otel extra is missing
        self._instrument = value
        self._apply_instrument()

    def _apply_instrument(self) -> None:
        value = getattr(self, "_instrument", None)
        transport = getattr(self, "transport", None)
        if value is not None and transport is not None and hasattr(transport, "instrument"):
            transport.instrument = value
