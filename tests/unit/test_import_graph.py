"""The package's import graph, read from the source (nothing is imported but the top-level package).

Every module of the installed ``nnunet_tubeconv`` is parsed; its imports (absolute and relative, at module level
and inside functions) give the arrows between modules. The layers stay one-way when:

* no module reaches itself again by following the arrows (an import cycle);
* no module outside the harness (``nnunet_tubeconv.benchmarks`` and below) imports the harness: the core package,
  architectures and trainers run without it (``nnunet_tubeconv.cli`` names harness commands by module *name*,
  which is no import);
* no module takes a private name (``_x``) of another module, by ``from m import _x`` or as ``m._x``, and no module
  outside a package imports that package's private modules (``p._m``): what two modules share gets a public name
  in one owner.

An import of a package's submodule is an arrow to the submodule only (Python runs the package's ``__init__`` first,
but a package re-exporting its submodules is no cycle). Imports under ``if TYPE_CHECKING:`` are not run and not
counted.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "nnunet_tubeconv"
HARNESS = "nnunet_tubeconv.benchmarks"
#: sub-packages whose folders sit at the repository root (pyproject's package-dir): an editable install maps them
#: into the package, so they are not below its folder; a wheel has them below it
MAPPED_SUBPACKAGES = ("architectures", "trainers", "benchmarks")


# ------------------------------------------------------------------------------------------------- the modules
def _walk(name: str, folders: list[str], found: dict[str, Path]) -> None:
    """``pkgutil.walk_packages`` without importing the sub-packages it descends into."""
    for info in pkgutil.iter_modules(folders):
        full = f"{name}.{info.name}"
        base = Path(info.module_finder.path) / info.name
        if info.ispkg:
            found[full] = base / "__init__.py"
            _walk(full, [str(base)], found)
        elif base.with_suffix(".py").is_file():
            found[full] = base.with_suffix(".py")


def package_modules() -> dict[str, Path]:
    """Dotted name -> source file of every Python module of the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    found = {PACKAGE: Path(spec.origin)}
    _walk(PACKAGE, list(spec.submodule_search_locations), found)
    for sub in MAPPED_SUBPACKAGES:
        name = f"{PACKAGE}.{sub}"
        if name not in found:
            sub_spec = importlib.util.find_spec(name)
            found[name] = Path(sub_spec.origin)
            _walk(name, list(sub_spec.submodule_search_locations), found)
    return found


# ------------------------------------------------------------------------------------------------- the imports
def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


