"""The README and docs code blocks, in reading order, as a new user meets them.

A block runs unless the line before it says otherwise:

* ``<!-- walkthrough: skip: <why> -->`` — not run (it installs, serves until Ctrl-C, runs for
  minutes, or needs a service the walkthrough does not start); the reason is required;
* ``<!-- walkthrough: fragment -->`` — part of a program (names defined elsewhere, ``await`` at top
  level): only checked to parse (``python``) or by ``bash -n``.

Languages run: ``python`` (a script per block) and ``bash`` / ``sh`` / ``shell``; other fences
(json, toml, text) are data, not steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the README first, then the docs in the order the README links them, then the other pages
DOC_ORDER = [
    "README.md", "docs/architecture.md", "docs/kernel.md", "docs/fleet.md", "docs/sidecar.md", "docs/cli.md",
    "docs/prefect.md", "docs/temporal.md", "docs/agents.md", "docs/temporal_agent.md", "docs/dbos.md",
    "docs/dependencies.md", "docs/upstream.md", "docs/approvals.md", "docs/budgets.md", "docs/prefect_agent.md",
]
RUN_LANGS = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"<!--\s*walkthrough:\s*(skip|fragment)\s*(?::\s*(.*?))?\s*-->")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str  # "python" or "bash"
    code: str
    mark: str | None  # None (run), "skip" or "fragment"
    why: str | None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def documents() -> list[str]:
    listed = [d for d in DOC_ORDER if (ROOT / d).exists()]
    others = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if str(p.relative_to(ROOT)) not in listed)
    return listed + others


def blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if lang in RUN_LANGS:
            before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            mark = _MARK.search(before)
            found.append(Block(doc, start + 1, RUN_LANGS[lang], "\n".join(lines[start + 1:j]) + "\n",
                               mark.group(1) if mark else None, mark.group(2) if mark else None))
        i = j + 1
    return found


def all_blocks() -> list[Block]:
    return [b for doc in documents() for b in blocks(doc)]
