"""Waking the run that waits for an approval, on the embedded kernel (docs/approvals.md, "Waking the run").

A waiting run registers a wake ``{"engine": ..., ...}`` on its approval; answering the approval in
the kernel calls the waker of each wake once, after the commit, and reports what was woken. A waker
that fails or hangs changes nothing about the answer. Wakers come from in-process registrations or
from entry points of group ``chio.approval_wakers`` (tested here with a throwaway distribution on
``sys.path``, and through the CLI in a subprocess).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioReceipt
from chio_sdk.testing import allow_all
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chio_durable import KernelRejected, as_transport
from chio_kernel import ApprovalNotFoundError, Kernel, KernelInputError, LocalChioClient, Principal, sign_approval_token
from chio_kernel._wakers import MAX_WAKE_BYTES, MAX_WAKES, WAKER_GROUP, register_waker, unregister_waker
from cli_run import run_cli, run_cli_process
from kernel_helpers import Clock

PARAMS = {"order": "A-17", "amount": 250}
SCOPE = {"grants": [{
    "server_id": "shop", "tool_name": "refund", "operations": ["Invoke"], "max_invocations": 5,
    "constraints": [{"type": "require_approval_above", "value": {"threshold_units": 100}}],
}]}


class Recorder:
    """An in-process waker that records every call (and can fail or stall on purpose)."""

    def __init__(self, *, fail: bool = False, stall: float = 0.0) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.fail = fail
        self.stall = stall
        self.lock = threading.Lock()

    def __call__(self, wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> str:
        with self.lock:
            self.calls.append((dict(wake), dict(outcome)))
        if self.stall:
            time.sleep(self.stall)
        if self.fail:
            raise RuntimeError("engine unreachable")
        return f"woke test workflow {wake.get('workflow_id')}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    register_waker("testengine", rec)
    yield rec
    unregister_waker("testengine")


def _pending(kernel: Kernel, key: str = "run-1:0") -> tuple[str, str]:
    """``(capability id, approval id)`` of a fresh pending refund."""
    cap = kernel.create_capability("agent:refunds", SCOPE).id
    receipt = kernel.evaluate(cap, "shop", "refund", PARAMS, idempotency_key=key, cost={"units": 250, "currency": "USD"})
    assert receipt.decision.verdict == "pending_approval"
    return cap, str(receipt.metadata["pending_approval"]["approval_id"])  # type: ignore[index]


def _wake(workflow_id: str = "wf-1", **extra: Any) -> dict[str, Any]:
    return {"engine": "testengine", "workflow_id": workflow_id, **extra}


def _stored_wakes(kernel: Kernel, approval_id: str) -> list[str]:
    with kernel._read() as st:
        return st.approval_wakes(approval_id)


# --- registering and waking -------------------------------------------------------------------------


def test_approve_wakes_each_registered_run_once_with_the_outcome(kernel: Kernel, recorder: Recorder) -> None:
    cap, aid = _pending(kernel)
    answer = kernel.register_approval_wake(aid, _wake())
    assert answer == {"approval_id": aid, "status": "pending", "woken": []}
    assert recorder.calls == []  # nothing is woken before the person answers

    receipt = kernel.respond_approval(aid, "approved", "order checked", approver=Principal("approver", "alice"))
    assert isinstance(receipt, ChioReceipt) and receipt.decision.verdict == "approval_resolution"
    assert len(recorder.calls) == 1
    wake, outcome = recorder.calls[0]
    assert wake == _wake()
    assert outcome == {
        "approval_id": aid, "status": "approved", "approver": kernel.public_key_hex, "reason": "order checked",
        "resolution_receipt_id": receipt.id,
    }
    assert kernel.last_wake_report(aid) == [
        {"engine": "testengine", "ok": True, "message": "woke test workflow wf-1"}
    ]
    # the wake decided nothing: the run's re-evaluation under the approval is what allows the call
    allow = kernel.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="run-1:0:a",
                            cost={"units": 250, "currency": "USD"}, approval_id=aid)
    assert allow.decision.verdict == "allow"
    assert len(recorder.calls) == 1


def test_deny_wakes_too(kernel: Kernel, recorder: Recorder) -> None:
    _, aid = _pending(kernel)
    kernel.register_approval_wake(aid, _wake())
    receipt = kernel.respond_approval(aid, "denied", "not this customer")
    assert [o["status"] for _, o in recorder.calls] == ["denied"]
    assert recorder.calls[0][1]["resolution_receipt_id"] == receipt.id
    assert kernel.get_approval(aid)["status"] == "denied"  # type: ignore[index]


def test_a_signed_approval_token_wakes_the_run(chio_home: Path, clock: Clock, recorder: Recorder) -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    with Kernel(chio_home, clock=clock, approver_keys=[public]) as kernel:
        _, aid = _pending(kernel)
        kernel.register_approval_wake(aid, _wake())
        approval = kernel.get_approval(aid)
        assert approval is not None
        receipt = kernel.respond_approval_token(sign_approval_token(key, approval, "approved", now=clock.now))
        assert [(o["status"], o["approver"], o["resolution_receipt_id"]) for _, o in recorder.calls] == [
            ("approved", public, receipt.id)
        ]
        assert kernel.last_wake_report(aid) == [{"engine": "testengine", "ok": True, "message": "woke test workflow wf-1"}]


def test_registering_after_the_answer_wakes_at_once(kernel: Kernel, recorder: Recorder) -> None:
    _, aid = _pending(kernel)
    receipt = kernel.respond_approval(aid, "approved", "fine")
    assert kernel.last_wake_report(aid) == []  # nothing was registered yet
    answer = kernel.register_approval_wake(aid, _wake())
    assert answer["status"] == "approved"
    assert answer["woken"] == [{"engine": "testengine", "ok": True, "message": "woke test workflow wf-1"}]
    assert [o["resolution_receipt_id"] for _, o in recorder.calls] == [receipt.id]


def test_the_same_wake_is_stored_once_and_woken_once(kernel: Kernel, recorder: Recorder) -> None:
    _, aid = _pending(kernel)
    kernel.register_approval_wake(aid, {"engine": "testengine", "workflow_id": "wf-1", "n": [1, 2]})
    kernel.register_approval_wake(aid, {"n": [1, 2], "workflow_id": "wf-1", "engine": "testengine"})  # same, reordered
    kernel.register_approval_wake(aid, _wake("wf-2"))  # another run (or engine address): its own wake
    assert len(_stored_wakes(kernel, aid)) == 2
    kernel.respond_approval(aid, "approved")
    assert sorted(w["workflow_id"] for w, _ in recorder.calls) == ["wf-1", "wf-2"]


def test_a_wake_without_waker_is_reported_and_the_answer_stands(kernel: Kernel) -> None:
    _, aid = _pending(kernel)
    kernel.register_approval_wake(aid, {"engine": "nosuchengine", "x": 1})
    kernel.respond_approval(aid, "approved")
    [report] = kernel.last_wake_report(aid) or []
    assert report["ok"] is False and report["engine"] == "nosuchengine"
    assert "no waker installed for engine nosuchengine (pip install the package that provides it)" in report["message"]
    assert kernel.get_approval(aid)["status"] == "approved"  # type: ignore[index]


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wake", "match"),
    [
        ("temporal", "a wake is a JSON object"),
        ({"target": "x"}, "needs an 'engine'"),
        ({"engine": "Temporal"}, "a-z, 0-9"),
        ({"engine": ""}, "1 to 32 characters"),
        ({"engine": "x" * 33}, "1 to 32 characters"),
        ({"engine": 7}, "'engine' must be"),
        ({"engine": "t", "x": float("nan")}, "plain JSON"),
        ({"engine": "t", "x": {1, 2}}, "plain JSON"),
        ({"engine": "t", "blob": "x" * MAX_WAKE_BYTES}, f"at most {MAX_WAKE_BYTES} bytes"),
    ],
)
def test_a_bad_wake_is_refused_clearly_and_nothing_is_written(kernel: Kernel, wake: Any, match: str) -> None:
    _, aid = _pending(kernel)
    with pytest.raises(KernelInputError, match=match):
        kernel.register_approval_wake(aid, wake)
    assert _stored_wakes(kernel, aid) == []


def test_at_most_eight_wakes_per_approval(kernel: Kernel, recorder: Recorder) -> None:
    _, aid = _pending(kernel)
    for n in range(MAX_WAKES):
        kernel.register_approval_wake(aid, _wake(f"wf-{n}"))
    kernel.register_approval_wake(aid, _wake("wf-0"))  # a repeat still fits: it is the same wake
    with pytest.raises(KernelInputError, match=f"the most it takes is {MAX_WAKES}"):
        kernel.register_approval_wake(aid, _wake("wf-new"))
    assert len(_stored_wakes(kernel, aid)) == MAX_WAKES


def test_an_unknown_approval_is_not_found(kernel: Kernel) -> None:
    with pytest.raises(ApprovalNotFoundError):
        kernel.register_approval_wake("apr-nope", _wake())


# --- failing wakers -----------------------------------------------------------------------------------


def test_a_failing_waker_is_reported_and_changes_nothing(kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    register_waker("failing", Recorder(fail=True))
    try:
        cap, aid = _pending(kernel)
        kernel.register_approval_wake(aid, {"engine": "failing"})
        receipt = kernel.respond_approval(aid, "approved")
    finally:
        unregister_waker("failing")
    assert receipt.decision.verdict == "approval_resolution"
    assert kernel.last_wake_report(aid) == [
        {"engine": "failing", "ok": False, "message": "RuntimeError: engine unreachable"}
    ]
    assert any(aid in r.getMessage() and "failing" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert kernel.get_approval(aid)["status"] == "approved"  # type: ignore[index]
    allow = kernel.evaluate(cap, "shop", "refund", PARAMS, idempotency_key="k2",
                            cost={"units": 250, "currency": "USD"}, approval_id=aid)
    assert allow.decision.verdict == "allow"


def test_a_slow_waker_times_out_without_holding_the_answer(
    kernel: Kernel, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIO_WAKE_TIMEOUT", "0.3")
    slow = Recorder(stall=5.0)
    register_waker("slow", slow)
    try:
        _, aid = _pending(kernel)
        kernel.register_approval_wake(aid, {"engine": "slow"})
        kernel.register_approval_wake(aid, _wake())
        started = time.monotonic()
        kernel.respond_approval(aid, "approved")
        took = time.monotonic() - started
    finally:
        unregister_waker("slow")
    assert took < 3.0, took  # bounded by the timeout, not by the stalled waker
    report = kernel.last_wake_report(aid) or []
    assert [(r["engine"], r["ok"]) for r in report] == [("slow", False), ("testengine", True)]
    assert "did not finish within 0.3 s" in report[0]["message"]
    assert kernel.get_approval(aid)["status"] == "approved"  # type: ignore[index]
    # the store is not held by the stalled waker: the kernel keeps answering
    assert kernel.list_approvals("approved")[0]["id"] == aid


def test_wakers_run_after_the_commit_outside_the_store_lock(kernel: Kernel) -> None:
    seen: list[str] = []

    def reads_the_answer(wake: Mapping[str, Any], outcome: Mapping[str, Any]) -> str:
        # another connection sees the committed answer: the waker runs after the commit
        conn = sqlite3.connect(str(kernel.data_dir / "kernel.db"), timeout=5)
        try:
            seen.append(conn.execute("SELECT status FROM approvals WHERE id = ?", (outcome["approval_id"],)).fetchone()[0])
            conn.execute("BEGIN IMMEDIATE")  # and can take the write lock: nobody holds it
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return "checked"

    register_waker("probe", reads_the_answer)
    try:
        _, aid = _pending(kernel)
        kernel.register_approval_wake(aid, {"engine": "probe"})
        kernel.respond_approval(aid, "denied")
    finally:
        unregister_waker("probe")
    assert seen == ["denied"]
    assert kernel.last_wake_report(aid) == [{"engine": "probe", "ok": True, "message": "checked"}]


# --- entry points ---------------------------------------------------------------------------------------


def _waker_distribution(root: Path) -> Path:
    """A throwaway installed distribution declaring a waker for engine ``filewake`` (it appends the
    outcome to the file named by the wake's ``path``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "chio_test_filewake.py").write_text(
        "import json\n"
        "def wake(wake, outcome):\n"
        "    with open(wake['path'], 'a', encoding='utf-8') as fh:\n"
        "        fh.write(json.dumps(dict(outcome)) + '\\n')\n"
        "    return 'woke file ' + wake['path']\n",
        encoding="utf-8",
    )
    info = root / "chio_test_filewake-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chio-test-filewake\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[{WAKER_GROUP}]\nfilewake = chio_test_filewake:wake\n", encoding="utf-8")
    return root