@dataclass
class Imports:
    """What one module imports: arrows to modules and private names it takes from others."""

    edges: set[str] = field(default_factory=set)
    #: (line, imported module or name, why it is not allowed)
    private: list[tuple[int, str, str]] = field(default_factory=list)
    #: (line, module): imports of the harness
    harness: list[tuple[int, str]] = field(default_factory=list)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _private_module_owner(name: str) -> str | None:
    """The package a private module in ``name`` belongs to (``a.b`` for ``a.b._m`` or ``a.b._m.x``), or None."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if i and _is_private(part):
            return ".".join(parts[:i])
    return None


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    parts: list[str] = []
    cur: ast.AST = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    if not isinstance(cur, ast.Name):
        return None
    return [cur.id, *reversed(parts)]


def module_imports(module: str, source: str, is_package: bool, known: Mapping[str, object]) -> Imports:
    """The intra-package imports of ``module`` (its ``source``) among the ``known`` module names."""
    tree = ast.parse(source)
    skipped = _type_checking_nodes(tree)
    out = Imports()
    bound: dict[str, str] = {}  # local name -> the module it names

    def arrow(target: str, line: int) -> None:
        if target != module:
            out.edges.add(target)
        if _within(target, HARNESS) and not _within(module, HARNESS):
            out.harness.append((line, target))
        owner = _private_module_owner(target)
        if owner is not None and not _within(module, owner):
            out.private.append((line, target, f"a private module of {owner}"))

    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _within(alias.name, PACKAGE):
                    continue
                target = alias.name
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                arrow(target, node.lineno)
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            if not _within(base, PACKAGE):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # a submodule
                    arrow(sub, node.lineno)
                    bound[alias.asname or alias.name] = sub
                    continue
                arrow(base, node.lineno)
                if _is_private(alias.name) and base != module:
                    out.private.append((node.lineno, sub, f"a private name of {base}"))

    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Attribute):
            continue
        chain = _attribute_chain(node)
        if not chain or chain[0] not in bound:
            continue
        target = bound[chain[0]]
        rest = chain[1:]
        while rest and f"{target}.{rest[0]}" in known:
            target, rest = f"{target}.{rest[0]}", rest[1:]
        if rest and _is_private(rest[0]) and target != module:
            out.private.append((node.lineno, f"{target}.{rest[0]}", f"a private name of {target}"))
    out.private = sorted(set(out.private))
    return out


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, Imports]:
    """``{module: Imports}`` of ``{module: (source, is_package)}``."""
    return {m: module_imports(m, src, is_pkg, sources) for m, (src, is_pkg) in sources.items()}


def installed_graph() -> dict[str, Imports]:
    files = package_modules()
    return import_graph({m: (p.read_text(encoding="utf-8"), p.name == "__init__.py") for m, p in files.items()})


# ------------------------------------------------------------------------------------------------- cycles
def strongly_connected(edges: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in edges), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def one_cycle(edges: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected ``component``: ``[a, b, ..., a]``."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node] & inside):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def cycles(graph: Mapping[str, Imports]) -> list[list[str]]:
    edges = {m: imp.edges for m, imp in graph.items()}
    return [one_cycle(edges, c) for c in strongly_connected(edges)]


def harness_imports(graph: Mapping[str, Imports]) -> list[str]:
    return [f"{m}:{line} imports {target}" for m, imp in sorted(graph.items()) for line, target in imp.harness]


def private_imports(graph: Mapping[str, Imports]) -> list[str]:
    return [f"{m}:{line} takes {name} ({why})" for m, imp in sorted(graph.items()) for line, name, why in imp.private]


# ------------------------------------------------------------------------------------------------- the tests
def test_the_walk_finds_every_layer_of_the_installed_package():
    files = package_modules()
    for name in ("nnunet_tubeconv.cli", "nnunet_tubeconv.evaluation.report", "nnunet_tubeconv.architectures.variants",
                 "nnunet_tubeconv.trainers", "nnunet_tubeconv.benchmarks.runner",
                 "nnunet_tubeconv.benchmarks.perf.bench_train", "nnunet_tubeconv.benchmarks.studies.snakes.ablation"):
        assert name in files, f"{name} not found by the walk"
    assert all(p.suffix == ".py" and p.is_file() for p in files.values())


def test_the_checks_find_cycles_harness_imports_and_private_names_in_made_up_modules():
    """The analysis itself, on modules written here: relative and function-level imports count, TYPE_CHECKING
    imports and a package's own private modules do not."""
    sources = {
        "nnunet_tubeconv": ("", True),
        "nnunet_tubeconv.core": ("", True),
        "nnunet_tubeconv.core.a": ("from .b import helper\n", False),
        "nnunet_tubeconv.core.b": ("def helper():\n    from nnunet_tubeconv.core import c\n", False),
        "nnunet_tubeconv.core.c": ("from . import a, _impl\nfrom ._impl import run\n", False),
        "nnunet_tubeconv.core._impl": ("run = 1\n", False),
        "nnunet_tubeconv.core.d": (("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from nnunet_tubeconv.benchmarks import runner\n"), False),
        "nnunet_tubeconv.core.e": (("from nnunet_tubeconv.core.a import _secret\nimport nnunet_tubeconv.core.b as b\n"
                                    "x = b._hidden\ny = b.__name__\n"), False),
        "nnunet_tubeconv.benchmarks": ("", True),
        "nnunet_tubeconv.benchmarks.runner": ("from nnunet_tubeconv.core import _impl\n", False),
        "nnunet_tubeconv.cli": (("COMMANDS = {'benchmark': 'nnunet_tubeconv.benchmarks.runner'}\n"
                                 "def main():\n    from .benchmarks import runner\n"), False),
    }
    graph = import_graph(sources)
    assert cycles(graph) == [["nnunet_tubeconv.core.a", "nnunet_tubeconv.core.b", "nnunet_tubeconv.core.c",
                              "nnunet_tubeconv.core.a"]]
    assert harness_imports(graph) == ["nnunet_tubeconv.cli:3 imports nnunet_tubeconv.benchmarks.runner"]
    assert private_imports(graph) == [
        ("nnunet_tubeconv.benchmarks.runner:1 takes nnunet_tubeconv.core._impl (a private module of "
         "nnunet_tubeconv.core)"),
        "nnunet_tubeconv.core.e:1 takes nnunet_tubeconv.core.a._secret (a private name of nnunet_tubeconv.core.a)",
        "nnunet_tubeconv.core.e:3 takes nnunet_tubeconv.core.b._hidden (a private name of nnunet_tubeconv.core.b)",
    ]


def test_no_import_cycle():
    found = cycles(installed_graph())
    assert not found, "import cycles (each module imports the next):\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_core_does_not_import_the_harness():
    found = harness_imports(installed_graph())
    assert not found, (f"modules outside {HARNESS} import it (move what both need below the harness):\n"
                       + "\n".join(found))


def test_no_module_takes_a_private_name_of_another():
    found = private_imports(installed_graph())
    assert not found, "private names taken from other modules (give them a public name in one owner):\n" + "\n".join(
        found)
