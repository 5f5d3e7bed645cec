"""The checkpoint commands: ``checkpoints list|show|cut|consistency``, ``receipts proof|verify-proof``,
``receipts verify`` naming a deleted tail, and ``receipts export --evidence`` / ``verify-evidence``."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from chio_kernel import Kernel, ProofError, verify_evidence
from cli_run import run_cli
from kernel_helpers import grant, scope


@pytest.fixture
def home(chio_home: Path) -> dict[str, object]:
    """Two capabilities (b attenuated from a), 10 receipts, checkpoints of 4 cut."""
    with Kernel(chio_home, checkpoint_every=4, checkpoint_interval=3600) as k:
        a = k.create_capability("agent:a", scope(grant()), 3600)
        b = k.attenuate_capability(a.id, scope(grant()))
        ids = [k.evaluate(a.id, "fs", "read", {"i": i}).id for i in range(6)]
        ids += [k.evaluate(b.id, "fs", "read", {"i": i}, metadata={"flow_run_id": "fr-1"}).id for i in range(4)]
        k.checkpoint_now()
        return {"dir": str(chio_home), "key": k.public_key_hex, "a": a.id, "b": b.id, "ids": ids}


def _cli(home: dict[str, object], *args: str) -> tuple[int, str, str]:
    r = run_cli(*args, "--data-dir", str(home["dir"]), CHIO_CHECKPOINT_EVERY="0")
    return r.returncode, r.stdout, r.stderr


def test_checkpoints_list_show_and_cut(home: dict[str, object]) -> None:
    code, out, _ = _cli(home, "checkpoints", "list", "--json")
    assert code == 0 and [c["body"]["batch_end_seq"] for c in json.loads(out)] == [4, 8, 10]
    code, out, _ = _cli(home, "checkpoints", "list")
    assert code == 0 and "this kernel" in out and "5-8" in out
    code, out, _ = _cli(home, "checkpoints", "show", "2")
    assert code == 0 and json.loads(out)["body"]["checkpoint_seq"] == 2
    code, _, err = _cli(home, "checkpoints", "show", "9")
    assert code == 1 and "no checkpoint 9 of this kernel" in err
    code, out, _ = _cli(home, "checkpoints", "cut")
    assert code == 0 and "nothing to checkpoint" in out


def test_receipt_proof_and_verify_proof(home: dict[str, object], tmp_path: Path) -> None:
    proof_file = tmp_path / "proof.json"
    code, _, err = _cli(home, "receipts", "proof", str(home["ids"][5]), "--out", str(proof_file))  # type: ignore[index]
    assert code == 0, err
    r = run_cli("receipts", "verify-proof", str(proof_file), "--public-key", str(home["key"]))
    assert r.returncode == 0 and "inclusion proof ok" in r.stdout and "checkpoint 2" in r.stdout
    doc = json.loads(proof_file.read_text())
    doc["receipt"]["tool_name"] = "write"
    proof_file.write_text(json.dumps(doc))
    r = run_cli("receipts", "verify-proof", str(proof_file), "--public-key", str(home["key"]))
    assert r.returncode == 1 and "the proof does not verify" in r.stderr and "invalid signature" in r.stderr
    cons = tmp_path / "cons.json"
    assert _cli(home, "checkpoints", "consistency", "1", "3", "--out", str(cons))[0] == 0
    r = run_cli("receipts", "verify-proof", str(cons), "--public-key", str(home["key"]), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "kind": "consistency", "from": 1, "to": 3}
    code, _, err = _cli(home, "receipts", "proof", "rcpt-nope")
    assert code == 1 and "no receipt 'rcpt-nope'" in err


def test_receipts_verify_names_the_deleted_tail(home: dict[str, object]) -> None:
    code, out, _ = _cli(home, "receipts", "verify")
    assert code == 0 and "3 checkpoints cover 10 of them" in out
    sqlite3.connect(Path(str(home["dir"])) / "kernel.db", isolation_level=None).execute(
        "DELETE FROM receipts WHERE seq > 7")
    code, out, err = _cli(home, "receipts", "verify")
    assert code == 1
    assert "the newest receipts were deleted" in err and "seq 8-10 are missing" in err
    code, out, _ = _cli(home, "receipts", "verify", "--json")
    assert code == 1 and json.loads(out)["checkpoints"]["ok"] is False


def test_evidence_export_by_run_verifies_offline_and_fails_after_any_edit(home: dict[str, object],
                                                                         tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    code, _, err = _cli(home, "receipts", "export", "--evidence", str(ev), "--flow-run", "fr-1")
    assert code == 0, err
    manifest = json.loads((ev / "manifest.json").read_text())
    assert manifest["counts"]["toolReceipts"] == 4 and manifest["counts"]["inclusionProofs"] == 4
    assert manifest["counts"]["capabilityLineage"] == 2  # b and its parent a
    assert manifest["query"] == {"metadata": {"flow_run_id": "fr-1"}}
    r = run_cli("receipts", "verify-evidence", str(ev), "--public-key", str(home["key"]))
    assert r.returncode == 0 and "evidence ok: 4 receipts" in r.stdout
    assert verify_evidence(ev, str(home["key"])).checkpoints == 2  # receipts 7-10: checkpoints 2 and 3
    for path in sorted(ev.iterdir()):
        data = path.read_bytes()
        for i in range(0, len(data), max(1, len(data) // 40)):  # spread over each file
            edited = bytearray(data)
            edited[i] ^= 0x01
            path.write_bytes(bytes(edited))
            with pytest.raises(ProofError):
                verify_evidence(ev, str(home["key"]))
        path.write_bytes(data)
    verify_evidence(ev, str(home["key"]))
    (ev / "extra.txt").write_text("x")
    with pytest.raises(ProofError, match="files not in the manifest"):
        verify_evidence(ev)
    (ev / "extra.txt").unlink()
    (ev / "query.json").unlink()
    r = run_cli("receipts", "verify-evidence", str(ev))
    assert r.returncode == 1 and "query.json is missing" in r.stderr
    with pytest.raises(ProofError, match="not an evidence package"):
        verify_evidence(tmp_path)


def test_evidence_export_by_capability_and_time_and_a_non_empty_dir(home: dict[str, object], tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    assert _cli(home, "receipts", "export", "--evidence", str(ev), "--capability", str(home["a"]))[0] == 0
    assert verify_evidence(ev).receipts == 6
    code, _, err = _cli(home, "receipts", "export", "--evidence", str(ev))
    assert code == 1 and "is not an empty directory" in err
    shutil.rmtree(ev)
    assert _cli(home, "receipts", "export", "--evidence", str(ev), "--until", "2000-01-01")[0] == 0
    assert verify_evidence(ev).receipts == 0
