"""The docs and the README hold no machine-specific absolute paths (a home directory, a temp or
work directory, a venv of one machine): what a reader copies must run on their machine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: /home/<user>/..., /Users/..., /root/..., /tmp/..., /work/..., macOS temp dirs, C:\Users\...
MACHINE_PATH = re.compile(
    r"(?<![\w.~$-])(/(?:home|Users|root|tmp|work|private/var|var/folders)/[^\s`'\")]*|[A-Za-z]:\\Users\\\S*)"
)


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_docs_hold_no_machine_specific_absolute_paths() -> None:
    found = [
        f"{doc.relative_to(ROOT)}:{n}: {m.group(0)}"
        for doc in _documents()
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        for m in MACHINE_PATH.finditer(line)
    ]
    assert found == [], "machine-specific paths in the docs:\n" + "\n".join(found)


def test_the_check_finds_what_it_is_meant_to() -> None:
    # guards the regex itself: these must be caught, and the docs' example paths must not be
    for bad in ("    /work/venv/bin/python -m pytest", "see /home/alice/x", "/Users/bob/chio", "C:\\Users\\bob\\x",
                "at /tmp/chio-home", "cd /root/project"):
        assert MACHINE_PATH.search(bad), bad
    for ok in ('{"type": "path_prefix", "value": "/data/"}', "~/.chio-durable", "$HOME/.chio-durable",
               "/etc/x", "http://127.0.0.1:9090/v1/receipts", "src/chio_kernel/home/x", "./tmp/x"):
        assert not MACHINE_PATH.search(ok), ok
    assert len(_documents()) > 5


def test_user_docs_and_examples_use_the_public_temporal_helpers() -> None:
    # run_temporal / temporal_cli_path / release_temporal_clients are public in chio_temporal;
    # docs/architecture.md (the code map) is the one page that names the private module
    readers = [doc for doc in _documents() if doc.name != "architecture.md"]
    readers += sorted((ROOT / "examples").glob("*.py"))
    found = [str(p.relative_to(ROOT)) for p in readers if "_devserver" in p.read_text(encoding="utf-8")]
    assert found == []
