"""Signed Merkle checkpoints on the SQLite store: cutting, proofs, and what ``verify_checkpoints`` catches."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chio_kernel import Kernel, ProofError
from chio_kernel._receipts import CallRecord, build_receipt
from chio_kernel.canonical import canonical_json, canonical_json_str
from chio_kernel.proofs import build_checkpoint, checkpoint_sha256, verify_consistency, verify_inclusion
from chio_kernel.signing import Signer
from kernel_helpers import grant, scope


def _kernel(home: Path, every: int = 4) -> Kernel:
    return Kernel(home, checkpoint_every=every, checkpoint_interval=3600)


def _evaluate(kernel: Kernel, n: int) -> list[str]:
    token = kernel.create_capability("agent:a", scope(grant()), 3600)
    return [kernel.evaluate(token.id, "fs", "read", {"i": i, "note": "é"}).id for i in range(n)]


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "kernel.db", isolation_level=None)


def _problems(kernel: Kernel) -> str:
    report = kernel.verify_checkpoints()
    assert not report.ok
    return "\n".join(report.problems)


def test_checkpoints_are_cut_every_n_chained_and_verify(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 10)
        kernel.checkpoint_now()
        cps = kernel.list_checkpoints()
        assert [(c["body"]["batch_start_seq"], c["body"]["batch_end_seq"]) for c in cps] == [(1, 4), (5, 8), (9, 10)]
        assert cps[1]["body"]["previous_checkpoint_sha256"] == checkpoint_sha256(cps[0]["body"])
        # upstream's serialisation: Hash as "0x" + hex, digests and keys as plain hex
        assert len(cps[0]["body"]["merkle_root"]) == 66 and cps[0]["body"]["merkle_root"].startswith("0x")
        assert len(cps[1]["body"]["previous_checkpoint_sha256"]) == 64
        assert cps[0]["body"]["kernel_key"] == kernel.public_key_hex
        assert set(cps[0]["body"]) == {"schema", "checkpoint_seq", "batch_start_seq", "batch_end_seq", "tree_size",
                                       "merkle_root", "issued_at", "kernel_key"}
        report = kernel.verify_checkpoints()
        assert report.ok and report.checkpoints == 3 and report.covered == 10
        assert kernel.checkpoint_now() == []  # nothing pending


def test_the_background_cutter_checkpoints_after_the_interval(chio_home: Path) -> None:
    with Kernel(chio_home, checkpoint_every=1000, checkpoint_interval=0.2) as kernel:
        _evaluate(kernel, 3)
        deadline = time.monotonic() + 10
        while not kernel.list_checkpoints() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c["body"]["batch_end_seq"] for c in kernel.list_checkpoints()] == [3]


def test_bad_checkpoint_settings_are_refused(chio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="checkpoint_every must be a whole number >= 0"):
        Kernel(chio_home, checkpoint_every=-1)
    monkeypatch.setenv("CHIO_CHECKPOINT_INTERVAL", "soon")
    with pytest.raises(ValueError, match=r"\$CHIO_CHECKPOINT_INTERVAL must be a number"):
        Kernel(chio_home)


def test_deleted_tail_after_a_checkpoint_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 8)
        kernel.checkpoint_now()
        _db(chio_home).execute("DELETE FROM receipts WHERE seq > 5")
        assert kernel.verify_chain().ok  # a hash chain alone cannot see it
        problems = _problems(kernel)
        assert "the newest receipts were deleted" in problems and "seq 6-8 are missing" in problems


def test_truncated_receipt_table_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        _db(chio_home).execute("DELETE FROM receipts")
        assert kernel.verify_chain().ok
        assert "the receipt table is empty (truncated)" in _problems(kernel)


def test_deleted_checkpoints_are_named_through_the_witness_file(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 8)
        kernel.checkpoint_now()
        db = _db(chio_home)
        db.execute("DELETE FROM receipts WHERE seq > 4")
        db.execute("DELETE FROM checkpoints WHERE checkpoint_seq = 2")
        assert "checkpoints were deleted from the store: this kernel signed checkpoint 2" in _problems(kernel)


def test_forged_checkpoint_row_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        forger = Signer(Ed25519PrivateKey.generate())
        row = _db(chio_home).execute("SELECT body FROM checkpoints").fetchone()
        body = json.loads(row[0])
        body["merkle_root"] = "00" * 32
        _db(chio_home).execute("UPDATE checkpoints SET body = ?, signature = ?",
                               (canonical_json_str(body), forger.sign_hex(canonical_json(body))))
        assert "forged checkpoint row" in _problems(kernel)


def _insert_receipt(home: Path, kernel: Kernel, signer: Signer, named_key: str) -> str:
    """Append a receipt naming ``named_key`` but signed by ``signer``, chained correctly."""
    db = _db(home)
    seq, prev = db.execute("SELECT seq, hash FROM chain_head").fetchone()
    call = CallRecord("cap-x", "fs", "read", {"a": 1}, __import__("hashlib").sha256(b'{"a":1}').hexdigest())
    receipt, stored, chain_hash = build_receipt(signer.sign_hex, named_key, prev, time.time(), call,
                                                {"verdict": "allow"}, "0" * 64)
    db.execute("INSERT INTO receipts(seq, id, capability_id, verdict, chain_hash, body) VALUES (?, ?, ?, ?, ?, ?)",
               (seq + 1, receipt.id, "cap-x", "allow", chain_hash, stored))
    return receipt.id


def test_receipt_inserted_under_a_registered_key_it_was_not_signed_with_is_named(chio_home: Path,
                                                                                 tmp_path: Path) -> None:
    other = Kernel(tmp_path / "other", checkpoint_every=0)
    with Kernel(chio_home, trusted_keys=[other.public_key_hex], checkpoint_every=4,
                checkpoint_interval=3600) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        rid = _insert_receipt(chio_home, kernel, other._signer, kernel.public_key_hex)
        problems = _problems(kernel)
        assert f"receipt {rid} was inserted under registered key {kernel.public_key_hex[:16]}" in problems
        assert f"signed with key {other.public_key_hex[:16]}" in problems
        stranger = Signer(Ed25519PrivateKey.generate())
        rid2 = _insert_receipt(chio_home, kernel, stranger, kernel.public_key_hex)
        assert f"receipt {rid2} names registered key {kernel.public_key_hex} but was not signed with it" in (
            _problems(kernel))
    other.close()


def test_receipt_replaced_under_a_checkpoint_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        db = _db(chio_home)
        body = json.loads(db.execute("SELECT body FROM receipts WHERE seq = 3").fetchone()[0])
        body["timestamp"] += 1
        db.execute("UPDATE receipts SET body = ? WHERE seq = 3", (json.dumps(body),))
        assert "receipt seq 3 differs from what kernel" in _problems(kernel)


def _fork(kernel: Kernel, byte: bytes) -> tuple[dict[str, Any], tuple[str, str, str, str]]:
    """Checkpoint 1 over 4 other leaves, signed by the kernel's own key: (body, (sha256, body, signature, leaves))."""
    fork = build_checkpoint(kernel._signer.sign_hex, kernel.public_key_hex, 1, 1, [byte * 32] * 4,
                            int(time.time()), None)
    body = fork["body"]
    return body, (checkpoint_sha256(body), canonical_json_str(body), fork["signature"], (byte * 32 * 4).hex())


