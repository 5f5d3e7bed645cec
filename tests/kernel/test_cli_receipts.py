"""``receipts list`` (newest first, --limit, --since, --verdict, --flow-run, --workflow-id, an
unknown --capability is an error; filtered in the store) and ``receipts tail``."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant

from chio_kernel import Kernel
from chio_kernel.cli import CliError
from cli_run import popen_cli, run_cli
from kernel_helpers import Clock

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z


def _scope(*tools: str) -> ChioScope:
    return ChioScope(grants=[ToolGrant(server_id="fs", tool_name=t, operations=[Operation.INVOKE]) for t in tools])


@pytest.fixture
def populated(chio_home: Path) -> dict[str, str]:
    """Receipts an hour apart: r0 allow (cap-a), r1 deny (cap-a), r2 allow (cap-b), r3 deny (cap-b),
    then r4/r5 tagged with a Prefect flow run and r6 with a Temporal workflow id."""
    clock = Clock(T0)
    k = Kernel(chio_home, clock=clock)
    k.create_capability("s", _scope("read"), ttl_seconds=10 * 86400, capability_id="cap-a")
    k.create_capability("s", _scope("read"), ttl_seconds=10 * 86400, capability_id="cap-b")
    ids: dict[str, str] = {}
    for i, (cap, tool) in enumerate([("cap-a", "read"), ("cap-a", "write"), ("cap-b", "read"), ("cap-b", "write")]):
        ids[f"r{i}"] = k.evaluate(cap, "fs", tool, {"i": i}).id
        clock.advance(3600)
    # signed by the kernel as an engine layer's run context (Kernel.evaluate(metadata=...)), decided
    # at r0's and r1's times (so --since below separates them from r2/r3)
    clock.now = T0
    ids["r4"] = k.evaluate("cap-a", "fs", "read", {"i": 4}, metadata={"flow_run_id": "fr-1", "flow_run_name": "x"}).id
    clock.now = T0 + 3600
    ids["r5"] = k.evaluate("cap-a", "fs", "write", {"i": 5}, metadata={"flow_run_id": "fr-1"}).id
    clock.now = T0
    ids["r6"] = k.evaluate("cap-a", "fs", "read", {"i": 6}, metadata={"workflow_id": "order-7", "run_id": "run-1"}).id
    assert k.verify_chain().ok
    k.close()
    return ids


def _ids(*args: str) -> list[str]:
    r = run_cli("receipts", "list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [x["id"] for x in json.loads(r.stdout)]


def test_list_is_newest_first_with_limit_and_filters(chio_home: Path, populated: dict[str, str]) -> None:
    d = ["--data-dir", str(chio_home)]
    ids = populated
    assert _ids(*d) == [ids[f"r{i}"] for i in (6, 5, 4, 3, 2, 1, 0)]
    assert _ids("--limit", "2", *d) == [ids["r6"], ids["r5"]]
    assert _ids("--oldest-first", "--limit", "2", *d) == [ids["r0"], ids["r1"]]
    assert _ids("--verdict", "deny", *d) == [ids["r5"], ids["r3"], ids["r1"]]
    assert _ids("--verdict", "allow", "--capability", "cap-b", *d) == [ids["r2"]]
    assert _ids("--capability", "cap-a", "--limit", "3", *d) == [ids["r6"], ids["r5"], ids["r4"]]
    assert _ids("--flow-run", "fr-1", *d) == [ids["r5"], ids["r4"]]
    assert _ids("--flow-run", "fr-1", "--verdict", "deny", *d) == [ids["r5"]]
    assert _ids("--workflow-id", "order-7", *d) == [ids["r6"]]
    assert _ids("--workflow-id", "fr-1", *d) == []
    # --since: r2 was decided at T0 + 2h (the tagged ones at r0's and r1's times); ISO-8601
    # with a zone, naive (UTC) and a date
    assert _ids("--since", "2027-01-15T10:00:00Z", "--oldest-first", *d) == [ids["r2"], ids["r3"]]
    assert _ids("--since", "2027-01-15T09:00:00", "--verdict", "deny", *d) == [ids["r5"], ids["r3"], ids["r1"]]
    assert _ids("--since", "2027-01-15T10:00:00", "--verdict", "allow", *d) == [ids["r2"]]
    assert _ids("--since", "2027-01-16", *d) == []
    # the table numbers receipts by chain index (as `receipts verify` does), whatever the filter
    table = run_cli("receipts", "list", "--verdict", "deny", "--capability", "cap-b", *d).stdout
    row = next(line for line in table.splitlines() if ids["r3"] in line)
    assert row.split()[1] == "3", row


def test_since_accepts_relative_durations(chio_home: Path) -> None:
    from chio_kernel.cli._receipts import parse_since

    now = time.time()
    clock = Clock(now - 7200)
    k = Kernel(chio_home, clock=clock)
    k.create_capability("s", _scope("read"), capability_id="cap-a", ttl_seconds=86400)
    old = k.evaluate("cap-a", "fs", "read", {}).id
    clock.now = now - 60
    recent = k.evaluate("cap-a", "fs", "read", {}).id
    k.close()
    d = ["--data-dir", str(chio_home)]
    assert _ids("--since", "10m", *d) == [recent]
    assert _ids("--since", "3h", *d) == [recent, old]
    assert parse_since("30s", now=1000.0) == 970
    assert parse_since("2h", now=10_000.0) == 10_000 - 7200
    assert parse_since("1d", now=100_000.0) == 100_000 - 86400
    assert parse_since("2027-01-15T08:00:00+00:00") == T0
    with pytest.raises(CliError, match="bad --since"):
        parse_since("yesterday")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--capability", "cap-nope"], "no capability 'cap-nope'"),
        (["--verdict", "maybe"], "bad --verdict 'maybe'"),
        (["--since", "last tuesday"], "bad --since 'last tuesday'"),
    ],
)
def test_list_errors_are_one_line_and_nonzero(chio_home: Path, populated: dict[str, str], args: list[str],
                                              needle: str) -> None:
    r = run_cli("receipts", "list", *args, "--data-dir", str(chio_home))
    assert r.returncode == 1 and r.stdout == ""
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_store_answers_the_filters(chio_home: Path, populated: dict[str, str]) -> None:
    # the filtering is the store's (SQL), not a walk over every receipt in Python
    from chio_kernel._store import ReceiptQuery

    k = Kernel(chio_home)
    store = k._store
    with store.read() as st:  # without the index (not caught up yet): the receipts' own column
        by_column = st.query_receipts(ReceiptQuery(capability_id="cap-b", capability_index=False))
        assert [s for s, _ in by_column] == [3, 4]
        assert st.query_receipts(ReceiptQuery(capability_id="cap-b")) == []  # the index is not caught up
    store.catch_up_capability_index()
    with store.read() as st:
        assert st.query_receipts(ReceiptQuery(capability_id="cap-b")) == by_column
        seqs = [s for s, _ in st.query_receipts(ReceiptQuery(newest_first=True, verdict="deny", limit=2))]
        assert seqs == [6, 4]
        tagged = st.query_receipts(ReceiptQuery(metadata=(("flow_run_id", "fr-1"),), capability_id="cap-a"))
        assert [json.loads(b)["id"] for _, b in tagged] == [populated["r4"], populated["r5"]]
        assert [s for s, _ in st.query_receipts(ReceiptQuery(since=T0 + 2 * 3600))] == [3, 4]
        assert [s for s, _ in st.query_receipts(ReceiptQuery(since=T0 + 2 * 3600, after_seq=3))] == [4]
    with pytest.raises(ValueError, match="metadata key"):
        ReceiptQuery(metadata=(("a'b", "x"),))
    k.close()


def _read_start_line(proc: object) -> str:
    line = proc.stderr.readline()  # type: ignore[attr-defined]
    assert "following receipts after store position" in line, line
    return line


def test_tail_follows_new_receipts_with_filters(chio_home: Path) -> None:
    k = Kernel(chio_home)
    k.create_capability("s", _scope("read"), capability_id="cap-a")
    k.create_capability("s", _scope("read"), capability_id="cap-b")
    before = k.evaluate("cap-a", "fs", "read", {"n": 0}).id  # already there: not shown
    d = ["--data-dir", str(chio_home)]
    everything = popen_cli("receipts", "tail", "--json", "--interval", "0.1", "--count", "3", *d)
    denies = popen_cli("receipts", "tail", "--verdict", "deny", "--interval", "0.1", "--count", "2", *d)
    of_b = popen_cli("receipts", "tail", "--capability", "cap-b", "--json", "--interval", "0.1", "--count", "1", *d)
    try:
        assert "position 1 " in _read_start_line(everything)
        _read_start_line(denies)
        _read_start_line(of_b)
        new = [k.evaluate("cap-a", "fs", tool, {"n": n}) for n, tool in enumerate(["read", "write", "read", "x"], 1)]
        from_b = k.evaluate("cap-b", "fs", "read", {})
        out, errs = of_b.communicate(timeout=120)
        assert of_b.returncode == 0, errs
        assert [json.loads(line)["id"] for line in out.splitlines()] == [from_b.id]
        out, errs = everything.communicate(timeout=120)
        assert everything.returncode == 0, errs
        assert [json.loads(line)["id"] for line in out.splitlines()] == [r.id for r in new[:3]]
        assert before not in out
        out, errs = denies.communicate(timeout=120)
        assert denies.returncode == 0, errs
        lines = out.splitlines()
        assert len(lines) == 2 and new[1].id in lines[0] and new[3].id in lines[1]
        assert "deny" in lines[0] and "scope" in lines[0] and "fs/write" in lines[0]
    finally:
        for p in (everything, denies, of_b):
            if p.poll() is None:
                p.kill()
                p.communicate()
        k.close()


def test_tail_stops_cleanly_on_ctrl_c_and_refuses_an_unknown_capability(chio_home: Path) -> None:
    k = Kernel(chio_home)
    k.create_capability("s", _scope("read"), capability_id="cap-a")
    k.close()
    d = ["--data-dir", str(chio_home)]
    bad = run_cli("receipts", "tail", "--capability", "cap-nope", *d)
    assert bad.returncode == 1 and "no capability 'cap-nope'" in bad.stderr
    proc = popen_cli("receipts", "tail", "--interval", "0.1", *d)
    try:
        _read_start_line(proc)
        os.kill(proc.pid, signal.SIGINT)
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in errs, errs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_iso_dates_are_utc_when_no_zone_is_given() -> None:
    from chio_kernel.cli._receipts import parse_since

    assert parse_since("2027-01-15") == int(datetime(2027, 1, 15, tzinfo=timezone.utc).timestamp())
