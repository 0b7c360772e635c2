"""The import graph of the ``lieprop`` package: no cycles, no upward imports between layers (docs/DESIGN.md).

The graph is read from the source with :mod:`ast` (nothing is imported). An edge ``a -> b`` is an import of module
``b`` in module ``a``; ``from x import y`` is an edge to ``x.y`` when that is a module, else to ``x``. Imports in a
module's body (class bodies, ``try`` and ``if TYPE_CHECKING:`` blocks included) are *module-level*; imports inside a
function are *function-level* and kept apart: they are allowed for heavy or optional third-party packages and for
lazy loading, never to reach a lieprop module that imports the importer back.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "lieprop"

#: docs/DESIGN.md, "Layers and what each may import": a module's layer is that of its longest listed prefix.
LAYER_OF = {
    "lieprop.data": "data",
    "lieprop.model": "model",
    "lieprop.training": "training",
    "lieprop.inference": "inference",
    "lieprop.scoring": "scoring/service",
    "lieprop.jobs": "scoring/service",  # the deprecated old name of lieprop.scoring (shim modules)
    "lieprop.service": "scoring/service",
    "lieprop.cli": "cli",
    "lieprop": "package",  # the top-level package: __version__ and the lazy `lieprop.predict` (inference)
    "lieprop.version": "base",  # the version string, below every layer
    "lieprop.cli_parser": "base",  # the subcommands' parser helper (argparse only), used by cli and training
}
MAY_IMPORT = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "data", "model"},
    "training": {"base", "data", "model", "training"},
    "inference": {"base", "data", "model", "inference"},
    "scoring/service": {"base", "data", "model", "training", "inference", "scoring/service"},
    "cli": {"base", "data", "model", "training", "inference", "scoring/service", "cli", "package"},
    "package": {"base", "inference"},
}

#: Known upward imports, each to be removed by its owner (not by the service work); (importer, imported): why.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}  # none left

#: Third-party packages a function may import lazily: heavy or optional ones, so that `import lieprop`, `lieprop
#: --help` and pool workers stay light. The standard library is always allowed.
LAZY_THIRD_PARTY = {
    "torch", "rdkit", "ase", "uvicorn", "pyarrow",  # heavy: a second or more to import, or a server
    "ray", "matplotlib",  # optional extras (pyproject.toml: ray, train)
    "tqdm", "yaml",  # only for a progress bar / a YAML config file
    "pydantic",  # CLI parsers built from pydantic models load it only when that subcommand's parser is built
}

#: Function-level imports of lieprop modules that close a cycle (the imported module reaches the importer back);
#: (importer, imported): why. Empty on purpose: a function-level import must not dodge a cycle.
ALLOWED_LAZY_CYCLES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  #: inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement and whether it is inside a function."""
    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, lazy
            yield from walk(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    yield from walk(tree, False)


def edges() -> tuple[list[Edge], list[tuple[str, str, int]]]:
    """(edges between lieprop modules, lazy third-party imports as (importer, top-level package, line))."""
    found: list[Edge] = []
    third_party: list[tuple[str, str, int]] = []
    for module, path in MODULES.items():
        for node, lazy in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            for target in targets:
                if target == "lieprop" or target.startswith("lieprop."):
                    while target not in MODULES:  # `import lieprop.x.y` of a name that is not a module
                        target = target.rpartition(".")[0]
                    if target != module:
                        found.append(Edge(module, target, node.lineno, lazy))
                elif lazy:
                    third_party.append((module, target.partition(".")[0], node.lineno))
    return found, third_party


EDGES, LAZY_THIRD_PARTY_IMPORTS = edges()


def layer(module: str) -> str:
    prefix = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[prefix]


def _graph(kinds: set[bool]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        if e.lazy in kinds:
            graph[e.source].add(e.target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return components


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for w in graph[todo.pop()]:
            if w == goal:
                return True
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return False


def test_the_graph_is_read():
    """A sanity check of the reader itself, on imports that exist."""
    pairs = {(e.source, e.target, e.lazy) for e in EDGES}
    assert ("lieprop.service.app", "lieprop.service.state", False) in pairs
    assert ("lieprop.service.routes", "lieprop.service.routes.jobs", False) in pairs  # from pkg import module
    assert ("lieprop", "lieprop.inference", True) in pairs  # the lazy `lieprop.predict`
    assert len(MODULES) > 30 and len(EDGES) > 100


def test_no_import_cycles_between_modules():
    """Module-level imports (TYPE_CHECKING ones included, which hide cycles rather than remove them)."""
    graph = _graph({False})
    for source, target in ALLOWED_UPWARD:
        graph[source].discard(target)
    assert _cycles(graph) == []


def test_function_level_imports_never_close_a_cycle():
    """A function may import a lieprop module lazily, but that module must not import the importer back."""
    everything = _graph({False, True})
    for source, target in ALLOWED_UPWARD:
        everything[source].discard(target)
    closing = sorted({(e.source, e.target) for e in EDGES if e.lazy and (e.source, e.target) not in ALLOWED_UPWARD
                      and _reaches(everything, e.target, e.source)} - set(ALLOWED_LAZY_CYCLES))
    assert closing == []


def test_function_level_third_party_imports_are_heavy_or_optional():
    stdlib = sys.stdlib_module_names
    odd = sorted({(m, pkg, line) for m, pkg, line in LAZY_THIRD_PARTY_IMPORTS
                  if pkg not in stdlib and pkg not in LAZY_THIRD_PARTY})
    assert odd == []


def test_no_upward_imports_between_layers():
    """docs/DESIGN.md: data < model < training / inference < scoring / service < cli."""
    upward = sorted({(e.source, e.target) for e in EDGES if layer(e.target) not in MAY_IMPORT[layer(e.source)]}
                    - set(ALLOWED_UPWARD))
    assert upward == [], "\n".join(f"{s} ({layer(s)}) imports {t} ({layer(t)})" for s, t in upward)


def test_every_allowed_exception_still_exists():
    """An allow-list entry whose import is gone must be removed, so the list only shrinks."""
    edges = {(e.source, e.target) for e in EDGES}
    gone = [pair for pair in ALLOWED_UPWARD if pair not in edges]
    assert gone == [], f"{gone} no longer import; remove them from ALLOWED_UPWARD"


def test_the_service_is_split_without_cycles():
    """The REST service's modules (docs/DESIGN.md): the routes reach the state, the state never the routes."""
    graph = _graph({False, True})
    service = [m for m in MODULES if m.startswith("lieprop.service.")]
    top = {"lieprop.service.app", "lieprop.service.replicas"}  # replicas builds the app in each Ray Serve replica
    assert not any(_reaches(graph, m, "lieprop.service.app") for m in service if m not in top)
    assert not any(_reaches(graph, m, "lieprop.service.replicas") for m in service if m != "lieprop.service.replicas")
    for low in ("lieprop.service.state", "lieprop.service.job_runner", "lieprop.service.errors"):
        assert not any(_reaches(graph, low, m) for m in service if m.startswith("lieprop.service.routes")), low
    cli_lazy = {e.target for e in EDGES if e.source == "lieprop.cli"}
    assert "lieprop.scoring.options" in cli_lazy
    assert not _reaches(_graph({False}), "lieprop.scoring.options", "lieprop.service.app")  # the CLI stays FastAPI-free


def test_the_old_package_name_still_imports_with_a_deprecation_warning():
    """lieprop.jobs became lieprop.scoring (file scoring); the old imports give the same modules for a release."""
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    import lieprop.jobs.pipeline as old, lieprop.scoring.pipeline as new\n"
            "    from lieprop.jobs.store import JobStore\n"
            "assert old is new and JobStore.__module__ == 'lieprop.service.job_store'\n"
            "assert any(w.category is DeprecationWarning and 'lieprop.scoring' in str(w.message) for w in seen)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
