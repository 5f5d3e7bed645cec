"""Receipts: the signed body, the chain hash, the served (wire) form, building and verifying.

One rule each for signing and verifying (see ``docs/kernel.md``, "Signed bodies").
"""

from __future__ import annotations

import hashlib
import json
import json.encoder as _json_encoder
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from chio_sdk.models import ChioReceipt, Decision, HttpReceipt, ToolCallAction
from pydantic import BaseModel, ValidationError

from chio_kernel._errors import KernelInputError
from chio_kernel._guards import MAX_REASON_CHARS, bound_reason
from chio_kernel._ids import _uuid7_str
from chio_kernel._store import GENESIS_HASH, LEGACY_CHAIN, StoreReader, StoreWriter
from chio_kernel.canonical import canonical_json, canonical_json_str
from chio_kernel.signing import verify_hex

__all__ = [
    "ALLOW",
    "CallRecord",
    "ChainReport",
    "ChainStatus",
    "chain_dict",
    "ReceiptCall",
    "ReceiptChain",
    "build_receipt",
    "receipt_chain_hash",
    "receipt_signing_bytes",
    "receipt_wire_dict",
    "verify_chain",
    "verify_receipt_dict",
]

#: The decision of an allow receipt.
ALLOW: Mapping[str, str] = {"verdict": "allow"}

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class ChainStatus:
    """One kernel's receipt chain as :meth:`Kernel.verify_chain` found it.

    Attributes:
        kernel_id: the kernel's hex signing key (``fleet-v1``: the fleet's one chain from before
            per-kernel chains).
        count: receipts in this chain.
        head_seq: the position of its newest receipt.
        ok: True if every signature and chain link verified.
        first_broken_index: 0-based position of the first bad receipt in this chain, or None.
        reason: what is wrong there, or None.
    """

    kernel_id: str
    count: int
    head_seq: int
    ok: bool
    first_broken_index: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ChainReport:
    """Result of :meth:`Kernel.verify_chain`: overall, and per chain (``chains``).

    Attributes:
        ok: True if every chain verified.
        count: receipts checked, over all chains.
        first_broken_index: 0-based position of the first bad receipt in the broken chain, or None.
        reason: what is wrong there, or None.
        chains: one :class:`ChainStatus` per kernel chain in the store.
    """

    ok: bool
    count: int
    first_broken_index: int | None = None
    reason: str | None = None
    chains: tuple[ChainStatus, ...] = ()


def chain_dict(chain: ChainStatus) -> dict[str, Any]:
    """One chain of a :class:`ChainReport` as JSON (the CLI's ``--json``, the sidecar's answer)."""
    return {
        "kernel_id": chain.kernel_id, "count": chain.count, "head_seq": chain.head_seq, "ok": chain.ok,
        "first_broken_index": chain.first_broken_index, "reason": chain.reason,
    }


