"""The suite's own import graph, read with `ast` (nothing is imported): which first-party module
imports which, at module level or inside a function. `tests/test_import_contract.py` holds the
rules to it; `python tests/import_graph.py [ROOT]` prints the graph's size, any cycle and the largest
files (of this checkout, or of another one at ROOT).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "diagnostics", "training", "reports", "bench")


@dataclass(frozen=True)
class Import:
    target: str  # the imported module, as written (absolute)
    line: int
    top_level: bool  # at module level (not inside a function or class body)


@dataclass
class Graph:
    files: dict[str, Path] = field(default_factory=dict)  # module name -> file
    imports: dict[str, list[Import]] = field(default_factory=dict)  # every import, first-party or not

    @property
    def edges(self) -> dict[str, set[str]]:
        """First-party module -> the first-party modules it imports (at any depth)."""
        return {
            m: {t for i in found if (t := self.resolve(i.target)) and t != m}
            for m, found in self.imports.items()
        }

    def resolve(self, name: str) -> str | None:
        """The first-party module a dotted import name lands in (`a.b.c` -> `a.b` if c is a name)."""
        while name and name not in self.files:
            name = name.rpartition(".")[0]
        return name or None

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan)."""
        edges, index, low, stack, on_stack, found = self.edges, {}, {}, [], set(), []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(edges.get(v, ())):
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
                    found.append(sorted(component))

        for module in sorted(self.files):
            if module not in index:
                visit(module)
        return found

    def line_counts(self) -> dict[str, int]:
        return {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in self.files.items()}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[Import]:
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, id(node) in top_level)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or is)
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield Import(name, node.lineno, id(node) in top_level)
            for alias in node.names:  # `from pkg import module` imports pkg.module
                yield Import(f"{name}.{alias.name}", node.lineno, id(node) in top_level)


def read_graph(root: Path = ROOT) -> Graph:
    graph = Graph()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            graph.files[module_name(path, root)] = path
    for module, path in graph.files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph.imports[module] = list(_imports(tree, module, path.name == "__init__.py"))
    return graph


def main() -> int:
    graph = read_graph(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    edges = graph.edges
    print(f"{len(graph.files)} modules, {sum(len(v) for v in edges.values())} first-party import edges")
    print(f"cycles: {graph.cycles() or 'none'}")
    largest = sorted(graph.line_counts().items(), key=lambda kv: -kv[1])[:8]
    print("largest: " + ", ".join(f"{'/'.join(graph.files[m].parts[-2:])} {n}" for m, n in largest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
