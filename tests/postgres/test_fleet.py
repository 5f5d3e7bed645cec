"""The fleet test: 2 simulated hosts (separate data dirs, so separate signing keys) x 4 processes
each, sharing one real PostgreSQL store. Budgets are exact across all of them, each kernel's chain
verifies, and a worker killed with SIGKILL (mid-run, and one holding its chain's lock mid-transaction)
leaves no fork and loses no receipt that was handed out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, MonetaryAmount, Operation, ToolGrant

from chio_kernel import Kernel

WORKER = Path(__file__).with_name("fleet_worker.py")
MAX_INVOCATIONS = 40
BUDGET_UNITS = 700  # 7 units per call -> exactly 100 allowed calls


def _grant(**limits: object) -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE], **limits)])


def _start(data_dir: Path, dsn: str, out: Path, calls: int, caps: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(data_dir), dsn, str(out), str(calls), ",".join(caps)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CHIO_STORE": ""},
    )


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[str]) -> None:
    """Block until ``path`` holds ``n`` lines (the worker is running), failing if it died."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"worker wrote fewer than {n} receipts to {path}")


def _hold_chain_lock_and_die(dsn: str, key: str) -> None:
    """A writer killed mid-transaction: it locks a kernel's chain head, inserts a receipt row at the
    head + 1 and is SIGKILLed before COMMIT."""
    code = f"""
import sys, psycopg
conn = psycopg.connect({dsn!r}, autocommit=True)
conn.execute("BEGIN")
_, seq, _ = conn.execute("SELECT * FROM chio_chain_lock(%s)", ({key!r},)).fetchone()
conn.execute("INSERT INTO receipts(id, capability_id, verdict, chain_hash, body, kernel_id, chain_seq) "
             "VALUES ('rcpt-half-written', 'cap-x', 'allow', 'h', '{{}}', %s, %s)", ({key!r}, seq + 1))
print("in-transaction", flush=True)
import time; time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "in-transaction"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_two_hosts_four_processes_each_with_exact_budgets_and_a_chain_per_kernel(pg_dsn: str, tmp_path: Path) -> None:
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    kernel_a = Kernel(host_a, store=pg_dsn)
    kernel_b = Kernel(host_b, store=pg_dsn)
    assert kernel_a.public_key_hex != kernel_b.public_key_hex
    # one capability issued on each host; every worker on both hosts spends both
    counted = kernel_a.create_capability("agent:fleet", _grant(max_invocations=MAX_INVOCATIONS), capability_id="cap-counted")
    priced = kernel_b.create_capability(
        "agent:fleet",
        _grant(max_total_cost=MonetaryAmount(units=BUDGET_UNITS, currency="USD")),
        capability_id="cap-priced",
    )
    caps = [counted.id, priced.id]

    workers: list[tuple[subprocess.Popen[str], Path]] = []
    for host in (host_a, host_b):
        for i in range(4):
            out = tmp_path / f"{host.name}-{i}.receipts"
            # the first worker of host B runs until it is killed; the others make 60 calls each
            calls = 0 if (host is host_b and i == 0) else 60
            workers.append((_start(host, pg_dsn, out, calls, caps), out))
    for proc, _ in workers:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready")
    for proc, _ in workers:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()

    victim, victim_out = workers[4]
    _wait_lines(victim_out, 20, victim)
    victim.send_signal(signal.SIGKILL)  # kill -9 in the middle of its run
    victim.wait(timeout=60)
    # and a writer killed while it holds host A's chain lock with an uncommitted receipt
    _hold_chain_lock_and_die(pg_dsn, kernel_a.public_key_hex)

    for proc, _ in workers[:4] + workers[5:]:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert "done" in stdout

    handed_out: dict[str, tuple[str, str]] = {}
    for _, out in workers:
        for line in out.read_text().splitlines():
            rid, verdict, cap_id = line.split()
            handed_out[rid] = (verdict, cap_id)
    assert len(handed_out) >= 7 * 60 + 20

    stored = {r.id: r for r in kernel_a.list_receipts()}
    # no receipt handed out is lost (the victim's included), and the half-written one is not there
    missing = sorted(set(handed_out) - set(stored))
    assert missing == []
    assert "rcpt-half-written" not in stored
    # budgets exact across 8 processes on 2 hosts
    allowed = {cap: sum(1 for r in stored.values() if r.capability_id == cap and r.decision.verdict == "allow")
               for cap in caps}
    assert allowed == {counted.id: MAX_INVOCATIONS, priced.id: BUDGET_UNITS // 7}
    denied_guards = {r.decision.guard for r in stored.values() if r.decision.verdict == "deny"}
    assert denied_guards == {"max_invocations", "cost"}
    usage_a = kernel_b.capability_info(counted.id)
    usage_b = kernel_a.capability_info(priced.id)
    assert usage_a is not None and usage_a["usage"][0]["invocations"] == MAX_INVOCATIONS
    assert usage_b is not None and usage_b["usage"][0]["cost_units"] == (BUDGET_UNITS // 7) * 7
    # both hosts signed receipts, each host in its own chain; every chain verifies from either host
    assert {r.kernel_key for r in stored.values()} == {kernel_a.public_key_hex, kernel_b.public_key_hex}
    for kernel in (kernel_a, kernel_b):
        report = kernel.verify_chain()
        assert report.ok, report.reason
        assert report.count == len(stored)
        assert {c.kernel_id for c in report.chains} == {kernel_a.public_key_hex, kernel_b.public_key_hex}
    # no fork: within a kernel's chain no two receipts share a predecessor
    for key in (kernel_a.public_key_hex, kernel_b.public_key_hex):
        mine = [r for r in stored.values() if r.kernel_key == key]
        assert len({r.content_hash for r in mine}) == len(mine)
    kernel_a.close()
    kernel_b.close()


def test_a_kernel_sees_budgets_spent_by_another_host_at_once(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "a", store=pg_dsn)
    b = Kernel(tmp_path / "b", store=pg_dsn)
    cap = a.create_capability("agent:x", _grant(max_invocations=2))
    assert a.evaluate(cap.id, "fs", "read_file", {}).decision.verdict == "allow"
    assert b.evaluate(cap.id, "fs", "read_file", {}).decision.verdict == "allow"
    third = a.evaluate(cap.id, "fs", "read_file", {})
    assert (third.decision.verdict, third.decision.guard) == ("deny", "max_invocations")
    a.close()
    b.close()


def test_rate_limit_is_shared_by_the_fleet(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "a", store=pg_dsn, clock=lambda: 1_000_000.0)
    b = Kernel(tmp_path / "b", store=pg_dsn, clock=lambda: 1_000_000.5)
    cap = a.create_capability("agent:x", _grant(), rate_limit=(3, 60.0))
    verdicts = [k.evaluate(cap.id, "fs", "read_file", {}).decision.verdict for k in (a, b, a, b)]
    assert verdicts == ["allow", "allow", "allow", "deny"]
    a.close()
    b.close()