def test_equivocation_two_checkpoints_with_one_number_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        body, cols = _fork(kernel, b"\x01")
        _db(chio_home).execute("INSERT INTO checkpoints VALUES (?, 1, 1, 4, ?, ?, ?, ?)", (kernel.public_key_hex, *cols))
        problems = _problems(kernel)
        assert "equivocation" in problems and "2 different checkpoints numbered 1" in problems
        assert body["merkle_root"] in problems


def test_equivocation_against_the_witness_file_is_named(chio_home: Path) -> None:
    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 4)
        kernel.checkpoint_now()
        _db(chio_home).execute("UPDATE checkpoints SET sha256 = ?, body = ?, signature = ?, leaves = ?",
                               _fork(kernel, b"\x02")[1])
        assert "equivocation: the store's checkpoint 1" in _problems(kernel)


def _flips(doc: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The document with each byte of its compact JSON flipped (None where it no longer parses)."""
    text = json.dumps(doc, separators=(",", ":")).encode()
    out: list[dict[str, Any] | None] = []
    for i in range(len(text)):
        flipped = bytearray(text)
        flipped[i] ^= 0x01
        try:
            out.append(json.loads(bytes(flipped)))
        except ValueError:
            out.append(None)
    return out


def test_inclusion_proof_verifies_with_only_the_public_key_and_fails_for_any_flipped_byte(chio_home: Path) -> None:
    with _kernel(chio_home, every=8) as kernel:
        ids = _evaluate(kernel, 6)
        proof = kernel.inclusion_proof(ids[4])  # no checkpoint covered it yet: one is cut
        key = kernel.public_key_hex
    assert verify_inclusion(proof, key)["id"] == ids[4]
    assert proof["proof"]["proof"]["tree_size"] == 6 and len(proof["proof"]["proof"]["audit_path"]) == 2  # leaf 4 of 6: its pair is carried up once
    for flipped in _flips(proof):
        if flipped is None:
            continue
        with pytest.raises(ProofError):
            verify_inclusion(flipped, key)
    with pytest.raises(ProofError, match="names kernel key"):
        verify_inclusion(proof, "ab" * 32)


def test_consistency_proof_between_checkpoints_1_and_5_verifies(chio_home: Path) -> None:
    with _kernel(chio_home, every=3) as kernel:
        _evaluate(kernel, 15)
        kernel.checkpoint_now()
        proof = kernel.consistency_proof(1, 5)
        key = kernel.public_key_hex
        with pytest.raises(ValueError, match="must not be after"):
            kernel.consistency_proof(5, 1)
        with pytest.raises(ValueError, match="not all stored exactly once"):
            kernel.consistency_proof(1, 6)
    first, last = verify_consistency(proof, key)
    assert (first["checkpoint_seq"], last["checkpoint_seq"], last["batch_end_seq"]) == (1, 5, 15)
    assert len(proof["links"]) == 4
    for flipped in _flips(proof):
        if flipped is not None:
            with pytest.raises(ProofError):
                verify_consistency(flipped, key)


CHILD = """
import sys
from chio_kernel import Kernel
k = Kernel(sys.argv[1], checkpoint_every=16, checkpoint_interval=0.05)
i = 0
while True:
    sys.stdout.write(k.evaluate(sys.argv[2], "fs", "read", {"i": i}).id + "\\n")
    sys.stdout.flush()
    i += 1
"""


def test_kill_9_while_cutting_leaves_everything_verifiable(chio_home: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    with Kernel(chio_home, checkpoint_every=0) as k:
        token = k.create_capability("agent:a", scope(grant()), 3600)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(chio_home), token.id], stdout=subprocess.PIPE,
                            text=True)
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if len(seen) >= 400 and _db(chio_home).execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] >= 3:
            break
    os.kill(proc.pid, signal.SIGKILL)  # the cutter thread and the evaluations are both mid-flight
    proc.wait(timeout=30)
    with Kernel(chio_home, checkpoint_every=16, checkpoint_interval=3600) as reopened:
        assert reopened.verify_chain().ok
        report = reopened.verify_checkpoints()
        assert report.ok and report.checkpoints >= 3, report
        for rid in (seen[0], seen[len(seen) // 2], seen[-1]):
            verify_inclusion(reopened.inclusion_proof(rid), reopened.public_key_hex)
        assert reopened.verify_checkpoints().ok


@pytest.mark.parametrize("params", [
    {"i": 1}, {"x": 1.5, "y": [1e21, 1e-7, -0.0]}, {"é": "ü", "n": 2**70}, {"\U0001f600": 1, "\ue000": 2},
    {"s": "\x1f\"\\/\u2028"}, {"nested": {"b": [1, {"a": None}]}},
])
def test_the_cutters_leaf_shortcut_equals_the_specified_leaf(chio_home: Path, params: dict[str, Any]) -> None:
    from chio_kernel._checkpoints import stored_receipt_leaf
    from chio_kernel.proofs import receipt_leaf_hash

    with Kernel(chio_home, checkpoint_every=0) as kernel:
        token = kernel.create_capability("agent:a", scope(grant()), 3600)
        kernel.evaluate(token.id, "fs", "read", params)
        kernel.evaluate(token.id, "fs", "read", params, metadata={"flow_run_id": "r", "k": "\U0001f600"})
        with kernel._gate.read() as st:
            texts = [t for _, t in st.chain_between(kernel.public_key_hex, 1, 2)]
        for text in texts:
            assert stored_receipt_leaf(text) == receipt_leaf_hash(json.loads(text))


def test_the_checks_read_checkpoints_a_page_at_a_time(chio_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import chio_kernel._checkpoints as cmod

    monkeypatch.setattr(cmod, "_PAGE", 3)
    with Kernel(chio_home, checkpoint_every=2, checkpoint_interval=3600) as kernel:
        _evaluate(kernel, 20)
        kernel.checkpoint_now()
        report = kernel.verify_checkpoints()
        assert report.ok and report.checkpoints == 10 and report.covered == 20
        _, cols = _fork(kernel, b"\x03")  # a second row numbered 3: its two rows straddle the first page
        _db(chio_home).execute("INSERT INTO checkpoints VALUES (?, 3, 1, 4, ?, ?, ?, ?)", (kernel.public_key_hex, *cols))
        problems = _problems(kernel)
        assert "2 different checkpoints numbered 3" in problems
        assert kernel.verify_checkpoints().checkpoints == 11


def test_a_forked_child_can_cut_even_if_the_parent_was_cutting(chio_home: Path) -> None:
    import multiprocessing

    with _kernel(chio_home) as kernel:
        _evaluate(kernel, 5)
        kernel._checkpoints._cut_lock.acquire()  # as if the parent's cutter were mid-cut at fork time
        try:
            proc = multiprocessing.get_context("fork").Process(target=_cut_in_child, args=(kernel,))
            proc.start()
            proc.join(timeout=60)
            if proc.is_alive():  # deadlocked on the inherited lock
                proc.kill()
        finally:
            kernel._checkpoints._cut_lock.release()
        assert proc.exitcode == 0
        assert [c["body"]["batch_end_seq"] for c in kernel.list_checkpoints()] == [4, 5]


def _cut_in_child(kernel: Kernel) -> None:
    kernel.checkpoint_now()



def _run_script(script: str, home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -c script home`` in a new interpreter that imports ``kernel_helpers`` from here."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path})


CLOSE_WHILE_CUTTING = """
import random, sys, time
from pathlib import Path
from chio_kernel import Kernel
from kernel_helpers import grant, scope

home = Path(sys.argv[1])
with Kernel(home, checkpoint_every=0) as kernel:
    token = kernel.create_capability("agent:a", scope(grant()), 3600)
    for i in range(2000):  # uncovered receipts: a cut reads them all
        kernel.evaluate(token.id, "fs", "read", {"i": i})
rng = random.Random(7)
for i in range(60):
    kernel = Kernel(home, checkpoint_every=10**6, checkpoint_interval=0.001)  # the cutter wakes every 1 ms
    time.sleep(rng.uniform(0, 0.03))
    kernel.close()
print("ok")
"""


def test_closing_a_kernel_while_its_cutter_runs_never_crashes(chio_home: Path) -> None:
    # 60 kernels closed at random points of their cutter's work, in a subprocess. close() waits for a
    # cut in progress before it closes the store: a SQLite connection closed under
    # the cutter's running statement crashed the interpreter (SIGSEGV), e.g. in the CLI, which closes
    # its kernel when a command ends
    done = _run_script(CLOSE_WHILE_CUTTING, chio_home, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", f"exit {done.returncode}: {done.stderr[-2000:]}"


EXIT_WITH_THE_CUTTER_RUNNING = """
import atexit, sys, threading

def cutters_left() -> None:  # registered before chio_kernel's handler, so it runs after it
    alive = [t.name for t in threading.enumerate() if t.name == "chio-checkpoints"]
    print("cutters running before finalization:", len(alive), flush=True)

atexit.register(cutters_left)
from pathlib import Path
from chio_kernel import Kernel
from kernel_helpers import grant, scope

kernel = Kernel(Path(sys.argv[1]), checkpoint_every=10**6, checkpoint_interval=0.001)  # never closed
token = kernel.create_capability("agent:a", scope(grant()), 3600)
for i in range(300):
    kernel.evaluate(token.id, "fs", "read", {"i": i})
"""


def test_a_kernel_left_open_stops_its_cutter_before_the_interpreter_finalizes(chio_home: Path) -> None:
    # A program that never closes its kernel (an example, a notebook): the cutter is a daemon thread, and
    # one caught mid-cut (a signature, a SQLite statement) by CPython's finalization can abort the
    # process after its work was done. chio_kernel stops every cutter in an atexit handler.
    done = _run_script(EXIT_WITH_THE_CUTTER_RUNNING, chio_home, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "cutters running before finalization: 0", done.stdout + done.stderr