class ReceiptCall(Protocol):
    """What a receipt records about the call (an evaluation request, or a :class:`CallRecord`)."""

    @property
    def capability_id(self) -> str: ...
    @property
    def tool_server(self) -> str: ...
    @property
    def tool_name(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def param_hash(self) -> str: ...
    @property
    def params_text(self) -> str | None: ...
    @property
    def params_ascii(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as a receipt records it, when no evaluation request carries it (answers, holds)."""

    capability_id: str
    tool_server: str
    tool_name: str
    params: dict[str, Any]
    param_hash: str
    params_text: str | None = None
    params_ascii: str | None = None


class ReceiptChain:
    """Signs receipts with the kernel's key and appends them to the store's hash chain.

    The one "append a receipt to the chain" function every service is handed (:meth:`append`).
    """

    __slots__ = ("_sign_hex", "key")

    def __init__(self, sign_hex: Callable[[bytes], str], key: str) -> None:
        """Sign with ``sign_hex`` as ``key`` (the kernel's hex public key)."""
        self._sign_hex = sign_hex
        self.key = key

    def append(
        self,
        st: StoreWriter,
        head_seq: int,
        prev_hash: str,
        now: float,
        call: ReceiptCall,
        decision: Mapping[str, str],
        policy_hash: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[ChioReceipt, int]:
        """Build, sign and store the receipt after ``head_seq`` / ``prev_hash`` (see :func:`build_receipt`).

        Returns:
            ``(receipt, seq)``: the receipt, stored at ``head_seq + 1`` of this kernel's chain in the
            caller's write transaction, and its store ``seq`` (what idempotency keys and holds point at).
        """
        receipt, stored, chain_hash = build_receipt(
            self._sign_hex, self.key, prev_hash, now, call, decision, policy_hash, metadata
        )
        seq = st.append_receipt(
            head_seq + 1, receipt.id, call.capability_id, receipt.decision.verdict, chain_hash, stored
        )
        return receipt, seq


def _receipt_signed_body(data: dict[str, Any]) -> dict[str, Any]:
    """Receipt dict (``model_dump(exclude_none=True)`` form) -> the body its signature covers."""
    body = dict(data)
    body.pop("signature", None)
    if not body.get("evidence"):
        body.pop("evidence", None)
    if not body.get("metadata"):
        body.pop("metadata", None)
    return body


def receipt_wire_dict(receipt: ChioReceipt | Mapping[str, Any]) -> dict[str, Any]:
    """A receipt as every output path serves it (sidecar answers and listings, the CLI's ``--json``,
    ``show`` and ``export``): exactly the signed fields plus ``signature``.

    That is ``model_dump(mode="json", exclude_none=True)`` without an empty ``evidence`` or
    ``metadata`` (left out of the signed body, as upstream's serialisers do), so any verifier that
    checks Ed25519 over the RFC 8785 canonical JSON of the object without ``signature`` accepts it.
    """
    if isinstance(receipt, ChioReceipt):
        data = receipt.model_dump(mode="json", exclude_none=True)
    else:
        data = {k: v for k, v in receipt.items() if v is not None}
    if not data.get("evidence"):
        data.pop("evidence", None)
    if not data.get("metadata"):
        data.pop("metadata", None)
    return data


def receipt_signing_bytes(receipt: ChioReceipt | Mapping[str, Any]) -> bytes:
    """Return the bytes a receipt's signature covers.

    That is the canonical JSON of ``model_dump(exclude_none=True)`` without ``signature``, and without
    ``evidence`` / ``metadata`` when they are empty.

    Args:
        receipt: the receipt, as a model or as its JSON dict.

    Returns:
        RFC 8785 canonical JSON, UTF-8.
    """
    data = receipt.model_dump(exclude_none=True) if isinstance(receipt, ChioReceipt) else dict(receipt)
    return canonical_json(_receipt_signed_body(data))


_chain_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


_q = _json_encoder.encode_basestring  # a JSON string literal as RFC 8785 writes it


_qa = _json_encoder.encode_basestring_ascii  # ... and as json.dumps(ensure_ascii=True) writes it


_ACTION_FIELDS = frozenset({"parameters", "parameter_hash"})


_DECISION_FIELDS = frozenset({"verdict", "reason", "guard"})


_RECEIPT_FIELDS = frozenset(ChioReceipt.model_fields) - {"metadata"}


def _construct(cls: type[_M], fields_set: frozenset[str], values: dict[str, Any]) -> _M:
    """``cls.model_construct(**values)`` without its per-field loop (hot path; values are complete)."""
    if cls.__pydantic_post_init__ or cls.__pydantic_root_model__:  # pragma: no cover - not the chio_sdk models
        return cls.model_construct(**values)
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(fields_set))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def receipt_chain_hash(receipt: ChioReceipt | Mapping[str, Any]) -> str:
    """Hash a receipt exactly as ``ChioClient.verify_receipt_chain`` hashes it.

    Args:
        receipt: the receipt, as a model or as its JSON dict.

    Returns:
        The sha256 hex digest the next receipt's ``content_hash`` must equal.
    """
    data = receipt.model_dump(exclude_none=True) if isinstance(receipt, ChioReceipt) else receipt
    return hashlib.sha256(_chain_dumps(data).encode()).hexdigest()


def build_receipt(
    sign_hex: Callable[[bytes], str],
    key: str,
    prev_hash: str,
    now: float,
    call: ReceiptCall,
    decision: Mapping[str, str],
    policy_hash: str,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[ChioReceipt, str, str]:
    """Build and sign one receipt chained onto ``prev_hash``: THE receipt builder of the kernel.

    Args:
        sign_hex: signs bytes with the kernel's key (hex signature).
        key: the kernel's hex public key (``kernel_key``).
        prev_hash: the chain hash of the previous receipt (``content_hash``).
        now: unix seconds (``timestamp``).
        call: what the receipt records about the call.
        decision: ``{"verdict": ...}`` plus ``guard`` / ``reason`` when not an allow.
        policy_hash: the capability's policy hash (the genesis hash without a capability).
        metadata: signed into ``metadata`` when not empty.

    Returns:
        ``(receipt, stored text, chain hash)``: the stored text is the receipt exactly as
        ``ChioClient.verify_receipt_chain`` serialises it; its sha256 is the chain hash.

    A plain allow or deny without metadata whose call carries its canonical texts is spliced from
    canonical parts (the hot path, equal byte for byte to the general path); anything else goes
    through the models.
    """
    verdict = decision["verdict"]
    reason = decision.get("reason")
    if reason is not None and len(reason) > MAX_REASON_CHARS:  # a bounded receipt, whatever the reason
        decision = {**decision, "reason": bound_reason(reason)}
    if _plain_metadata(metadata) and call.params_text is not None and call.params_ascii is not None and (
        verdict == "allow" or (verdict == "deny" and len(decision) == 3)
    ):
        deny = None if verdict == "allow" else (decision["guard"], decision["reason"])
        return _spliced_receipt(
            sign_hex, key, prev_hash, now, call.capability_id, call.tool_server, call.tool_name, call.params,
            call.params_text, call.params_ascii, call.param_hash, deny, policy_hash, metadata or None,
        )
    return _general_receipt(sign_hex, key, prev_hash, now, call, dict(decision), policy_hash, metadata)


def _plain_metadata(metadata: Mapping[str, Any] | None) -> bool:
    """Whether ``metadata`` can be spliced: none, or run context (text keys and text values)."""
    return not metadata or all(type(k) is str and type(v) is str for k, v in metadata.items())


def _general_receipt(
    sign_hex: Callable[[bytes], str],
    key: str,
    prev_hash: str,
    now: float,
    call: ReceiptCall,
    decision: dict[str, str],
    policy_hash: str,
    metadata: Mapping[str, Any] | None,
) -> tuple[ChioReceipt, str, str]:
    """Any verdict and metadata, through the models (see :func:`build_receipt`)."""
    data: dict[str, Any] = {
        "id": "rcpt-" + _uuid7_str(),
        "timestamp": int(now),
        "capability_id": call.capability_id,
        "tool_server": call.tool_server,
        "tool_name": call.tool_name,
        "action": {"parameters": call.params, "parameter_hash": call.param_hash},
        "decision": decision,
        "content_hash": prev_hash,
        "policy_hash": policy_hash,
        "evidence": [],
        "kernel_key": key,
        "signature": "",
    }
    if metadata:
        data["metadata"] = dict(metadata)
    unsigned = ChioReceipt.model_validate(data).model_dump(exclude_none=True)
    signature = sign_hex(canonical_json(_receipt_signed_body(unsigned)))
    receipt = ChioReceipt.model_validate({**data, "signature": signature})
    stored = _chain_dumps(receipt.model_dump(exclude_none=True))
    return receipt, stored, hashlib.sha256(stored.encode()).hexdigest()


def _spliced_receipt(
    sign_hex: Callable[[bytes], str],
    key: str,
    prev_hash: str,
    now: float,
    capability_id: str,
    tool_server: str,
    tool_name: str,
    params: dict[str, Any],
    params_text: str,
    params_ascii: str,
    param_hash: str,
    deny: tuple[str, str] | None,
    policy_hash: str,
    metadata: Mapping[str, str] | None = None,
) -> tuple[ChioReceipt, str, str]:
    """A plain allow / deny (with text-only run metadata) spliced from canonical parts (see :func:`build_receipt`)."""
    rid = "rcpt-" + _uuid7_str()
    ts = str(int(now))
    q_cap, q_tool, q_server = _q(capability_id), _q(tool_name), _q(tool_server)
    guard: str | None = None
    reason: str | None = None
    if deny is None:
        decision: dict[str, str | None] = {"verdict": "allow"}
        decision_text = decision_ascii = '{"verdict":"allow"}'
    else:
        guard, reason = deny
        decision = {"verdict": "deny", "reason": reason, "guard": guard}
        decision_text = '{"guard":' + _q(guard) + ',"reason":' + _q(reason) + ',"verdict":"deny"}'
        decision_ascii = '{"guard":' + _qa(guard) + ',"reason":' + _qa(reason) + ',"verdict":"deny"}'
    # The canonical JSON of the signed body, spliced from canonical parts in sorted key order
    # (equal to canonical_json(body); tests/kernel check both ways agree).
    # "metadata" sorts between "kernel_key" and "policy_hash" (RFC 8785 and sort_keys alike).
    meta_text = meta_ascii = ""
    if metadata:
        meta_text = ',"metadata":' + canonical_json_str(dict(metadata))
        meta_ascii = ',"metadata":' + _chain_dumps(dict(metadata))
    signed = (
        '{"action":{"parameter_hash":"' + param_hash + '","parameters":' + params_text
        + '},"capability_id":' + q_cap + ',"content_hash":"' + prev_hash
        + '","decision":' + decision_text + ',"id":"' + rid + '","kernel_key":"' + key + '"' + meta_text
        + ',"policy_hash":"' + policy_hash + '","timestamp":' + ts
        + ',"tool_name":' + q_tool + ',"tool_server":' + q_server + "}"
    )
    signature = sign_hex(signed.encode("utf-8"))
    # The stored text is the receipt exactly as ChioClient.verify_receipt_chain serialises it
    # (model_dump(exclude_none=True), sort_keys, ensure_ascii): its sha256 is the next content_hash.
    if not (q_cap.isascii() and q_tool.isascii() and q_server.isascii()):
        q_cap, q_tool, q_server = _qa(capability_id), _qa(tool_name), _qa(tool_server)
    stored = (
        '{"action":{"parameter_hash":"' + param_hash + '","parameters":' + params_ascii
        + '},"capability_id":' + q_cap + ',"content_hash":"' + prev_hash
        + '","decision":' + decision_ascii + ',"evidence":[],"id":"' + rid + '","kernel_key":"' + key + '"' + meta_ascii
        + ',"policy_hash":"' + policy_hash + '","signature":"' + signature + '","timestamp":' + ts
        + ',"tool_name":' + q_tool + ',"tool_server":' + q_server + "}"
    )
    chain_hash = hashlib.sha256(stored.encode()).hexdigest()
    action = {"parameters": params, "parameter_hash": param_hash}
    body = {
        "id": rid,
        "timestamp": int(now),
        "capability_id": capability_id,
        "tool_server": tool_server,
        "tool_name": tool_name,
        "action": action,
        "decision": decision,
        "content_hash": prev_hash,
        "policy_hash": policy_hash,
        "evidence": [],
        "kernel_key": key,
        "signature": signature,
    }
    body["action"] = _construct(ToolCallAction, _ACTION_FIELDS, action)
    body["decision"] = _construct(
        Decision, _DECISION_FIELDS, {"verdict": decision["verdict"], "reason": reason, "guard": guard}
    )
    body["metadata"] = dict(metadata) if metadata else None
    return _construct(ChioReceipt, _RECEIPT_FIELDS, body), stored, chain_hash


def verify_receipt_dict(data: dict[str, Any], issuers: Collection[str]) -> str | None:
    """Why a receipt (``model_dump(exclude_none=True)`` form) does not verify against ``issuers``, or None."""
    key = data.get("kernel_key")
    if key not in issuers:
        return f"receipt {data.get('id')} was signed by {str(key)}, which is not this kernel nor a trusted key"
    try:
        action = data["action"]
        if hashlib.sha256(canonical_json(action["parameters"])).hexdigest() != action["parameter_hash"]:
            return f"receipt {data.get('id')}: parameter_hash does not match its parameters"
        message = canonical_json(_receipt_signed_body(data))
    except (KeyError, TypeError, ValueError) as err:
        return f"receipt {data.get('id')} is malformed: {err}"
    if not verify_hex(str(key), str(data.get("signature")), message):
        return f"receipt {data.get('id')} has an invalid signature (altered after signing)"
    return None


def verify_chain(
    snapshot: AbstractContextManager[StoreReader], problem: Callable[[dict[str, Any]], str | None], batch: int
) -> ChainReport:
    """Walk every receipt chain of a store snapshot in order, checking each signature and link.

    A SQLite store holds one chain; a fleet store one per kernel (plus the fleet's one chain from
    before per-kernel chains). Every stored receipt must belong to a walked chain.

    Args:
        snapshot: one consistent read snapshot of the store (holds no writer lock).
        problem: why a receipt dict does not verify, or None (signature, issuer, parameter hash).
        batch: receipts read per query.

    Returns:
        The report: overall, then per chain (:attr:`ChainReport.chains`); ``first_broken_index`` is
        the 0-based position in the first broken chain.
    """
    with snapshot as st:
        chains = st.chains()
        stored = st.receipt_count()
        statuses = tuple(_verify_one_chain(st, k, seq, head, problem, batch) for k, seq, head in chains)
        altered = _columns_problem(st, batch)
    count = sum(c.count for c in statuses)
    for c in statuses:
        if not c.ok:
            reason = c.reason if len(statuses) == 1 else f"chain of kernel {c.kernel_id}: {c.reason}"
            return ChainReport(False, count, c.first_broken_index, reason, statuses)
    if count != stored:
        return ChainReport(
            False, count, None, f"{stored - count} stored receipt(s) belong to no chain (rows added outside the kernel)",
            statuses,
        )
    if altered is not None:
        return ChainReport(False, count, altered[0], altered[1], statuses)
    return ChainReport(True, count, None, None, statuses)


def _columns_problem(st: StoreReader, batch: int) -> tuple[int, str] | None:
    """``(position in store order, why)`` of the first row whose indexed columns disagree with its
    signed body, or of a by-capability index entry naming another capability; None when all agree."""
    position, last_seq = 0, 0
    while rows := st.receipt_rows_after(last_seq, batch):
        for seq, *columns, text in rows:
            why = _column_problem(columns, text, position)
            if why is not None:
                return position, why
            position += 1
            last_seq = seq
    stray = st.capability_index_mismatch()
    if stray is not None:
        return max(stray[1] - 1, 0), (
            f"the store's by-capability index lists seq {stray[1]} under capability {stray[0]}, but that "
            "receipt is not that capability's (the index was altered): `receipts list --capability` would "
            "show a receipt that is not the capability's"
        )
    return None


def _verify_one_chain(
    st: StoreReader,
    kernel_id: str,
    head_seq: int,
    head_hash: str,
    problem: Callable[[dict[str, Any]], str | None],
    batch: int,
) -> ChainStatus:
    """Walk one kernel's chain: every receipt verifies, is signed by that kernel, and links to the one before."""
    prev = GENESIS_HASH
    index = 0
    last_seq = 0
    while rows := st.chain_receipts(kernel_id, last_seq, batch):
        for seq, text in rows:
            broken = _link_problem(text, prev, index, problem)
            if isinstance(broken, ChainReport):
                return ChainStatus(kernel_id, index, head_seq, False, broken.first_broken_index, broken.reason)
            prev, signer = broken
            if kernel_id != LEGACY_CHAIN and signer != kernel_id:
                return ChainStatus(
                    kernel_id, index, head_seq, False, index,
                    f"receipt at index {index} of kernel {kernel_id}'s chain was signed by another "
                    f"key ({signer})",
                )
            index += 1
            last_seq = seq
    if head_seq != last_seq or head_hash != prev:  # the newest row's stored chain hash was altered
        return ChainStatus(
            kernel_id, index, head_seq, False, max(index - 1, 0),
            f"the newest receipt (seq {head_seq}) carries a chain hash that does not match its content",
        )
    return ChainStatus(kernel_id, index, head_seq, True)


def _column_problem(columns: list[str], text: str, index: int) -> str | None:
    """The first indexed column of a stored row (id, capability_id, verdict, chain_hash) that does not
    say what the signed body says; filters and listings read these columns, never the body."""
    row_id, capability_id, verdict, stored_hash = columns
    data = json.loads(text)
    signed = (
        ("id", data.get("id")),
        ("capability_id", data.get("capability_id")),
        ("verdict", (data.get("decision") or {}).get("verdict")),
        ("chain_hash", hashlib.sha256(text.encode()).hexdigest()),
    )
    for (name, expected), stored in zip(signed, (row_id, capability_id, verdict, stored_hash), strict=True):
        if stored != expected:
            return (
                f"receipt {data.get('id')} at index {index}: the store's {name} column says {stored!r:.80} but the "
                f"signed receipt says {expected!r:.80} (the column was altered after signing)"
            )
    return None


def _link_problem(
    text: str, prev: str, index: int, problem: Callable[[dict[str, Any]], str | None]
) -> tuple[str, str] | ChainReport:
    """``(chain hash, kernel_key)`` of the stored receipt ``text`` if it verifies and chains onto
    ``prev``, else the report."""
    try:
        data = ChioReceipt.model_validate_json(text).model_dump(exclude_none=True)
    except ValidationError as err:
        return ChainReport(False, index, index, f"receipt at index {index} is not a valid receipt: {err}")
    if data["content_hash"] != prev:
        return ChainReport(
            False, index, index,
            f"receipt {data['id']} at index {index} does not chain to the previous receipt "
            "(content_hash mismatch: a receipt before it was altered, removed or inserted)",
        )
    why = problem(data)
    if why is not None:
        return ChainReport(False, index, index, f"index {index}: {why}")
    return receipt_chain_hash(data), str(data.get("kernel_key"))


# --- HTTP receipts (the sidecar's /chio/evaluate and /chio/verify) ------------------------------


def check_http_receipt_body(body: Mapping[str, Any]) -> None:
    """Refuse anything but an HttpReceipt body (``id`` ``hrcpt-...``, HttpReceipt fields only), so
    signing one is no way to sign a tool receipt or a capability token."""
    allowed = set(HttpReceipt.model_fields) - {"signature"}
    extra = set(body) - allowed
    if extra or not str(body.get("id", "")).startswith("hrcpt-") or not {"method", "route_pattern"} <= set(body):
        raise KernelInputError(
            f"sign_http_receipt signs HttpReceipt bodies only (id 'hrcpt-...', fields {sorted(allowed)}); "
            f"got fields {sorted(body)}"
        )


def http_signed_body(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """The signed body of an HttpReceipt: everything but ``signature``; empty evidence/metadata left out
    (the same rule as tool receipts)."""
    body = {k: v for k, v in receipt.items() if k != "signature" and v is not None}
    if not body.get("evidence"):
        body.pop("evidence", None)
    if not body.get("metadata"):
        body.pop("metadata", None)
    return body


def verify_http_receipt(kernel_key: str, receipt: HttpReceipt) -> bool:
    """True if ``receipt`` is signed by ``kernel_key`` over its signed body."""
    if receipt.kernel_key != kernel_key:
        return False
    body = http_signed_body(receipt.model_dump(mode="json", exclude_none=True))
    try:
        message = canonical_json(body)
    except (ValueError, TypeError):
        return False
    return verify_hex(receipt.kernel_key, receipt.signature, message)
