"""The notebooks as a person runs them: defaults, a fresh folder, reruns with other parameters, no runs at all."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import papermill
import pytest

from wbclib.study import book

ROOT = Path(__file__).resolve().parents[1]


def outputs(path: Path) -> str:
    """Every text and markdown output of an executed notebook, joined."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", f"{path}: {o.get('ename')}: {o.get('evalue')}"
            data = o.get("data", {})
            parts += [o.get("text", ""), "".join(data.get("text/markdown", "")), "".join(data.get("text/plain", ""))]
    return "\n".join(map(str, parts))


@pytest.fixture
def project(tmp_path):
    """A fresh folder with the notebooks, as in a clone: their default `../runs` is `tmp_path/runs`."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    return tmp_path


def run(project: Path, name: str, **params) -> str:
    out = project / f"out-{name}-{len(list(project.glob('out-*')))}.ipynb"
    papermill.execute_notebook(str(project / "notebooks" / name), str(out), parameters=params,
                               kernel_name=book.KERNEL, cwd=str(project / "notebooks"), progress_bar=False)
    return outputs(out)


@pytest.mark.slow
def test_analysis_of_an_empty_runs_folder_says_so_and_ends_cleanly(project):
    (project / "empty").mkdir()
    text = run(project, "analysis.ipynb", runs_dir=str(project / "empty"))
    assert "No finished runs in `empty/`" in text and "make study" in text


@pytest.mark.slow
def test_train_with_defaults_then_analysis_and_evaluation_with_theirs(project):
    """Defaults except the subset (WBC_1 keeps it short); a changed parameter gets its own run directory."""
    text = run(project, "train.ipynb", subset=1)
    first = sorted((project / "runs").iterdir())
    assert len(first) == 1 and re.fullmatch(r"notebook-wbc1-[0-9a-f]{8}", first[0].name)
    assert (first[0] / "metrics.json").is_file() and "Run directory" in text
    run(project, "train.ipynb", subset=1)  # the same parameters again: the same directory, nothing new
    assert sorted((project / "runs").iterdir()) == first
    run(project, "train.ipynb", subset=1, seed=1)  # another configuration: a directory of its own
    assert len(list((project / "runs").iterdir())) == 2
    text = run(project, "analysis.ipynb")
    assert "Partial" in text and "2 finished runs in `runs/`" in text
    text = run(project, "evaluation.ipynb")  # its default: the embedded external sets
    assert "`bccd`" in text and "No finished WBC_100 model" in text


def test_lab_uses_the_kernel_that_papermill_uses():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^KERNEL\s*:=\s*{book.KERNEL}$", makefile, re.M)
    assert "jupyter lab --notebook-dir=. --LabApp.default_url=/lab/tree/notebooks" in makefile  # opens notebooks/
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] == book.KERNEL, nb.name
