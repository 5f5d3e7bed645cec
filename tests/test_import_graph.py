"""The import graph of ``src/`` (built from the AST: module-level AND function-level imports).

Rules it holds:

* no import cycle anywhere inside ``src/`` (a lazy, function-level import counts like any other:
  it hides a cycle from the interpreter, not from the design);
* layers: ``chio_kernel`` <- ``chio_durable`` <- ``chio_prefect`` / ``chio_temporal`` / ``chio_dbos``:
  a package imports only packages below it, and the engines never import each other.

Imports under ``if TYPE_CHECKING:`` are annotations, never executed: left out. A module named in
a string of a module that calls ``importlib.import_module`` counts as imported.

One layering allowance, temporary and documented: the demo (``chio_kernel._demo``, run by the
CLI's ``demo`` command) drives the engine packages to show them end to end; it lives in
``chio_kernel`` only so that ``chio-durable demo`` works out of the box. It should move to the
engines' side (an entry point) and the allowance with it. The CLI's and the sidecar's own
package cycles are listed in ``KNOWN_PACKAGE_CYCLES`` (see there); the kernel's modules have none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYER = {"chio_kernel": 0, "chio_durable": 1, "chio_prefect": 2, "chio_temporal": 2, "chio_dbos": 2}
# (importing module, imported package): the demo drives the engines (see the module doc); the
# CLI's ``demo`` command reaches them through chio_kernel._demo only.
DEMO_ALLOWANCE = {
    ("chio_kernel._demo", "chio_prefect"),
    ("chio_kernel._demo", "chio_temporal"),
}
# Cycles inside a package whose ``__init__`` defines shared helpers and then imports its submodules,
# which import those helpers back (the sidecar's routes, the CLI's command groups). Both packages
# belong to the sidecar/CLI work, not the kernel's; listed so any NEW cycle fails, and expected to
# go when their shared helpers move to a ``_common`` module. Nothing else may be added here.
KNOWN_PACKAGE_CYCLES = [
    ["chio_kernel.cli", "chio_kernel.cli._approvals", "chio_kernel.cli._budgets", "chio_kernel.cli._receipts"],
    [
        "chio_kernel.sidecar", "chio_kernel.sidecar._approvals", "chio_kernel.sidecar._budgets",
        "chio_kernel.sidecar._http_requests", "chio_kernel.sidecar._server",
    ],
]


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


def test_the_graph_is_built_from_both_kinds_of_import() -> None:
    graph = _graph()
    assert "chio_kernel._kernel" in graph["chio_kernel"]  # module level
    assert "chio_kernel._postgres_store" in graph["chio_kernel._store_factory"]  # inside a function
    assert "chio_prefect._demo" in graph["chio_kernel._demo"]  # named for importlib.import_module
    assert "chio_kernel._fleet" not in graph["chio_kernel._kernel"]  # under TYPE_CHECKING: no import


def test_no_import_cycle_inside_src() -> None:
    assert sorted(_cycles(_graph())) == sorted(KNOWN_PACKAGE_CYCLES)


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
            if other == top or (name, other) in DEMO_ALLOWANCE:
                continue
            if LAYER[other] >= LAYER[top]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_the_demo_allowance_is_exactly_what_the_demo_imports() -> None:
    # drop an entry (and the allowance, once empty) when the demo stops importing that package
    graph = _graph()
    used = {(name, target.split(".")[0]) for name, targets in graph.items() for target in targets
            if LAYER[target.split(".")[0]] > LAYER[name.split(".")[0]]}
    assert used == DEMO_ALLOWANCE
