"""The one governed-call type of every layer, and the one idempotency-key scheme.

A :class:`GovernedCall` is what the kernel is asked about: ``(kind, tool_server, tool_name,
parameters)``. Its parameters are canonicalised (RFC 8785, ``chio_kernel.canonical``) and hashed
ONCE, on first use, and that one digest serves both the idempotency key and the check that a remote
receipt's ``action.parameter_hash`` answers this very call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from chio_kernel.canonical import canonical_json, canonical_json_str

__all__ = ["CallKind", "GovernedCall", "call_key", "idempotency_key", "run_metadata", "wire_parameter_hash"]

CallKind = Literal["model", "tool", "mcp", "mcp_list", "output", "task", "activity"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def idempotency_key(*parts: object) -> str:
    """Derive a stable key for one governed call position: sha256 over its parts.

    Args:
        *parts: what pins the position (run, position, capability, ...), each turned into ``str``.

    Returns:
        ``"idem-<sha256 hex>"``.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode())
        digest.update(b"\x1f")
    return "idem-" + digest.hexdigest()


def wire_parameter_hash(parameters: Mapping[str, Any]) -> str:
    """The ``action.parameter_hash`` a Chio kernel computes for ``parameters`` sent over JSON.

    sha256 of the RFC 8785 canonical JSON (``chio_kernel.canonical``) of the parameters as the kernel
    receives them (after the JSON round trip: tuples become lists, non-string keys strings).
    Raises ``ValueError`` when they have no JSON form (NaN, infinities...), as the kernel would.
    """
    try:
        return hashlib.sha256(canonical_json(parameters)).hexdigest()
    except ValueError as err:
        first = err  # the kernel's own words, if the wire form does not help either
    try:
        wire = json.loads(json.dumps(parameters, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise ValueError(f"parameters are not JSON-able: {first}") from None
    return hashlib.sha256(canonical_json(wire)).hexdigest()


@dataclass(frozen=True)
class _Hashes:
    key: str  # stable across attempts and processes (memory addresses dropped): for idempotency keys
    wire: str | None  # the kernel's action.parameter_hash; None when the parameters have no JSON form
    wire_error: str | None = None
    text: str | None = None  # the canonical JSON whose sha256 is ``wire`` (the parameters as given)


def _hash_parameters(parameters: Mapping[str, Any]) -> _Hashes:
    try:
        text: str | None = canonical_json_str(parameters)
    except (ValueError, TypeError, RecursionError):
        text = None
    if text is not None:
        try:
            wire: str | None = hashlib.sha256(text.encode("utf-8")).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: the kernel refuses it too
            wire = None
        stable = _ADDRESS.sub("", text)
        if wire is not None and stable == text:  # the common case: one canonical form, one sha256
            return _Hashes(key=wire, wire=wire, text=text)
        key = hashlib.sha256(stable.encode("utf-8", "surrogatepass")).hexdigest()
        if wire is not None:
            return _Hashes(key=key, wire=wire, text=text)
    else:
        from chio_durable._params import digest

        key = digest(dict(parameters))
    # Rare path: no canonical form as given; the wire form (JSON round trip) may still have one.
    try:
        return _Hashes(key=key, wire=wire_parameter_hash(parameters))
    except ValueError as err:
        return _Hashes(key=key, wire=None, wire_error=str(err))
    except Exception as err:  # noqa: BLE001 - not even a mapping: the kernel says what is wrong
        return _Hashes(key=key, wire=None, wire_error=f"{type(err).__name__}: {err}")


@dataclass(frozen=True)
class GovernedCall:
    """One governed call as the kernel sees it: ``(tool_server, tool_name, parameters)`` plus its kind.

    The same type for an agent's model request / tool / MCP call (``chio_durable.agent``), a Prefect
    task attempt (``kind="task"``) and a Temporal activity execution (``kind="activity"``).

    Attributes:
        kind: what is called (``"model"``, ``"tool"``, ``"task"``, ``"activity"``, ...).
        tool_server: the server (or engine namespace) the tool belongs to.
        tool_name: the tool, task or activity name.
        parameters: the call's JSON-able arguments (hashed into the receipt).
        metadata: the caller's run context, never part of what is asked (see the field).
    """

    kind: CallKind
    tool_server: str
    tool_name: str
    parameters: dict[str, Any]
    metadata: Mapping[str, str] | None = field(default=None, compare=False)
    """Where the call ran (``flow_run_id``, ``workflow_id``...): the kernel signs it into the receipt's
    ``metadata`` so ``chio-durable receipts list --flow-run/--workflow-id`` find it. Context, not the
    call: in no hash, idempotency key or equality. Sent by the embedded kernel and
    ``chio_kernel.SidecarClient``; a stock ``chio_sdk.ChioClient`` or a mock cannot send it (dropped)."""

    def with_metadata(self, pairs: Mapping[str, str]) -> GovernedCall:
        """This call with ``pairs`` added to its run context (the trace ids of its decision span).

        The parameters, and their hashes if computed already, are the same objects: only the
        context differs, which is in no hash or idempotency key.

        Args:
            pairs: run-context keys and values to add (they win over the call's own on a conflict).

        Returns:
            A new call; this one is unchanged.
        """
        traced = object.__new__(GovernedCall)
        traced.__dict__.update(self.__dict__)  # frozen: filled as dataclasses.replace would, less the re-hash
        traced.__dict__["metadata"] = {**(self.metadata or {}), **pairs}
        return traced

    @property
    def label(self) -> str:
        """``server/tool``, for messages and logs."""
        return f"{self.tool_server}/{self.tool_name}"

    @cached_property
    def _hashes(self) -> _Hashes:
        return _hash_parameters(self.parameters)

    @property
    def parameter_hash(self) -> str:
        """sha256 hex of the canonical JSON of the parameters (memory addresses in reprs dropped).

        Computed once per call; part of every idempotency key.
        """
        return self._hashes.key

    @property
    def wire_parameter_hash(self) -> str | None:
        """The ``action.parameter_hash`` the kernel signs for this call; ``None`` if it has no JSON form."""
        return self._hashes.wire

    @property
    def canonical_parameters(self) -> str | None:
        """The RFC 8785 canonical JSON of the parameters as given, whose sha256 is
        :attr:`wire_parameter_hash`; ``None`` if they have none (the embedded kernel is handed both,
        so it does not canonicalise and hash them again)."""
        return self._hashes.text

    @property
    def wire_error(self) -> str | None:
        """Why the parameters have no JSON form (the kernel would refuse them), else ``None``."""
        return self._hashes.wire_error


def run_metadata(**pairs: object) -> dict[str, str] | None:
    """A layer's run context for :attr:`GovernedCall.metadata`: the pairs that have a value, as
    text cut to the kernel's 512 characters (``chio_kernel._run_context``); None if none has one."""
    out = {key: str(value)[:512] for key, value in pairs.items() if value is not None and value != ""}
    return out or None


def call_key(run: str | None, position: str, capability_id: str | None, call: GovernedCall | None = None) -> str:
    """Derive the idempotency key of a governed call: THE scheme of every layer.

    The key is run identity + call position + capability (+ call). The same key re-evaluated returns
    the same receipt while the capability stays valid.

    Args:
        run: the flow run id (Prefect tasks), ``<workflow id>/<run id>`` (Temporal activities), the
            agent's run identity (flow run / workflow run / agent run id).
        position: where in that run the call stands (a task's call position, ``activity:<activity
            id>``, ``tool#<step>#<tool call id>``).
        capability_id: the capability the call runs under.
        call: what is asked there (kind, server, tool, parameter hash), wherever the position alone
            does not pin it; a Temporal activity id does (its arguments never change between
            attempts), and the overridable ``activity_idempotency_key(info, capability_id)`` is not
            handed the call.

    Returns:
        The key (:func:`idempotency_key` of those parts).
    """
    parts: tuple[object, ...] = (run, position, capability_id)
    if call is not None:
        parts += (call.kind, call.tool_server, call.tool_name, call.parameter_hash)
    return idempotency_key(*parts)
