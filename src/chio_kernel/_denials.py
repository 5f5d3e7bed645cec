"""Signed deny receipts for decisions a layer takes before a capability can be evaluated.

A Prefect task outside its flow's envelope, a task with no capability anywhere, a Temporal activity
of a workflow with no grant, an override grant that is not the workflow's: each is refused before
(or instead of) a kernel evaluation. :func:`record_denial` makes each one a signed, chained deny
receipt all the same, so an auditor reading the chain sees every attempt (docs/kernel.md).

What the kernel itself checks before signing:

* the guard is not one of the kernel's own (``scope``, ``signature``...): a layer cannot sign a
  deny in the kernel's name for a check the kernel did not make;
* with ``envelope`` (the scope the layer says the call is outside of), the kernel decides: it
  signs only if no grant of ``envelope`` covers ``tool_server/tool_name`` (``*`` matches anything),
  else it refuses (:class:`KernelInputError`): the layer must evaluate the call instead;
* the inputs are the same as for an evaluation (JSON parameters, bounded ids). ``capability_id``
  (and ``tool_server``) may be ``""`` when the call had none at all.

The receipt is an ordinary deny receipt (verdict ``deny``, the named guard and reason, the
capability's policy hash, or the genesis hash without a capability), appended to the same chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from chio_sdk.models import ChioReceipt, ChioScope, Operation

from chio_kernel._capabilities import LoadCap
from chio_kernel._coerce import _require_str
from chio_kernel._errors import KernelInputError
from chio_kernel._receipts import CallRecord, ReceiptChain
from chio_kernel._request import canonical_forms
from chio_kernel._run_context import check_run_metadata
from chio_kernel._store import GENESIS_HASH, StoreWriter

__all__ = ["KERNEL_GUARDS", "Denials"]

KERNEL_GUARDS = frozenset(
    {
        "signature", "time", "revocation", "scope", "constraints", "max_invocations", "cost", "rate-limit-guard",
        "approval", "approval-denied", "approval-unknown",  # only the kernel's approval flow names them
    }
)
"""Guards only the kernel's own evaluation may name."""


def _envelope_covers(envelope: ChioScope, tool_server: str, tool_name: str, operation: Operation) -> bool:
    return any(
        grant.server_id in ("*", tool_server) and grant.tool_name in ("*", tool_name) and operation in grant.operations
        for grant in envelope.grants
    )


def _check_denial(
    capability_id: str, tool_server: str, tool_name: str, guard: str, reason: str,
    envelope: ChioScope | None, operation: Operation,
) -> None:
    """Refuse what the kernel will not sign (see the module doc)."""
    if not isinstance(guard, str) or not guard.strip() or len(guard) > 128:
        raise KernelInputError(f"guard must be a non-empty name of at most 128 characters, got {guard!r}")
    if guard in KERNEL_GUARDS:
        raise KernelInputError(
            f"guard {guard!r} is one of the kernel's own; evaluate the call (Kernel.evaluate) for a "
            f"{guard!r} decision instead of recording one"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise KernelInputError("reason must say, in words, why the call was denied")
    if capability_id != "":
        _require_str("capability_id", capability_id, max_len=256)
    if tool_server != "":  # "" when the call had no tool server either
        _require_str("tool_server", tool_server, max_len=1024)
    _require_str("tool_name", tool_name, max_len=1024)


class Denials:
    """Signs and chains the denies a layer decided before evaluation (``Kernel.record_denial``)."""

    def __init__(
        self,
        write: Callable[[], AbstractContextManager[StoreWriter]],
        load_cap: LoadCap,
        clock: Callable[[], float],
        chain: ReceiptChain,
    ) -> None:
        """Write via ``write``, find capabilities with ``load_cap``, sign and chain with ``chain``."""
        self._write = write
        self._load_cap = load_cap
        self._clock = clock
        self._chain = chain

    def record(
        self,
        capability_id: str,
        tool_server: str,
        tool_name: str,
        parameters: dict[str, Any],
        *,
        guard: str,
        reason: str,
        envelope: ChioScope | None = None,
        operation: Operation = Operation.INVOKE,
        metadata: Mapping[str, str] | None = None,
    ) -> ChioReceipt:
        """Sign and chain a deny receipt for a decision taken before evaluation (see the module doc).

        Raises:
            KernelInputError: what the kernel will not sign.
        """
        _check_denial(capability_id, tool_server, tool_name, guard, reason, envelope, operation)
        if not isinstance(parameters, dict):
            raise KernelInputError("parameters must be a dict of parameter name -> JSON value")
        run_metadata = check_run_metadata(metadata)
        if envelope is not None:
            if not isinstance(envelope, ChioScope):
                envelope = ChioScope.model_validate(envelope)
            if _envelope_covers(envelope, tool_server, tool_name, operation):
                raise KernelInputError(
                    f"the envelope grants {tool_server}/{tool_name} ({operation.value}): not a {guard!r} deny; "
                    "evaluate the call instead"
                )
        params, params_text, params_ascii, param_hash = canonical_forms(parameters)
        call = CallRecord(capability_id, tool_server, tool_name, params, param_hash, params_text, params_ascii)
        decision = {"verdict": "deny", "guard": guard, "reason": reason.strip()}
        with self._write() as st:
            cap = self._load_cap(st, capability_id) if capability_id else None
            head_seq, prev_hash = st.chain_head()
            return self._chain.append(
                st, head_seq, prev_hash, self._clock(), call, decision,
                cap.policy_hash if cap is not None else GENESIS_HASH, run_metadata,
            )[0]
