"""The import graph of ``src/`` (built from the AST: module-level AND function-level imports).

Rules it holds:

* no import cycle anywhere inside ``src/`` (a lazy, function-level import counts like any other:
  it hides a cycle from the interpreter, not from the design);
* layers: ``chio_kernel`` <- ``chio_durable`` <- ``chio_prefect`` / ``chio_temporal`` / ``chio_dbos``:
  a package imports only packages below it, and the engines never import each other;
* an engine imports from ``chio_durable`` only ``chio_durable``, ``chio_durable.agent`` (the public
  surface) and ``chio_durable._engine`` (the engines' internal API): no other private module of it,
  not even under ``if TYPE_CHECKING:``.

Imports under ``if TYPE_CHECKING:`` are annotations, never executed: left out. A module named in
a string of a module that calls ``importlib.import_module`` counts as imported.

No allowance: every arrow points down. The demo (``chio_kernel._demo``) finds the engines' sections
through entry points (``chio.demo_sections``), never by importing them. No package has an internal
cycle either (the CLI's face only re-exports; its command modules share ``_common`` / ``_options``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYER = {"chio_kernel": 0, "chio_durable": 1, "chio_prefect": 2, "chio_temporal": 2, "chio_dbos": 2}
ENGINES = ("chio_prefect", "chio_temporal", "chio_dbos")
ENGINE_MAY_IMPORT = ("chio_durable", "chio_durable.agent", "chio_durable._engine")


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[0] not in LAYER:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations: never executed)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every module of ours that ``name`` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    dynamic = "import_module" in ast.unparse(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if dynamic and isinstance(node, ast.Constant) and node.value in modules:
            yield str(node.value)  # a module named for importlib.import_module
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:  # ``from pkg import submodule``
                    yield f"{target}.{alias.name}"
                elif target in modules:
                    yield target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imports(name, path, modules)) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_built_from_both_kinds_of_import(tmp_path: Path) -> None:
    graph = _graph()
    assert "chio_kernel._kernel" in graph["chio_kernel"]  # module level
    assert "chio_kernel._postgres_store" in graph["chio_kernel._store_factory"]  # inside a function
    assert "chio_kernel._fleet" not in graph["chio_kernel._kernel"]  # under TYPE_CHECKING: no import
    dynamic = tmp_path / "dynamic.py"  # no module of src/ does it today: a module named for import_module
    dynamic.write_text("import importlib\n\ndef load():\n    return importlib.import_module('chio_prefect._demo')\n")
    assert "chio_prefect._demo" in set(_imports("chio_kernel.dynamic", dynamic, _modules()))


def test_no_import_cycle_inside_src() -> None:
    assert _cycles(_graph()) == []


def test_no_cycle_among_the_kernel_modules() -> None:
    kernel = {name: {t for t in targets if t.startswith("chio_kernel.") and ".cli" not in t and ".sidecar" not in t}
              for name, targets in _graph().items()
              if name.startswith("chio_kernel") and ".cli" not in name and ".sidecar" not in name}
    assert _cycles(kernel) == []


def test_layers_point_down_and_engines_never_import_each_other() -> None:
    wrong = []
    for name, targets in _graph().items():
        top = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other == top:
                continue
            if LAYER[other] >= LAYER[top]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def _durable_imports(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, module, statement) of every import of a ``chio_durable`` module in ``path``.

    Every statement counts, ``if TYPE_CHECKING:`` ones too; ``from chio_durable.agent import _x``
    imports the module ``chio_durable.agent._x``; in a module that calls ``importlib.import_module``,
    a string naming a ``chio_durable`` module counts as its import.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    dynamic = "import_module" in ast.unparse(tree)
    for node in ast.walk(tree):
        if dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.split(".")[0] == "chio_durable" and node.value.replace(".", "").replace("_", "").isalnum():
                yield node.lineno, node.value, repr(node.value)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "chio_durable":
                    yield node.lineno, alias.name, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] != "chio_durable":
                continue
            for alias in node.names:
                private_submodule = alias.name.startswith("_") and node.module in ENGINE_MAY_IMPORT
                yield node.lineno, f"{node.module}.{alias.name}" if private_submodule else node.module, ast.unparse(node)


def test_engines_import_only_chio_durables_public_surface_and_engine_api() -> None:
    wrong = []
    for name, path in sorted(_modules().items()):
        if name.split(".")[0] not in ENGINES:
            continue
        for line, module, statement in _durable_imports(path):
            if module not in ENGINE_MAY_IMPORT:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {statement}")
    assert not wrong, (
        "an engine imports a private module of chio_durable; import the name from chio_durable or "
        "chio_durable.agent if it is public there (their __all__), else re-export it from where it lives "
        "in chio_durable/_engine.py (the engines' internal API, in its section) and import it from "
        "chio_durable._engine:\n  " + "\n  ".join(wrong)
    )


def test_the_engine_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import chio_durable._call\n"
        "from chio_durable._metering import HOLDS\n"
        "from chio_durable.agent import _seams\n"
        "from chio_durable import Evaluation, _params\n"
        "from chio_durable._engine import run_metadata\n"
        "from chio_durable.agent import ChioGovernance\n"
        "if TYPE_CHECKING:\n"
        "    from chio_durable.agent._approvals import ApprovalWaiter\n"
        "def f():\n"
        "    from chio_durable.agent._display import records_html\n"
        "    return importlib.import_module('chio_durable._loop')\n"
    )
    found = [(line, module) for line, module, _ in _durable_imports(sample)]  # ast.walk: breadth-first
    assert {m for _, m in found if m not in ENGINE_MAY_IMPORT} == {
        "chio_durable._call", "chio_durable._metering", "chio_durable.agent._seams", "chio_durable._params",
        "chio_durable.agent._approvals", "chio_durable.agent._display", "chio_durable._loop",
    }
    assert {m for _, m in found if m in ENGINE_MAY_IMPORT} == set(ENGINE_MAY_IMPORT)
