"""A receipt a caller has seen survives ``kill -9`` of the kernel process (WAL, synchronous=NORMAL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from chio_kernel import Kernel

from kernel_helpers import grant, scope

CHILD = textwrap.dedent(
    """
    import sys
    from chio_kernel import Kernel
    k = Kernel(sys.argv[1])
    i = 0
    while True:
        r = k.evaluate(sys.argv[2], "fs", "read", {"i": i})
        sys.stdout.write(r.id + "\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_receipts_seen_by_a_caller_survive_sigkill(chio_home: Path) -> None:
    k = Kernel(chio_home)
    token = k.create_capability("agent:a", scope(grant()), 3600)
    k.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(chio_home), token.id], stdout=subprocess.PIPE, text=True
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if len(seen) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: the child is still evaluating
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    reopened = Kernel(chio_home)
    assert all(reopened.get_receipt(rid) is not None for rid in seen)
    report = reopened.verify_chain()
    assert report.ok and report.count >= len(seen), report
    # the store keeps working after the crash
    assert reopened.evaluate(token.id, "fs", "read", {"after": "crash"}).decision.verdict == "allow"
    assert reopened.verify_chain().ok
    reopened.close()