def test_a_waker_declared_as_an_entry_point_is_found(
    kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_waker_distribution(tmp_path / "site")))
    out = tmp_path / "woken.jsonl"
    _, aid = _pending(kernel)
    kernel.register_approval_wake(aid, {"engine": "filewake", "path": str(out)})
    receipt = kernel.respond_approval(aid, "approved")
    assert kernel.last_wake_report(aid) == [{"engine": "filewake", "ok": True, "message": f"woke file {out}"}]
    [line] = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["resolution_receipt_id"] == receipt.id


# --- clients and transport --------------------------------------------------------------------------------


async def test_local_client_registers_and_reports(kernel: Kernel, recorder: Recorder) -> None:
    client = LocalChioClient(kernel=kernel)
    _, aid = _pending(kernel)
    assert (await client.register_approval_wake(aid, _wake()))["status"] == "pending"
    await client.respond_approval(aid, "approved", "ok")
    assert client.last_wake_report(aid) == [{"engine": "testengine", "ok": True, "message": "woke test workflow wf-1"}]
    assert len(recorder.calls) == 1


async def test_transport_registers_or_says_it_cannot(kernel: Kernel, recorder: Recorder) -> None:
    _, aid = _pending(kernel)
    embedded = as_transport(LocalChioClient(kernel=kernel))
    assert await embedded.register_approval_wake(aid, _wake()) is True
    assert embedded.register_approval_wake_sync(aid, _wake("wf-2")) is True
    assert len(_stored_wakes(kernel, aid)) == 2
    with pytest.raises(KernelRejected, match="no approval"):
        await embedded.register_approval_wake("apr-nope", _wake())
    with pytest.raises(KernelRejected, match="engine"):
        await embedded.register_approval_wake(aid, {"engine": "BAD"})
    mock = as_transport(allow_all())  # a chio_sdk.testing mock cannot register: the engine falls back
    assert await mock.register_approval_wake(aid, _wake("wf-3")) is False
    assert mock.register_approval_wake_sync(aid, _wake("wf-3")) is False
    assert len(_stored_wakes(kernel, aid)) == 2


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_approve_prints_one_line_per_wake(chio_home: Path) -> None:
    with Kernel(chio_home) as kernel:
        _, aid = _pending(kernel)
        kernel.register_approval_wake(aid, {"engine": "nosuchengine", "workflow_id": "wf-1"})
    done = run_cli("approvals", "approve", aid, "--reason", "ok", "--data-dir", str(chio_home))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"approval {aid} approved; resolution receipt rcpt-")
    assert lines[1] == (
        "wake failed (nosuchengine): no waker installed for engine nosuchengine (pip install the package that "
        "provides it); wake the run with the engine's own command"
    )


