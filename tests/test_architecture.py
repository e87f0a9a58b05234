"""The library's shape: data flows one way, so no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import wbclib

PACKAGE = Path(wbclib.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The wbclib modules a module imports (top level or inside functions), by short name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("wbclib"):
                mod = (node.module or "").removeprefix("wbclib").lstrip(".")
                if mod:
                    names.add(mod.split(".")[0])
                else:  # from . import a, b
                    names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("wbclib."))
    return names


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {m: (imports_of(PACKAGE / f"{m}.py") & modules) - {m} for m in modules}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    g = graph()
    g["data"] = g["data"] | {"study"}  # data -> study -> ... -> data would be a cycle
    assert find_cycle(g) is not None


def test_the_flow_runs_from_data_to_the_book():
    g = graph()
    assert not g["data"] & {"model", "train", "study", "analysis", "cli"}
    assert not g["model"] & {"train", "study", "analysis", "cli"}
    assert "cli" not in set().union(*(g[m] for m in g if m != "cli"))  # nothing imports the command line
    assert "study" not in g["book"] and "train" not in g["book"]  # the book reads run directories only
