"""The kernel on a PostgreSQL store, as users select it: ``Kernel(store=)``, ``CHIO_STORE``,
``LocalChioClient(store=)``, ``--store`` on the CLI, the sidecar driven by the real ``ChioClient``;
and the fleet's keys (registered, trusted fleet-wide, retired)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from chio_sdk.client import ChioClient
from chio_sdk.models import ChioScope, Operation, ToolGrant
from cli_inprocess import run_cli_in_process
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel, KernelInputError, LocalChioClient
from chio_kernel._postgres_store import KernelKeyRetiredError
from chio_kernel.testing import SidecarProcess

CLI = [sys.executable, "-m", "chio_kernel.cli"]


def _scope(**limits: object) -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read_file", operations=[Operation.INVOKE], **limits)])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI app in this process, in the environment a subprocess of it would get."""
    return run_cli_in_process(args, {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())})


def test_store_is_chosen_by_argument_or_environment(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = Kernel(tmp_path / "a", store=pg_dsn)
    assert pg.health()["store"] == pg_dsn
    assert not (tmp_path / "a" / "kernel.db").exists()  # the data dir keeps only the key
    assert (tmp_path / "a" / "kernel.key").exists()
    monkeypatch.setenv("CHIO_STORE", pg_dsn)
    from_env = Kernel(tmp_path / "b")
    cap = pg.create_capability("agent:x", _scope())
    assert from_env.get_capability(cap.id) == cap  # the same store
    sqlite = Kernel(tmp_path / "c", store="sqlite")  # explicit default wins over $CHIO_STORE
    assert (tmp_path / "c" / "kernel.db").exists() and sqlite.get_capability(cap.id) is None
    monkeypatch.setenv("CHIO_STORE", "mysql://nope")
    with pytest.raises(KernelInputError, match=r"\$CHIO_STORE must be a PostgreSQL URL"):
        Kernel(tmp_path / "d")
    with pytest.raises(KernelInputError, match="store must be a PostgreSQL URL"):
        Kernel(tmp_path / "d", store="/var/lib/kernel.db")
    for k in (pg, from_env, sqlite):
        k.close()


async def test_local_client_on_the_fleet_store(pg_dsn: str, tmp_path: Path) -> None:
    client = LocalChioClient(data_dir=tmp_path / "a", store=pg_dsn)
    other = Kernel(tmp_path / "b", store=pg_dsn)
    token = await client.create_capability(subject="agent:x", scope=_scope(max_invocations=1))
    first = await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read_file",
                                            parameters={"path": "/a"})
    assert first.decision.verdict == "allow"
    second = other.evaluate(token.id, "fs", "read_file", {"path": "/b"})
    assert (second.decision.verdict, second.decision.guard) == ("deny", "max_invocations")
    assert [r.id for r in other.list_receipts(capability_id=token.id)] == [first.id, second.id]
    await client.close()
    other.close()


def test_tokens_and_receipts_of_any_registered_kernel_verify_on_every_kernel(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "a", store=pg_dsn)
    b = Kernel(tmp_path / "b", store=pg_dsn)  # registered after a started: a learns its key on demand
    token_b = b.create_capability("agent:x", _scope(max_invocations=5))
    assert a.validate_capability(token_b) == (True, None)
    child = a.attenuate_capability(token_b, _scope(max_invocations=2))  # a delegates b's token
    assert b.validate_capability(child) == (True, None)
    receipt = b.evaluate(child.id, "fs", "read_file", {"path": "/x"})
    assert receipt.decision.verdict == "allow" and a.verify_receipt(receipt)
    assert {k["public_key"] for k in a.registered_keys()} == {a.public_key_hex, b.public_key_hex}
    # a kernel on another store is not part of this fleet
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE other_fleet")
    outsider = Kernel(tmp_path / "c", store=pg_dsn.rsplit("/", 1)[0] + "/other_fleet")
    ok, reason = outsider.validate_capability(token_b)
    assert not ok and reason is not None and "trusted" in reason
    assert not outsider.verify_receipt(receipt)
    for k in (a, b, outsider):
        k.close()


