"""No private name of a third-party package (``_x``) is used in ``src/`` outside a seams module.

A seams module (``chio_temporal/_seams.py``, ``chio_durable/agent/_seams.py``, ``chio_dbos/_seams.py``)
isolates the private names we read and refuses at start if they moved (each has its own tests). Any
other module may use only public names. Seen statically: a private module or name imported from a
third-party package, and a private attribute read off a name imported from one (``prefect._x``,
``activity._Definition``). A private attribute of a third-party *object* is not visible to this
check; the seams modules' own tests cover the ones we know.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
OURS = {"chio_kernel", "chio_durable", "chio_prefect", "chio_temporal", "chio_dbos"}


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in OURS and top not in sys.stdlib_module_names and top != "__future__"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_third_party_names(source: str) -> list[str]:
    """Every private third-party name ``source`` imports or reads off an imported name."""
    tree = ast.parse(source)
    found: list[str] = []
    imported: set[str] = set()  # local names bound to a third-party module or object
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name):
                    imported.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _third_party(node.module):
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"from {node.module} import {alias.name}")
                imported.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                found.append(ast.unparse(node))
    return found


def test_the_check_sees_each_kind_of_private_use() -> None:
    source = (
        "import prefect.client._private\n"
        "from temporalio.worker._workflow import Helper\n"
        "from pydantic_ai import _utils\n"
        "from temporalio import activity\n"
        "import httpx as h\n"
        "x = activity._Definition\n"
        "y = h._client.X\n"
        "from chio_kernel import _kernel\n"  # ours: allowed
        "import os\n"
        "z = os._exit\n"  # the standard library: not this check's business
        "w = activity.__name__\n"  # dunders are public
    )
    assert private_third_party_names(source) == [
        "import prefect.client._private",
        "from temporalio.worker._workflow import ...",
        "from pydantic_ai import _utils",
        "activity._Definition",
        "h._client",
    ]


def test_private_third_party_names_live_only_in_seams_modules() -> None:
    outside = {
        str(path.relative_to(SRC)): names
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_seams.py" and (names := private_third_party_names(path.read_text(encoding="utf-8")))
    }
    assert outside == {}, f"move these into the package's _seams.py (checked at start, tested): {outside}"
    # the seams modules do hold some: the check is not blind to them
    assert private_third_party_names((SRC / "chio_temporal" / "_seams.py").read_text(encoding="utf-8"))
