"""The import rules of ARCHITECTURE.md, checked on the source with `ast` (tests/import_graph.py):
dependencies point one way, there are no cycles, TensorFlow and pynvml stay where they belong.
The lint environment runs this file too, so a broken rule fails `tox -e lint`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from import_graph import Graph, Import, _imports, read_graph

# What each package may import from the suite (any depth: a deferred import inside a function counts).
ALLOWED = {
    "common": set(),
    "diagnostics": {"common"},
    "reports": {"common", "diagnostics"},
    "training": {"common", "diagnostics"},
    "bench": {"common", "diagnostics", "reports", "training"},
}
MAX_LINES = 450  # a file past this mixes concerns: split it


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph()


def test_dependencies_point_one_way(graph):
    """diagnostics and reports never import training or bench; common imports nothing of ours."""
    wrong = [
        f"{module} imports {target} ({graph.files[module].name}:{line})"
        for module, target, line in _first_party_imports(graph)
        if (ours := module.split(".")[0]) != (theirs := target.split(".")[0]) and theirs not in ALLOWED[ours]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph):
    assert graph.cycles() == []


def test_tensorflow_is_imported_at_module_level_only_in_training(graph):
    """`gpudiag check` must not pay TensorFlow's ~3 s start: outside training/, import it lazily."""
    wrong = [
        f"{module}:{i.line}"
        for module, found in graph.imports.items()
        for i in found
        if i.top_level
        and i.target.split(".")[0] in ("tensorflow", "keras")
        and not module.startswith("training")
    ]
    assert not wrong, wrong


def test_only_the_nvml_adapter_imports_pynvml(graph):
    wrong = [
        f"{module}:{i.line}"
        for module, found in graph.imports.items()
        for i in found
        if i.target.split(".")[0] == "pynvml" and module != "diagnostics.nvml"
    ]
    assert not wrong, wrong


def test_no_source_file_is_too_long(graph):
    long = {m: n for m, n in graph.line_counts().items() if n > MAX_LINES}
    assert not long, long


def test_the_scan_sees_a_violation():
    """The scan itself: an upward import inside a function is found, and so is a two-module cycle."""
    tree = ast.parse("def f():\n    from training.devices.setup import plan_devices\n")
    found = list(_imports(tree, "diagnostics.probe", is_package=False))
    assert found[0] == Import("training.devices.setup", 2, top_level=False)
    both_ways = Graph(
        files={"a": Path("a.py"), "b": Path("b.py")},
        imports={"a": [Import("b", 1, True)], "b": [Import("a", 1, True)]},
    )
    assert both_ways.cycles() == [["a", "b"]]


def _first_party_imports(graph: Graph) -> list[tuple[str, str, int]]:
    out = []
    for module, found in graph.imports.items():
        for i in found:
            target = graph.resolve(i.target)
            if target is not None and target != module:
                out.append((module, target, i.line))
    return out
