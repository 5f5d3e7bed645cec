"""`chio-durable ui` as a user runs it: the inbox on the kernel's store and the webhook deliverer in
the same process, told about an approval another process created (docs/inbox.md)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from chio_kernel import Kernel, new_webhook_secret

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
import test_webhooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHIO_HOME", "CHIO_STORE", "CHIO_WEBHOOK_SECRET"}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chio_kernel.cli", *args], capture_output=True, text=True,
                          timeout=120, env=_env(), check=False)


def test_ui_refuses_what_it_cannot_do_safely(chio_home: Path) -> None:
    exposed = _cli("ui", "--host", "0.0.0.0", "--data-dir", str(chio_home))
    assert exposed.returncode == 1 and "plain HTTP" in exposed.stderr and "--tls-cert" in exposed.stderr
    unsigned = _cli("ui", "--webhook", "http://127.0.0.1:9/x", "--data-dir", str(chio_home))
    assert unsigned.returncode == 1 and "--webhook-secret" in unsigned.stderr


def test_ui_serves_the_inbox_and_sends_a_signed_webhook_for_an_approval_made_elsewhere(chio_home: Path) -> None:
    secret = new_webhook_secret()
    receiver = test_webhooks.Receiver([], secret)
    port = _free_port()
    with Kernel(data_dir=chio_home) as kernel:
        kernel.create_capability("agent:x", {"grants": []})  # the store exists before the ui opens it
    proc = subprocess.Popen(
        [sys.executable, "-m", "chio_kernel.cli", "ui", "--port", str(port), "--data-dir", str(chio_home),
         "--webhook", receiver.url, "--webhook-secret", secret, "--prefect-ui", "http://127.0.0.1:4200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/signin", timeout=2) as page:
                    assert page.status == 200 and "Sign in" in page.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.2)
        with Kernel(data_dir=chio_home) as worker:  # another process's kernel makes the approval
            approval_id = test_webhooks._pending(worker, "C-3")
        while not receiver.received:
            assert time.monotonic() < end, "no webhook arrived"
            time.sleep(0.1)
        (got,) = receiver.received
        assert got["valid"]
        payload = json.loads(got["body"])
        assert payload["data"]["id"] == approval_id
        assert payload["data"]["inbox_url"] == f"http://127.0.0.1:{port}/ui/approvals/{approval_id}"
    finally:
        proc.terminate()
        proc.wait(30)
