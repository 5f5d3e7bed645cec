"""Signed Merkle checkpoints over a kernel's receipt chain: cutting, proofs, and the store checks (docs/checkpoints.md).

A :class:`Checkpoints` service cuts a checkpoint (``chio_kernel.proofs``) over its own kernel's chain
(positions: ``seq`` on SQLite, ``chain_seq`` on PostgreSQL) every ``every`` receipts or ``interval``
seconds, whichever comes first, from a background thread that reads only committed receipts: the
evaluation path does no checkpoint work. Each checkpoint is numbered and chained to
the previous one inside a write transaction (so a kernel never signs two with one number), and the
newest one this kernel signed is also written to ``<data_dir>/checkpoint-head.json``, a witness
outside the store.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chio_kernel._errors import KernelInputError, ProofError
from chio_kernel._receipts import receipt_signing_bytes, receipt_wire_dict
from chio_kernel._store import LEGACY_CHAIN, CheckpointRow, StoreReader
from chio_kernel._store_factory import StoreGate
from chio_kernel.canonical import canonical_json_str
from chio_kernel.proofs import (
    CONSISTENCY_SCHEMA,
    INCLUSION_SCHEMA,
    audit_path_in,
    build_checkpoint,
    checkpoint_sha256,
    consistency_links,
    extends_problem,
    hash_hex,
    leaf_hash,
    merkle_levels,
    merkle_root,
    receipt_leaf_hash,
    verify_checkpoint,
)
from chio_kernel.signing import verify_hex

__all__ = [
    "CHECKPOINT_EVERY_ENV",
    "CHECKPOINT_INTERVAL_ENV",
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "CheckpointReport",
    "Checkpoints",
    "checkpoint_settings",
    "witness_file",
]

DEFAULT_CHECKPOINT_EVERY = 256
DEFAULT_CHECKPOINT_INTERVAL = 2.0
CHECKPOINT_EVERY_ENV = "CHIO_CHECKPOINT_EVERY"
CHECKPOINT_INTERVAL_ENV = "CHIO_CHECKPOINT_INTERVAL"
WITNESS_FILE = "checkpoint-head.json"
_POLL = 0.25  # the cutter looks at the chain head this often (at most)
_RUNNING: weakref.WeakSet[Checkpoints] = weakref.WeakSet()  # services whose cutter thread may be running
_EXIT_WAIT = 5.0  # seconds the exit handler waits for a cut in progress, per kernel


@atexit.register
def _stop_cutters_before_exit() -> None:
    """Stop every cutter thread while the interpreter is still whole.

    A daemon thread caught by CPython's finalization in the middle of a cut (a signature in
    cryptography's Rust code, a SQLite statement) can abort the process with exit 134 after the
    program's work was done; ``atexit`` handlers run before finalization starts.
    """
    for service in list(_RUNNING):
        service.stop(timeout=_EXIT_WAIT)  # bounded: an exit never hangs on a cut (the store stays open)


def witness_file(data_dir: Path, shared_store: str | None) -> Path:
    """Where a kernel records its newest checkpoint: ``checkpoint-head.json`` beside its SQLite store, or
    ``checkpoint-head-<sha256 of the store's URL, password masked, 16 hex>.json`` for a PostgreSQL store
    (one data directory may serve several stores; each store's witness is its own)."""
    if shared_store is None:
        return data_dir / WITNESS_FILE
    return data_dir / f"checkpoint-head-{hashlib.sha256(shared_store.encode()).hexdigest()[:16]}.json"


def checkpoint_settings(every: int | None, interval: float | None) -> tuple[int, float]:
    """``(every, interval)`` from the arguments, else ``$CHIO_CHECKPOINT_EVERY`` / ``_INTERVAL``, else 256 / 2 s.

    Raises:
        KernelInputError: a negative or malformed value (0 turns automatic cutting off).
    """
    if every is None:
        raw = os.environ.get(CHECKPOINT_EVERY_ENV, "").strip()
        every = _parse(raw, int, CHECKPOINT_EVERY_ENV) if raw else DEFAULT_CHECKPOINT_EVERY
    if interval is None:
        raw = os.environ.get(CHECKPOINT_INTERVAL_ENV, "").strip()
        interval = _parse(raw, float, CHECKPOINT_INTERVAL_ENV) if raw else DEFAULT_CHECKPOINT_INTERVAL
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise KernelInputError(f"checkpoint_every must be a whole number >= 0 (0: off), got {every!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
        raise KernelInputError(f"checkpoint_interval must be seconds > 0, got {interval!r}")
    return every, float(interval)


def _parse(raw: str, kind: Callable[[str], Any], name: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise KernelInputError(f"${name} must be a number, got {raw!r}") from None


def _signed(row: CheckpointRow) -> dict[str, Any]:
    return {"body": json.loads(row.body), "signature": row.signature}


def _levels(row: CheckpointRow) -> list[list[bytes]]:
    return merkle_levels([bytes.fromhex(row.leaves[i:i + 64]) for i in range(0, len(row.leaves), 64)])


def _record(row: CheckpointRow, seq: int, levels: list[list[bytes]] | None = None) -> dict[str, Any]:
    """Upstream's inclusion proof record of receipt ``seq`` in checkpoint ``row`` (``levels``: its tree, if built)."""
    tree = levels if levels is not None else _levels(row)
    index = seq - row.batch_start_seq
    return {
        "checkpoint_seq": row.checkpoint_seq, "receipt_seq": seq, "leaf_index": index,
        "merkle_root": json.loads(row.body)["merkle_root"],
        "proof": {"tree_size": len(tree[0]), "leaf_index": index,
                  "audit_path": [hash_hex(h) for h in audit_path_in(tree, index)]},
    }


_plain_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class _HasFloat(Exception):
    pass


def _refuse_float(token: str) -> Any:
    raise _HasFloat


_no_float_loads = json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_float).decode


def stored_receipt_leaf(text: str) -> bytes:
    """``receipt_leaf_hash`` of a stored receipt text, without the general canonicaliser when it is not
    needed: with no float and no escaped surrogate (a key outside the Basic Multilingual Plane) in the
    text, sorted compact ``json.dumps`` is already RFC 8785 (see ``chio_kernel.canonical``)."""
    if "\\ud" not in text and "\\uD" not in text:
        try:
            return leaf_hash(_plain_dumps(receipt_wire_dict(_no_float_loads(text))).encode())
        except _HasFloat:
            pass
    return receipt_leaf_hash(json.loads(text))


def _leaves_of(rows: list[tuple[int, str]]) -> list[bytes]:
    leaves = []
    for i, (_, body) in enumerate(rows):
        leaves.append(stored_receipt_leaf(body))
        if i % 32 == 31:
            time.sleep(0)  # let an evaluation waiting for the GIL in
    return leaves


@dataclass
class CheckpointReport:
    """What :meth:`Checkpoints.verify` found: ``ok`` when ``problems`` is empty.

    Attributes:
        ok: no problem found.
        checkpoints: how many checkpoints were checked.
        covered: receipts some checkpoint covers (over every chain).
        problems: one sentence per problem, naming what is wrong.
        uncovered: the chains holding receipts that no checkpoint covers yet (the migrated fleet chain
            ``fleet-v1`` always: docs/fleet.md).
    """

    ok: bool
    checkpoints: int
    covered: int
    problems: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)


class Checkpoints:
    """The checkpoint service: cut, list, prove, verify (``Kernel.checkpoint_now``, ``list_checkpoints``,
    ``inclusion_proof``, ``consistency_proof``, ``verify_checkpoints`` delegate here)."""

    def __init__(
        self, gate: StoreGate, sign_hex: Callable[[bytes], str], key: str, witness: Path,
        clock: Callable[[], float], every: int, interval: float,
    ) -> None:
        """Cut with ``sign_hex`` as ``key``; ``witness``: the file recording the newest checkpoint cut
        (:func:`witness_file`); ``every`` 0 = no automatic cuts."""
        self._gate = gate
        self._sign_hex = sign_hex
        self.key = key
        self._witness = witness
        self._clock = clock
        self.every = every
        self.interval = interval
        self._last_cut = time.monotonic()
        self._cut_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- cutting ---

    def start(self) -> None:
        """Start the background cutter (a daemon thread that ends when the kernel is closed or dropped).

        A process forked from this one gets no cutter thread (threads do not cross ``fork``): the
        receipts it writes are covered by this process's cutter, or by the next cut on demand.
        """
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _unlock_in_child(ref))
        if self.every <= 0:
            return
        self._thread = threading.Thread(
            target=_run, args=(ref, self._stop, min(self.interval, _POLL)), name="chio-checkpoints", daemon=True,
        )
        _RUNNING.add(self)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background cutter, and wait for a cut in progress to end (the store is closed next:
        a connection closed under a running statement can crash the interpreter).

        Args:
            timeout: the longest wait in seconds (None: until the cut ends).
        """
        self._stop.set()
        _RUNNING.discard(self)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def cut_due(self) -> list[dict[str, Any]]:
        """Cut every full batch of ``every`` receipts, and the rest once ``interval`` has passed."""
        return self.cut(partial=time.monotonic() - self._last_cut >= self.interval)

    def cut(self, *, partial: bool = True) -> list[dict[str, Any]]:
        """Cut checkpoints over the committed receipts not yet covered, ``every`` receipts each (256
        when automatic cuts are off).

        Args:
            partial: also cut the last batch when it is short of ``every``.

        Returns:
            The new signed checkpoints, oldest first.
        """
        made: list[dict[str, Any]] = []
        batch = self.every or DEFAULT_CHECKPOINT_EVERY
        with self._cut_lock:
            while not self._stop.is_set() and (one := self._cut_one(batch, partial)) is not None:
                made.append(one)
            if made or partial:
                self._last_cut = time.monotonic()
        return made

    def _cut_one(self, every: int, partial: bool) -> dict[str, Any] | None:
        with self._gate.read() as st:
            last = st.last_checkpoint(self.key)
            start = last.batch_end_seq + 1 if last is not None else 1
            head = st.chain_head()[0]  # this kernel's chain
            pending = head - start + 1
            if pending <= 0 or (pending < every and not partial):
                return None
            end = min(head, start + every - 1)
            rows = st.chain_between(self.key, start, end)  # committed receipts only
        if [s for s, _ in rows] != list(range(start, end + 1)):
            return None  # a gap in the chain: cutting over it would sign a hole (verify names it)
        leaves = _leaves_of(rows)
        previous = json.loads(last.body) if last is not None else None
        signed = build_checkpoint(self._sign_hex, self.key, (last.checkpoint_seq if last else 0) + 1, start,
                                  leaves, int(self._clock()), previous)
        body = signed["body"]
        row = CheckpointRow(self.key, body["checkpoint_seq"], start, end, checkpoint_sha256(body),
                            canonical_json_str(body), signed["signature"], b"".join(leaves).hex())
        with self._gate.write() as w:
            now_last = w.last_checkpoint(self.key)
            if (now_last.sha256 if now_last else None) != (last.sha256 if last else None):
                return None  # another process of this kernel cut meanwhile; the next round goes on from it
            w.insert_checkpoint(row)
        self._write_witness(signed)
        return signed

    def _write_witness(self, signed: dict[str, Any]) -> None:
        """Record the newest checkpoint outside the store (atomically; best effort)."""
        try:
            tmp = self._witness.with_name(f"{self._witness.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(signed, sort_keys=True), encoding="utf-8")
            os.chmod(tmp, 0o600)
            tmp.replace(self._witness)
        except OSError:  # pragma: no cover - a read-only data directory: the store still has it
            pass

    # --- reading and proofs ---

    def stored(self, kernel_id: str | None, first: int = 1, last: int | None = None) -> list[dict[str, Any]]:
        """Signed checkpoints (of one kernel, or every kernel), oldest first."""
        with self._gate.read() as st:
            rows = st.checkpoints(kernel_id, first, last)
        return [_signed(r) for r in rows]

    def inclusion_proof(self, receipt_id: str) -> dict[str, Any]:
        """The inclusion proof of a receipt (cutting a checkpoint first when none covers it yet).

        Raises:
            KernelInputError: no such receipt.
        """
        with self._gate.read() as st:
            found = st.receipt_position(receipt_id)
            if found is None:
                raise KernelInputError(f"no receipt {receipt_id!r} in this kernel's store")
            chain, seq = found[0] or self.key, found[1]
            row = None if chain == LEGACY_CHAIN else st.checkpoint_covering(chain, seq)
        if row is None:
            row = self._cover(receipt_id, chain, seq)
        with self._gate.read() as st:
            text = st.chain_between(chain, seq, seq)[0][1]
        return {"schema": INCLUSION_SCHEMA, "receipt": receipt_wire_dict(json.loads(text)),
                "checkpoint": _signed(row), "proof": _record(row, seq)}

    def _cover(self, receipt_id: str, chain: str, seq: int) -> CheckpointRow:
        """Cut what is pending of this kernel's chain so that a checkpoint covers position ``seq`` of it."""
        if chain == LEGACY_CHAIN:
            raise KernelInputError(
                f"receipt {receipt_id!r} is in the chain {LEGACY_CHAIN} migrated from the fleet's single chain, which "
                "no kernel checkpoints: `chio-durable receipts verify` checks it by its hash links and signatures")
        if chain != self.key:
            raise KernelInputError(
                f"receipt {receipt_id!r} is in kernel {chain}'s chain, which has not checkpointed it yet: "
                "only that kernel cuts its checkpoints (ask it for the proof, or retry in a few seconds)")
        self.cut()
        with self._gate.read() as st:
            row = st.checkpoint_covering(chain, seq)
        if row is None:
            raise KernelInputError(f"receipt {receipt_id!r} (position {seq}) cannot be checkpointed: the chain has "
                                   "a gap before it (run `chio-durable receipts verify`)")
        return row

    def consistency_proof(self, first: int, last: int) -> dict[str, Any]:
        """Checkpoints ``first..last`` of this kernel and the links showing each extends the one before.

        Raises:
            KernelInputError: bad numbers, or a checkpoint not (uniquely) stored.
        """
        for name, value in (("from", first), ("to", last)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KernelInputError(f"{name} must be a checkpoint number >= 1, got {value!r}")
        if last < first:
            raise KernelInputError(f"from ({first}) must not be after to ({last})")
        checkpoints = self.stored(self.key, first, last)
        numbers = [c["body"]["checkpoint_seq"] for c in checkpoints]
        if numbers != list(range(first, last + 1)):
            raise KernelInputError(
                f"this kernel's checkpoints {first}..{last} are not all stored exactly once "
                f"(found {numbers[:10]}{'…' if len(numbers) > 10 else ''}); see `chio-durable checkpoints list`"
            )
        return {
            "schema": CONSISTENCY_SCHEMA, "kernel_id": self.key, "from_checkpoint_seq": first,
            "to_checkpoint_seq": last, "checkpoints": checkpoints,
            "links": consistency_links([c["body"] for c in checkpoints]),
        }

    def evidence_parts(
        self, receipt_ids: list[str]
    ) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Those of ``receipt_ids`` in this kernel's chain, as ``(position, stored form)``; the contiguous
        run of this kernel's checkpoints that covers them; one inclusion proof record per covered receipt
        (upstream's shape). Receipts of other kernels' chains are left out: their kernels export them."""
        receipts: list[tuple[int, dict[str, Any]]] = []
        records: list[dict[str, Any]] = []
        used: list[int] = []
        with self._gate.read() as st:
            row: CheckpointRow | None = None
            levels: list[list[bytes]] = []
            for receipt_id in receipt_ids:
                found = st.receipt_position(receipt_id)
                if found is None or (found[0] or self.key) != self.key:
                    continue
                seq = found[1]
                text = st.chain_between(self.key, seq, seq)
                receipts.append((seq, json.loads(text[0][1])))
                if row is None or not row.batch_start_seq <= seq <= row.batch_end_seq:
                    row = st.checkpoint_covering(self.key, seq)
                    if row is None:
                        continue
                    levels = _levels(row)
                records.append(_record(row, seq, levels))
                used.append(row.checkpoint_seq)
        checkpoints = self.stored(self.key, min(used), max(used)) if used else []
        return receipts, checkpoints, records

    # --- the store checks (receipts verify) ---

    def verify(self, known_keys: Collection[str], registered: Collection[str] | None,
               anchors: Collection[str] | None) -> CheckpointReport:
        """Check every stored checkpoint against the receipts, this kernel's witness file, the key rows
        and the signers of the receipts no checkpoint covers yet.

        Args:
            known_keys: keys whose signatures count (this kernel's, trusted and registered ones).
            registered: the store's registered key rows (a fleet store), else None.
            anchors: keys the caller vouches for; every registered key outside them is reported.
        """
        self._gate.check_open()
        report = CheckpointReport(True, 0, 0)
        witness = self._read_witness()  # before the snapshot: the file is written after its commit
        with self._gate.store.snapshot() as st:
            chains = {c for c, _, _ in st.chains()}
            for kernel_id in sorted(chains | set(st.checkpoint_kernels())):
                end = st.chain_end(kernel_id)  # what the table holds (a deleted tail is gone from it)
                check = _KernelCheck(st, kernel_id, end)
                for same in _by_number(st, kernel_id):
                    check.add(same)
                covered = min(check.newest_end, end)
                report.checkpoints += check.count
                report.covered += covered
                report.problems += check.finish()
                if kernel_id in chains:  # (on SQLite, every kernel's checkpoints cover the one chain)
                    report.uncovered += [kernel_id] if covered < end and check.count == 0 else []
                    report.problems += _signer_problems(st, kernel_id, covered, known_keys)
            report.problems += self._witness_problems(witness, st)
        if registered is not None and anchors is not None:
            report.problems += key_row_problems(registered, set(anchors) | {self.key})
        report.ok = not report.problems
        return report

    def _read_witness(self) -> dict[str, Any] | str | None:
        """The witness file's checkpoint body (verified), None when there is none, or what is wrong with it."""
        try:
            return verify_checkpoint(json.loads(self._witness.read_text(encoding="utf-8")), self.key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            return f"the checkpoint witness file {self._witness} is unreadable or not signed by this kernel: {err}"

    def _witness_problems(self, body: dict[str, Any] | str | None, st: StoreReader) -> list[str]:
        """The newest checkpoint this kernel recorded outside the store must be in it, unchanged."""
        if body is None:
            return []
        if isinstance(body, str):
            return [body]
        seq, sha = body["checkpoint_seq"], checkpoint_sha256(body)
        same_seq = st.checkpoints(self.key, seq, seq)
        if not same_seq:
            last = st.last_checkpoint(self.key)
            newest = last.checkpoint_seq if last is not None else 0
            return [f"checkpoints were deleted from the store: this kernel signed checkpoint {seq} (receipts up to "
                    f"seq {body['batch_end_seq']}, recorded in {self._witness}), but the store's newest is "
                    f"{newest or 'none'}"]
        if all(r.sha256 != sha for r in same_seq):
            return [f"equivocation: the store's checkpoint {seq} (root {json.loads(same_seq[0].body)['merkle_root']}) "
                    f"differs from the one this kernel signed and recorded in {self._witness} "
                    f"(root {body['merkle_root']})"]
        return []


def _unlock_in_child(ref: weakref.ref[Checkpoints]) -> None:
    """After ``fork``: a lock the parent's cutter held at that moment would never be released here."""
    service = ref()
    if service is not None:
        service._cut_lock = threading.Lock()


def _run(ref: weakref.ref[Checkpoints], stop: threading.Event, poll: float) -> None:
    """The cutter thread: cut what is due every ``poll`` seconds until stopped, closed or dropped."""
    while not stop.wait(poll):
        service = ref()
        if service is None:
            return
        try:
            service.cut_due()
        except RuntimeError:  # the kernel was closed
            return
        except Exception:  # noqa: BLE001 - a store hiccup: the next round tries again
            pass
        del service


_PAGE = 500  # checkpoints read per query by the checks


def _by_number(st: StoreReader, kernel_id: str) -> Iterator[list[CheckpointRow]]:
    """A kernel's stored checkpoints, grouped by number (several: equivocation), read a page at a time."""
    after = 0
    while rows := st.checkpoints_after(kernel_id, after, _PAGE):
        groups: list[list[CheckpointRow]] = []
        for r in rows:
            if groups and groups[-1][0].checkpoint_seq == r.checkpoint_seq:
                groups[-1].append(r)
            else:
                groups.append([r])
        if len(rows) == _PAGE and len(groups) > 1:
            groups.pop()  # that number may go on in the next page
        yield from groups
        after = groups[-1][0].checkpoint_seq


class _KernelCheck:
    """One kernel's checkpoints, in number order: equivocation, forged rows, breaks in the chain of
    checkpoints, and the receipts they cover missing or changed."""

    def __init__(self, st: StoreReader, kernel_id: str, head: int) -> None:
        """``head``: the newest position of the kernel's chain that the store holds."""
        self._st, self._kernel_id, self._head = st, kernel_id, head
        self._who = f"kernel {kernel_id}"
        self._prev: dict[str, Any] | None = None
        self._last = 0
        self.count = 0
        self.newest_end = 0
        self._newest_seq = 0
        self._problems: list[str] = []

    def add(self, same: list[CheckpointRow]) -> None:
        """The stored checkpoints with the next number."""
        seq, who = same[0].checkpoint_seq, self._who
        self.count += len(same)
        for r in same:
            if r.batch_end_seq > self.newest_end:
                self.newest_end, self._newest_seq = r.batch_end_seq, seq
        gap, self._last = seq != self._last + 1, seq
        if len(same) > 1:
            roots = ", ".join(json.loads(r.body).get("merkle_root", "?") for r in same)
            self._problems.append(f"equivocation: {who} has {len(same)} different checkpoints numbered {seq} "
                                  f"(roots {roots})")
            self._prev = None
            return
        row = same[0]
        try:
            body = verify_checkpoint(_signed(row), self._kernel_id)
        except ProofError as err:
            self._problems.append(f"forged checkpoint row: {who} checkpoint {seq}: {err}")
            self._prev = None
            return
        if (body["checkpoint_seq"], body["batch_start_seq"], body["batch_end_seq"], checkpoint_sha256(body)) != (
            row.checkpoint_seq, row.batch_start_seq, row.batch_end_seq, row.sha256
        ):
            self._problems.append(f"forged checkpoint row: {who} checkpoint {seq}: its columns differ from its signed body")
            return
        if self._prev is None and gap:
            self._problems.append(f"{who}: checkpoints before {seq} are missing from the store")
        elif self._prev is not None and (why := extends_problem(self._prev, body)) is not None:
            self._problems.append(f"{who}: {why}")
        self._problems += _coverage_problems(self._st, self._kernel_id, body, row, self._head)
        self._prev = body

    def finish(self) -> list[str]:
        """Every problem found, a deleted tail or a truncated table first."""
        return _tail_problem(self._who, self._newest_seq, self.newest_end, self._head) + self._problems


def _tail_problem(who: str, newest_seq: int, newest_end: int, head: int) -> list[str]:
    """Receipts a checkpoint covers beyond the chain's newest stored one: a deleted tail, or a truncated table."""
    if head >= newest_end:
        return []
    if head == 0:
        return [f"the receipt table is empty (truncated), but {who} checkpoint {newest_seq} covers "
                f"receipts up to seq {newest_end} of its chain"]
    return [f"the newest receipts were deleted: {who}'s chain ends at seq {head}, but its checkpoint "
            f"{newest_seq} covers receipts up to seq {newest_end}: seq "
            f"{_ranges(list(range(head + 1, newest_end + 1)))} are missing"]


def _coverage_problems(st: StoreReader, kernel_id: str, body: Mapping[str, Any], row: CheckpointRow,
                       head: int) -> list[str]:
    """The receipts a checkpoint covers (up to the chain's newest) must all be there and hash to its root."""
    who = f"kernel {kernel_id}"
    start, end, seq = body["batch_start_seq"], body["batch_end_seq"], body["checkpoint_seq"]
    if head < end:  # reported once for the kernel (_tail_problem); what is left is still checked
        if head < start:
            return []
        end = head
    rows = st.chain_between(kernel_id, start, end)
    present = {s for s, _ in rows}
    missing = [s for s in range(start, end + 1) if s not in present]
    if missing:
        return [f"receipts were deleted: {who} checkpoint {seq} covers receipts {start}-{body['batch_end_seq']}, "
                f"but seq {_ranges(missing)} {'is' if len(missing) == 1 else 'are'} missing"]
    leaves = _leaves_of(rows)
    if end == body["batch_end_seq"] and hash_hex(merkle_root(leaves)) == body["merkle_root"]:
        if b"".join(leaves).hex() != row.leaves:
            return [f"{who} checkpoint {seq}: its stored leaf hashes were altered (proofs from it would fail)"]
        return []
    changed = next((start + i for i, h in enumerate(leaves) if row.leaves[i * 64:(i + 1) * 64] != h.hex()), None)
    if changed is None and end < body["batch_end_seq"]:
        return []  # the part still there is intact
    return [f"receipt seq {changed or start} differs from what {who} checkpoint {seq} signed "
            "(altered, replaced or inserted)"]


def _ranges(seqs: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (the first ten runs)."""
    runs: list[str] = []
    first = prev = seqs[0]
    for s in seqs[1:] + [0]:
        if s != prev + 1:
            runs.append(str(first) if first == prev else f"{first}-{prev}")
            first = s
        prev = s
    return ", ".join(runs[:10]) + (" …" if len(runs) > 10 else "")


def _signer_problems(st: StoreReader, kernel_id: str, covered: int, known_keys: Collection[str]) -> list[str]:
    """Each receipt of a chain after its newest checkpoint must be signed by the registered key it names."""
    problems: list[str] = []
    where = f" of the chain {kernel_id}" if kernel_id == LEGACY_CHAIN else f" of kernel {kernel_id}'s chain"
    while rows := st.chain_receipts(kernel_id, covered, _PAGE):
        for seq, text in rows:
            why = signer_problem(json.loads(text), known_keys)
            if why is not None:
                problems.append(f"receipt seq {seq}{where}: {why}")
        covered = rows[-1][0]
    return problems


def signer_problem(data: Mapping[str, Any], known_keys: Collection[str]) -> str | None:
    """Why a receipt (stored form) is not signed by the known key it names, or None."""
    key, rid = str(data.get("kernel_key")), data.get("id")
    if key not in known_keys:
        return f"receipt {rid} names kernel key {key}, which is not a registered or trusted key"
    try:
        message = receipt_signing_bytes(dict(data))
    except (TypeError, ValueError) as err:
        return f"receipt {rid} is malformed: {err}"
    signature = str(data.get("signature"))
    if verify_hex(key, signature, message):
        return None
    other = next((k for k in known_keys if k != key and verify_hex(k, signature, message)), None)
    if other is not None:
        return (f"receipt {rid} was inserted under registered key {key} but was signed with key "
                f"{other}")
    return f"receipt {rid} names registered key {key} but was not signed with it (forged or altered)"


def key_row_problems(registered: Collection[str], anchors: Collection[str]) -> list[str]:
    """Registered key rows that no anchor (this kernel's key, the trusted keys) vouches for."""
    return [f"forged key row: kernel key {k} is registered in the store but is not one of the trusted "
            "fleet keys (pass every fleet kernel's key with --trusted-key)" for k in sorted(registered)
            if k not in anchors]
