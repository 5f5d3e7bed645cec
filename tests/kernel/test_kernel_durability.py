"""A receipt a caller has seen survives ``kill -9`` of the kernel process (WAL, synchronous=NORMAL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

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


def test_store_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Kernel(tmp_path / "k") as k:
            token = k.create_capability("agent:a", scope(grant()), 3600)
            k.evaluate(token.id, "fs", "read", {"path": "/secret/argument"})
            for name in ("kernel.db", "kernel.db-wal", "kernel.db-shm", "kernel.key"):
                assert (tmp_path / "k" / name).stat().st_mode & 0o777 == 0o600, name
            assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_existing_store_files_are_tightened(tmp_path: Path) -> None:
    with Kernel(tmp_path / "k") as k:
        k.create_capability("agent:a", scope(grant()), 3600)
    for name in ("kernel.db", "kernel.db-wal", "kernel.db-shm"):
        if (tmp_path / "k" / name).exists():
            (tmp_path / "k" / name).chmod(0o644)
    with Kernel(tmp_path / "k"):
        for name in ("kernel.db", "kernel.db-wal", "kernel.db-shm"):
            if (tmp_path / "k" / name).exists():
                assert (tmp_path / "k" / name).stat().st_mode & 0o777 == 0o600, name


def test_a_data_dir_open_to_others_is_tightened_or_warned_about(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"  # an empty directory made for the kernel: tightened silently
    fresh.mkdir()
    fresh.chmod(0o755)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Kernel(fresh).close()
    assert fresh.stat().st_mode & 0o777 == 0o700
    fresh.chmod(0o750)  # an existing kernel directory: tightened too
    Kernel(fresh).close()
    assert fresh.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"  # holds other things: may be shared on purpose, so warn only
    shared.mkdir()
    (shared / "notes.txt").write_text("x")
    shared.chmod(0o755)
    with pytest.warns(UserWarning, match=r"accessible by other users \(mode 0755\).*chmod 700"):
        Kernel(shared).close()
    assert shared.stat().st_mode & 0o777 == 0o755