def test_cli_deny_wakes_through_an_entry_point_and_reports_json(chio_home: Path, tmp_path: Path) -> None:
    site = _waker_distribution(tmp_path / "site")
    out = tmp_path / "woken.jsonl"
    with Kernel(chio_home) as kernel:
        _, aid = _pending(kernel)
        kernel.register_approval_wake(aid, {"engine": "filewake", "path": str(out)})
    import os

    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    # a new interpreter: the entry point is found on its $PYTHONPATH, as an installed waker would be
    done = run_cli_process("approvals", "deny", aid, "--json", "--data-dir", str(chio_home), PYTHONPATH=path)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["wakes"] == [{"engine": "filewake", "ok": True, "message": f"woke file {out}"}]
    [line] = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["status"] == "denied"
    assert json.loads(line)["resolution_receipt_id"] == answer["receipt"]["id"]


def test_a_store_from_before_wakes_gets_the_table_on_open(chio_home: Path, recorder: Recorder) -> None:
    with Kernel(chio_home) as kernel:
        _, aid = _pending(kernel)
    conn = sqlite3.connect(str(chio_home / "kernel.db"))
    conn.execute("DROP TABLE approval_wakes")  # a data directory written by a build without wakes
    conn.close()
    with Kernel(chio_home) as kernel:
        assert kernel.register_approval_wake(aid, _wake())["status"] == "pending"
        kernel.respond_approval(aid, "approved")
        assert len(recorder.calls) == 1
