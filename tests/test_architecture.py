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


# -- one of each: the training step, the forward loop, the loss of a config, the loss-part names --------------

ROOT = PACKAGE.parent
#: Where the library is used besides itself: the benchmarks take the same step and the same model.
USERS = sorted((ROOT / "benchmarks").glob("*.py"))


def scanned() -> dict[str, Path]:
    return {**modules(), **{f"benchmarks.{p.stem}": p for p in USERS}}


def calls(path: Path):
    """(enclosing function, callee name, call) of every call in a module."""
    def visit(node, where):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.Call):
                f = child.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                yield where, name, child
            yield from visit(child, inner)

    yield from visit(ast.parse(path.read_text()), "<module>")


def is_network(name: str | None) -> bool:
    """A callee that holds a network: ``model``, ``step_model``, ``net`` (not ``build_model``, ``load_model``)."""
    return name is not None and (name in ("model", "net", "network") or name.endswith("_model")) \
        and not name.startswith(("build_", "load_"))


def test_the_network_runs_only_in_the_forward_loop_and_the_training_step():
    where = {(m, fn) for m, p in scanned().items() for fn, name, call in calls(p)
             if (is_network(name) and call.args) or (name == "forward" and isinstance(call.func, ast.Attribute)
             and is_network(getattr(call.func.value, "id", None)))}
    # the forward loop, the training step, and the FLOP count on the meta device (shapes only, no data)
    assert where == {("training.inference", "forward"), ("training.train", "train_step"), ("model.network", "_flops")}


def test_backward_and_optimiser_steps_only_in_the_training_step():
    where = {(m, fn) for m, p in scanned().items() for fn, name, call in calls(p) if name == "backward"
             or (name == "step" and "optim" in ast.unparse(call.func.value))}
    assert where == {("training.train", "train_step"), ("model.network", "_flops")}


def test_the_loss_is_built_from_a_config_in_one_place():
    built = [(m, fn) for m, p in scanned().items() for fn, name, _ in calls(p) if name == "MultiTaskLoss"]
    assert built == []  # everyone calls MultiTaskLoss.from_config
    # and one training step, one forward loop, one model loader (module-level functions; a network's own
    # ``forward`` method is what they call)
    defined = [(m, n.name) for m, p in scanned().items() for n in ast.parse(p.read_text()).body
               if isinstance(n, ast.FunctionDef) and n.name in ("train_step", "forward", "load_model")]
    assert sorted(defined) == [("training.inference", "forward"), ("training.inference", "load_model"),
                               ("training.train", "train_step")]


def test_the_loss_part_names_are_spelled_in_the_loss_module_only():
    from wbclib.model.losses import LOSS_PARTS

    # training.metrics' "dice" is the Dice score of a predicted mask, a metric rather than a loss part; the
    # results package names the columns of its tables (results.plots' panels are checked against LOSS_PARTS)
    mods = {m: p for m, p in scanned().items() if m != "training.metrics" and not m.startswith(("results.", "cli"))}
    spelled = sorted({(m, n.value) for m, p in mods.items() for n in ast.walk(ast.parse(p.read_text()))
                      if isinstance(n, ast.Constant) and n.value in LOSS_PARTS and m != "model.losses"})
    assert spelled == []


def test_the_checks_find_a_planted_forward_call_and_a_planted_loss(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def evaluate(model, x):\n    loss = MultiTaskLoss(2.0, 1.0)\n    return loss(model(x), x)\n")
    found = {(fn, name) for fn, name, call in calls(planted) if is_network(name) or name == "MultiTaskLoss"}
    assert found == {("evaluate", "model"), ("evaluate", "MultiTaskLoss")}