def test_a_retired_key_signs_nothing_and_its_capabilities_deny_but_its_receipts_verify(
    pg_dsn: str, tmp_path: Path
) -> None:
    a = Kernel(tmp_path / "a", store=pg_dsn)
    b = Kernel(tmp_path / "b", store=pg_dsn)
    cap_a = a.create_capability("agent:x", _scope())
    delegated = b.attenuate_capability(b.create_capability("agent:y", _scope()), _scope())
    child_by_a = a.attenuate_capability(delegated.id, _scope())  # a signed a link of this chain
    before = b.evaluate(cap_a.id, "fs", "read_file", {})
    assert before.decision.verdict == "allow"
    a_receipt = a.evaluate(cap_a.id, "fs", "read_file", {})

    b.retire_key(a.public_key_hex, "host a decommissioned")

    for cap_id in (cap_a.id, child_by_a.id):
        denied = b.evaluate(cap_id, "fs", "read_file", {})
        assert (denied.decision.verdict, denied.decision.guard) == ("deny", "signature")
        assert "retired" in str(denied.decision.reason)
    assert b.evaluate(delegated.id, "fs", "read_file", {}).decision.verdict == "allow"  # b's own chain
    ok, reason = b.validate_capability(cap_a)
    assert not ok and "retired" in str(reason)
    with pytest.raises(KernelKeyRetiredError, match="retired"):
        a.evaluate(cap_a.id, "fs", "read_file", {})
    with pytest.raises(KernelKeyRetiredError):
        a.create_capability("agent:z", _scope())
    # history stays checkable: receipts a signed before its retirement still verify
    assert b.verify_receipt(a_receipt)
    report = b.verify_chain()
    assert report.ok and report.count == 5
    retired = {k["public_key"]: k for k in b.registered_keys()}[a.public_key_hex]
    assert retired["retired_reason"] == "host a decommissioned" and retired["retired_at"] is not None
    with pytest.raises(KernelInputError, match="not registered"):
        b.retire_key("c" * 64)
    a.close()
    b.close()


def test_tampering_with_the_fleet_chain_is_named_by_index(pg_dsn: str, tmp_path: Path) -> None:
    a = Kernel(tmp_path / "a", store=pg_dsn)
    cap = a.create_capability("agent:x", _scope())
    for i in range(5):
        a.evaluate(cap.id, "fs", "read_file", {"i": i})
    assert a.verify_chain().ok
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE receipts SET body = replace(body, '\"i\":2', '\"i\":9') WHERE seq = 3")
    report = a.verify_chain()
    assert not report.ok and report.first_broken_index == 2
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE receipts SET body = replace(body, '\"i\":9', '\"i\":2') WHERE seq = 3")
        conn.execute("DELETE FROM receipts WHERE seq = 2")
    report = a.verify_chain()
    assert not report.ok and report.first_broken_index == 1  # the receipt after the gap no longer chains
    a.close()


