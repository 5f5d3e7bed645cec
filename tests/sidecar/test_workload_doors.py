"""A process holding only a workload credential tries every door it has (docs/security.md, "Threat
model"): HTTP on loopback with and without its token, the CLI pointed at the store, and the data
directory. It runs as another OS user (``runuser -u nobody``) than the one owning the kernel's data
directory (root, mode 0700), as the production recipe says. It tries to approve its own pending call,
issue a root capability, widen a capability, trust an approver key, retire a key, make itself a
credential, and settle or release a hold it did not place: each is refused (401/403, 404 where the
HTTP API has no such door at all, or a permission error), nothing is written, and the chain verifies.

Real parts: the sidecar subprocess (``--auth roles``), the CLI in a subprocess, the OS permissions.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chio_kernel import Kernel
from chio_kernel.testing import SidecarProcess

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[2] / "src"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")
APPROVER_KEY = "ab" * 32

# What the worker runs, as nobody: every door, each answer recorded; stdout is one JSON object.
WORKER = r'''
import json, os, sqlite3, subprocess, sys
import httpx

url, token, data, aid, cap, other_hold = sys.argv[1:7]
me = {"Authorization": f"Bearer {token}", "X-Chio-Pending": "understood"}
out = {}

def http(name, method, path, body=None, headers=me):
    out[name] = httpx.request(method, url + path, json=body, headers=headers, timeout=30).status_code

grant = {"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"]}
everything = {"grants": [{"server_id": "*", "tool_name": "*", "operations": ["Invoke"]}]}
call = {"capability_id": cap, "tool_server": "shop", "tool_name": "lookup", "parameters": {}}
http("evaluate without a token", "POST", "/v1/evaluate", call, headers={})
http("evaluate with a made-up token", "POST", "/v1/evaluate", call,
     headers={"Authorization": "Bearer chio_operator_" + "A" * 43})
http("evaluate with its token", "POST", "/v1/evaluate", call)
http("approve its own call", "POST", f"/approvals/{aid}/operator-respond", {"outcome": "approved"})
http("approve it without a token", "POST", f"/approvals/{aid}/operator-respond", {"outcome": "approved"}, headers={})
http("issue a root capability", "POST", "/v1/capabilities", {"subject": "agent:evil", "scope": everything})
http("widen a capability", "POST", "/v1/capabilities/attenuate", {"parent_token": cap, "new_scope": everything})
http("revoke a capability", "POST", f"/v1/capabilities/{cap}/revoke")
http("trust an approver key over HTTP", "POST", "/approvals/trust", {"public_key": "ab" * 32})
http("retire a key over HTTP", "POST", "/v1/keys/retire", {"public_key": "ab" * 32})
http("settle a hold it did not place", "POST", f"/v1/receipts/{other_hold}/settle",
     {"actual_cost": {"units": 0, "currency": "USD"}, "op_id": "evil"})
http("release a hold it did not place", "POST", f"/v1/receipts/{other_hold}/release", {"op_id": "evil"})
http("expire holds", "POST", "/v1/holds/expire")

cli = [sys.executable, "-m", "chio_kernel.cli"]
def run(name, *args):
    r = subprocess.run([*cli, *args, "--data-dir", data], capture_output=True, text=True, timeout=120)
    out[name] = [r.returncode, r.stderr.strip()]

run("cli: approve its own call", "approvals", "approve", aid)
run("cli: issue a root capability", "capability", "create", "--subject", "agent:evil", "--grant", "*:*")
run("cli: trust an approver key", "approvals", "trust", "ab" * 32)
run("cli: retire a key", "keys", "retire", "ab" * 32)
run("cli: make itself an operator credential", "credentials", "add", "evil", "--role", "operator")
run("cli: settle a hold it did not place", "budgets", "settle", other_hold, "--units", "0", "--currency", "USD", "--op-id", "x")

def touch(name, fn):
    try:
        fn()
        out[name] = "done"
    except PermissionError as err:
        out[name] = "PermissionError"
    except Exception as err:
        out[name] = type(err).__name__ + ": " + str(err)

touch("data dir: list it", lambda: os.listdir(data))
touch("data dir: read the signing key", lambda: open(os.path.join(data, "kernel.key"), "rb").read())
touch("data dir: write the approvers file", lambda: open(os.path.join(data, "approvers"), "a").write("ab" * 32))
touch("data dir: open the store", lambda: sqlite3.connect(os.path.join(data, "kernel.db")).execute(
    "UPDATE approvals SET status = 'approved'").connection.commit())
print(json.dumps(out))
'''


def _runs_as_nobody() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (it runs the worker as another OS user with runuser -u nobody)"
    if shutil.which("runuser") is None or not SYSTEM_PYTHON.exists():
        return "needs runuser and /usr/bin/python3.11 (apt-get install util-linux python3.11)"
    return None


@pytest.fixture
def base() -> Iterator[Path]:
    why = _runs_as_nobody()
    if why is not None:
        pytest.skip(why)
    where = Path(tempfile.mkdtemp(prefix="chio-doors-"))
    where.chmod(0o755)  # nobody may reach the data directory; the data directory itself is 0700
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _state(kernel: Kernel) -> dict[str, Any]:
    return {
        "receipts": kernel.receipt_count(),
        "capabilities": len(kernel.list_capabilities()),
        "credentials": kernel.list_credentials(),
        "approvals": kernel.list_approvals(None),
        "approvers": kernel.approver_keys,
    }


def _as_nobody(args: list[str]) -> dict[str, Any]:
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": f"{SRC}:{site}", "COLUMNS": "200"}
    proc = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", *(f"{k}={v}" for k, v in env.items()), str(SYSTEM_PYTHON), "-c",
         WORKER, *args],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    answers: dict[str, Any] = json.loads(proc.stdout)
    return answers


def test_a_workload_credential_opens_no_door_to_governing(base: Path) -> None:
    data = base / "kernel"
    kernel = Kernel(data)
    mode = stat.S_IMODE(data.stat().st_mode)
    assert mode == 0o700 and data.stat().st_uid == 0  # the production recipe: another user's, 0700
    worker = kernel.add_credential("worker-1", "workload")
    other = kernel.add_credential("worker-2", "workload")
    kernel.add_credential("alice", "approver")
    rule = {"type": "require_approval_above", "value": {"threshold_units": 0}}
    scope = {"grants": [
        {"server_id": "shop", "tool_name": "refund", "operations": ["Invoke"], "constraints": [rule]},
        {"server_id": "shop", "tool_name": "lookup", "operations": ["Invoke"]},
        {"server_id": "shop", "tool_name": "charge", "operations": ["Invoke"],
         "max_total_cost": {"units": 10_000, "currency": "USD"}},
    ]}
    cap = kernel.create_capability("agent:support", scope, 3600).id
    with SidecarProcess(data, auth="roles") as sidecar:
        mine = {"Authorization": f"Bearer {worker}", "X-Chio-Pending": "understood"}
        body = {"capability_id": cap, "tool_server": "shop", "tool_name": "refund", "parameters": {"order": "A-1"}}
        pending = httpx.post(f"{sidecar.url}/v1/evaluate", json=body, headers=mine, timeout=30).json()
        aid = pending["metadata"]["pending_approval"]["approval_id"]
        charge = {"capability_id": cap, "tool_server": "shop", "tool_name": "charge", "parameters": {},
                  "cost": {"units": 500, "currency": "USD"}, "idempotency_key": "other-1"}
        hold = httpx.post(f"{sidecar.url}/v1/evaluate", json=charge, headers={"Authorization": f"Bearer {other}"},
                          timeout=30).json()["id"]
        before = _state(kernel)

        answers = _as_nobody([sidecar.url, worker, str(data), aid, cap, hold])

    assert answers.pop("evaluate with its token") == 200  # its own door works
    assert answers.pop("data dir: list it") == "PermissionError"
    http = {k: v for k, v in answers.items() if not k.startswith(("cli:", "data dir:"))}
    assert http == {
        "evaluate without a token": 401,
        "evaluate with a made-up token": 401,
        "approve its own call": 403,
        "approve it without a token": 401,
        "issue a root capability": 403,
        "widen a capability": 403,
        "revoke a capability": 403,
        "trust an approver key over HTTP": http["trust an approver key over HTTP"],  # checked below
        "retire a key over HTTP": 404,
        "settle a hold it did not place": 403,
        "release a hold it did not place": 403,
        "expire holds": 403,
    }
    assert http["trust an approver key over HTTP"] in (404, 405)  # the HTTP API has no such door at all
    for name, (code, said) in ((k, v) for k, v in answers.items() if k.startswith("cli:")):
        assert code == 1 and "permission denied" in said and "belongs to another OS user" in said, (name, said)
    for name in ("data dir: read the signing key", "data dir: write the approvers file", "data dir: open the store"):
        assert answers[name] in ("PermissionError", "OperationalError: unable to open database file"), (name, answers)

    after = _state(kernel)
    after_evaluate = after["receipts"] - 1  # the one allowed lookup it made with its own credential
    assert {**after, "receipts": after_evaluate} == before  # nothing else written
    assert (kernel.get_approval(aid) or {})["status"] == "pending"
    assert (kernel.get_hold(hold) or {})["state"] == "open"
    assert kernel.verify_chain().ok
    kernel.close()


def test_the_cli_on_a_data_directory_it_cannot_read_says_so_in_one_sentence(base: Path) -> None:
    data = base / "kernel"
    Kernel(data).close()
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    proc = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={SRC}:{site}", "HOME=/tmp", "COLUMNS=300",
         str(SYSTEM_PYTHON), "-m", "chio_kernel.cli", "receipts", "list", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"error: permission denied on {data}") and "sudo -u" in line and "\n" not in line, line
