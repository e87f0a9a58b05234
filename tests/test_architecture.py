"""The library's shape: one package per stage, data flowing one way (core → data → model → training → results →
study → cli), and no module importing one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import wbclib

PACKAGE = Path(wbclib.__file__).parent

#: The stages in flow order: a module may import its own package and the packages before it, never one after.
FLOW = ("core", "data", "model", "training", "results", "study", "cli")


def module_name(path: Path) -> str:
    """``training.train`` for wbclib/training/train.py, ``cli`` for wbclib/cli.py."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The wbclib modules a module imports (top level or inside functions), as ``package.module`` names."""
    here = module_name(path).split(".")[:-1]  # the package a relative import starts from
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *(node.module or "").split(".")]).strip(".")
            elif (node.module or "").startswith("wbclib"):
                base = node.module.removeprefix("wbclib").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from wbclib.data import datasets` names a module; `import X` a symbol
                dotted = f"{base}.{alias.name}".strip(".")
                names.add(dotted if dotted in known else base)
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("wbclib.") for a in node.names if a.name.startswith("wbclib."))
    return {n for n in names if n in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def stage(module: str) -> str:
    return module.split(".")[0]


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


def upward(g: dict[str, set[str]]) -> list[str]:
    """Every import that points to a later stage than the importer's."""
    return [f"{m} -> {n}" for m in sorted(g) for n in sorted(g[m]) if FLOW.index(stage(n)) > FLOW.index(stage(m))]


def test_every_module_belongs_to_a_stage():
    assert {stage(m) for m in modules()} <= set(FLOW), "a module outside the stage packages"
    assert all((PACKAGE / s / "__init__.py").is_file() for s in FLOW if s != "cli")


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_imports_one_after_it_in_the_flow():
    assert upward(graph()) == []


def test_the_packages_form_no_cycle():
    g = graph()
    packages = {s: {stage(n) for m in g if stage(m) == s for n in g[m]} - {s} for s in {stage(m) for m in g}}
    assert find_cycle(packages) is None


def test_the_checks_find_a_planted_cycle_and_a_planted_upward_import():
    g = graph()
    g["data.datasets"] = g["data.datasets"] | {"study.runner"}  # data -> study -> ... -> data would be a cycle
    assert find_cycle(g) is not None
    assert upward(g) == ["data.datasets -> study.runner"]


def test_the_book_reads_run_directories_only():
    g = graph()
    assert "cli" not in set().union(*(g[m] for m in g if m != "cli"))  # nothing imports the command line
    assert not g["study.book"] & {"training.train", "study.runner", "study.cluster"}
