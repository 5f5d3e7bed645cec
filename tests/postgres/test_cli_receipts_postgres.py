"""``receipts list`` filters and ``receipts tail`` on a PostgreSQL store (``--store DSN``): the same
answers as on SQLite, computed by PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chio_sdk.models import ChioScope, Operation, ToolGrant
from cli_inprocess import run_cli_in_process
from pg_cluster import DRIVER_HINT

psycopg = pytest.importorskip("psycopg", reason=DRIVER_HINT)

from chio_kernel import Kernel
from chio_kernel._receipts import receipt_wire_dict

CLI = [sys.executable, "-m", "chio_kernel.cli"]
T0 = 1_800_000_000  # 2027-01-15T08:00:00Z


class _Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def _env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())}


def _ids(*args: str) -> list[str]:
    r = run_cli_in_process(["receipts", "list", "--json", *args], _env())
    assert r.returncode == 0, r.stderr
    return [x["id"] for x in json.loads(r.stdout)]


def _tag(kernel: Kernel, like: Any, metadata: dict[str, str]) -> str:
    """A copy of ``like`` carrying ``metadata``, appended at the head (as a layer recording it would)."""
    with kernel._store.write() as w:
        seq, prev = w.chain_head()
        data = dict(receipt_wire_dict(like))
        data.update(id=f"{like.id}-tag{seq + 1}", metadata=metadata, content_hash=prev)
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        w.append_receipt(seq + 1, data["id"], data["capability_id"], data["decision"]["verdict"],
                         hashlib.sha256(body.encode()).hexdigest(), body)
    return str(data["id"])


def test_receipts_list_filters_and_tail_on_postgres(pg_dsn: str, tmp_path: Path) -> None:
    clock = _Clock()
    k = Kernel(tmp_path / "host-a", store=pg_dsn, clock=clock)
    scope = ChioScope(grants=[ToolGrant(server_id="fs", tool_name="read", operations=[Operation.INVOKE])])
    k.create_capability("s", scope, ttl_seconds=10 * 86400, capability_id="cap-a")
    k.create_capability("s", scope, ttl_seconds=10 * 86400, capability_id="cap-b")
    ids = []
    for cap, tool in [("cap-a", "read"), ("cap-a", "write"), ("cap-b", "read"), ("cap-b", "write")]:
        ids.append(k.evaluate(cap, "fs", tool, {}).id)
        clock.now += 3600
    ids.append(_tag(k, k.get_receipt(ids[1]), {"flow_run_id": "fr-1"}))
    ids.append(_tag(k, k.get_receipt(ids[0]), {"workflow_id": "order-7"}))

    from chio_kernel._store import ReceiptQuery

    with k._store.read() as st:  # the store's own SQL
        assert [s for s, _ in st.query_receipts(ReceiptQuery(newest_first=True, verdict="deny", limit=2))] == [5, 4]
        assert [s for s, _ in st.query_receipts(ReceiptQuery(since=T0 + 2 * 3600, after_seq=3))] == [4]

    Kernel(tmp_path / "host-b", store=pg_dsn).close()  # another host of the fleet (its key registered)
    d = ["--data-dir", str(tmp_path / "host-b"), "--store", pg_dsn]  # read-only commands make no identity
    assert _ids(*d) == ids[::-1]
    assert _ids("--verdict", "deny", "--limit", "2", *d) == [ids[4], ids[3]]
    assert _ids("--capability", "cap-b", "--verdict", "allow", *d) == [ids[2]]
    assert _ids("--capability", "cap-a", "--limit", "2", *d) == [ids[5], ids[4]]
    assert _ids("--flow-run", "fr-1", *d) == [ids[4]]
    assert _ids("--workflow-id", "order-7", *d) == [ids[5]]
    assert _ids("--since", "2027-01-15T10:00:00Z", *d) == [ids[3], ids[2]]
    unknown = run_cli_in_process(["receipts", "list", "--capability", "cap-nope", *d], _env())
    assert unknown.returncode == 1 and "no capability 'cap-nope'" in unknown.stderr

    tail = subprocess.Popen([*CLI, "receipts", "tail", "--json", "--interval", "0.1", "--count", "1",
                             "--verdict", "deny", *d], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert "following receipts after store position 6" in tail.stderr.readline()  # type: ignore[union-attr]
        k.evaluate("cap-a", "fs", "read", {})
        denied = k.evaluate("cap-a", "fs", "write", {}).id
        out, errs = tail.communicate(timeout=120)
        assert tail.returncode == 0, errs
        assert [json.loads(line)["id"] for line in out.splitlines()] == [denied]
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
        k.close()