def test_cli_store_option_fleet_verify_and_keys(pg_dsn: str, tmp_path: Path) -> None:
    host_a, host_b = str(tmp_path / "a"), str(tmp_path / "b")
    made = _cli("capability", "create", "--subject", "agent:cli", "--grant", "fs:read_file",
                "--data-dir", host_a, "--store", pg_dsn, "--json")
    assert made.returncode == 0, made.stderr
    cap_id = json.loads(made.stdout)["token"]["id"]
    kb = Kernel(host_b, store=pg_dsn)
    kb.evaluate(cap_id, "fs", "read_file", {"path": "/x"})
    listed = _cli("receipts", "list", "--data-dir", host_a, "--store", pg_dsn, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["kernel_key"] for r in json.loads(listed.stdout)] == [kb.public_key_hex]
    verified = _cli("receipts", "verify", "--data-dir", host_a, "--store", pg_dsn, "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["count"] == 1
    keys = _cli("keys", "list", "--data-dir", host_a, "--store", pg_dsn, "--json")
    assert keys.returncode == 0, keys.stderr
    assert kb.public_key_hex in {k["public_key"] for k in json.loads(keys.stdout)}
    retired = _cli("keys", "retire", kb.public_key_hex, "--reason", "test", "--data-dir", host_a, "--store", pg_dsn)
    assert retired.returncode == 0, retired.stderr
    with pytest.raises(KernelKeyRetiredError):
        kb.evaluate(cap_id, "fs", "read_file", {"path": "/y"})
    # the same commands without --store stay on SQLite, where keys are not registered
    sqlite_keys = _cli("keys", "list", "--data-dir", host_a)
    assert sqlite_keys.returncode == 1 and "--store postgresql://" in sqlite_keys.stderr
    bad = _cli("receipts", "verify", "--data-dir", host_a, "--store", "nonsense")
    assert bad.returncode == 1 and "PostgreSQL URL" in bad.stderr
    kb.close()


async def test_sidecar_on_the_fleet_store_with_the_real_chio_client(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIO_STORE", pg_dsn)  # what `chio-durable sidecar --store DSN` sets too
    sidecar = SidecarProcess(tmp_path / "sidecar-host").start(timeout=60)
    try:
        local = Kernel(tmp_path / "worker-host", store=pg_dsn)
        token = local.create_capability("agent:x", _scope(max_invocations=2))
        client = ChioClient(sidecar.url)
        try:
            over_http = await client.evaluate_tool_call(
                capability_id=token.id, tool_server="fs", tool_name="read_file", parameters={"path": "/a"}
            )
        finally:
            await client.close()
        assert over_http.decision.verdict == "allow"
        in_process = local.evaluate(token.id, "fs", "read_file", {"path": "/b"})
        third = local.evaluate(token.id, "fs", "read_file", {"path": "/c"})
        # each kernel keeps its own chain: both start at the genesis hash
        assert in_process.content_hash == over_http.content_hash == "0" * 64
        assert (third.decision.verdict, third.decision.guard) == ("deny", "max_invocations")
        assert over_http.kernel_key != local.public_key_hex
        report = local.verify_chain()
        assert report.ok and local.receipt_count() == 3
        assert sorted((c.kernel_id, c.count) for c in report.chains) == sorted(
            [(local.public_key_hex, 2), (over_http.kernel_key, 1)]
        )
        local.close()
    finally:
        sidecar.stop()


async def test_group_commit_on_postgres_shares_commits_and_budgets_stay_exact(pg_dsn: str, tmp_path: Path) -> None:
    client = LocalChioClient(data_dir=tmp_path / "a", store=pg_dsn)
    token = await client.create_capability(subject="agent:x", scope=_scope(max_invocations=30))
    store = client.kernel._store
    client.kernel._checkpoints.stop()  # count the evaluations' transactions only, not the checkpoint cutter's
    before = store.commits

    async def caller(c: int) -> list[str]:
        out = []
        for i in range(10):
            r = await client.evaluate_tool_call(capability_id=token.id, tool_server="fs", tool_name="read_file",
                                                parameters={"c": c, "i": i})
            out.append(r.decision.guard or "allow")
        return out

    verdicts = [v for vs in await asyncio.gather(*(caller(c) for c in range(8))) for v in vs]
    commits = store.commits - before
    assert verdicts.count("allow") == 30 and verdicts.count("max_invocations") == 50
    assert commits < 80  # callers of one event-loop turn shared transactions
    other = Kernel(tmp_path / "b", store=pg_dsn)  # every receipt was committed before its caller got it
    assert other.receipt_count() == 80 and other.verify_chain().ok
    other.close()
    await client.close()


def test_cli_sidecar_store_option(pg_dsn: str, tmp_path: Path) -> None:
    from chio_kernel.testing import free_port

    port = free_port()
    proc = subprocess.Popen([*CLI, "sidecar", "--port", str(port), "--data-dir", str(tmp_path / "sc"),
                             "--store", pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    try:
        health = None
        for _ in range(600):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/chio/health", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        assert health is not None
        # the sidecar's kernel registered its key in the PostgreSQL store (and kept no kernel.db)
        keys = {k["public_key"] for k in Kernel(tmp_path / "x", store=pg_dsn).registered_keys()}
        assert health["kernel_key"] in keys
        assert not (tmp_path / "sc" / "kernel.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_fleet_trust_is_handed_to_the_services(pg_dsn: str, tmp_path: Path) -> None:
    """The fleet's trust (every registered key, no retired signer) is what the capability service and
    the evaluation ask; if a refactor stops handing it over, say so loudly here (a retired key would
    silently stop being refused). Kernel(store=...) is a plain Kernel: no subclass is chosen."""
    from chio_kernel._fleet import FleetKeys, FleetTrust

    kernel = Kernel(tmp_path / "a", store=pg_dsn)
    assert type(kernel) is Kernel
    assert isinstance(kernel._trust, FleetTrust) and isinstance(kernel._fleet, FleetKeys)
    assert kernel._capabilities._trust is kernel._trust and kernel._evaluation._trust is kernel._trust
    assert kernel._caps is kernel._capabilities.cache
    assert hasattr(kernel, "registered_keys") and hasattr(kernel, "check_key_active")
    kernel.close()
    lone = Kernel(tmp_path / "b", store="sqlite")
    assert not hasattr(lone, "registered_keys") and not hasattr(lone, "store")  # the CLI / sidecar ask so
    lone.close()
