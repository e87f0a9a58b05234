"""The study's grid as one table: the jobs it gives are the study's jobs from before the table (same ids,
parameters, starting points and run.json), it is consistent, and a configuration added as one row is trained,
counted and shown in the analysis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import TINY
from wbclib import WbcError
from wbclib.core import grid
from wbclib.results import analysis, shift
from wbclib.study import runner

#: What ``runner.grid`` gave before the grid became one table (seeds 0, 1 and 2; with and without the smear
#: chain; the domain-shift runs of seeds 0 and 1): ids, notebook parameters, starting points and run.json.
BEFORE = Path(__file__).parent / "data" / "grid-before-table.json"


def dump(jobs) -> list[dict]:
    return [{"id": j.id, "params": j.params, "depends": j.depends, "structure": j.structure} for j in jobs]


def test_the_table_gives_the_jobs_of_before_in_the_same_order():
    before = json.loads(BEFORE.read_text())
    seeds = before["seeds"]
    assert dump(runner.grid(seeds)) == before["report"]  # `make study`: same runs, same order, same seeds
    earlier = {j["id"] for j in before["shift (seeds 0, 1)"]}  # the settings added since are rows of their own
    assert [j for j in dump(runner.jobs_of(("shift",), [0, 1])) if j["id"] in earlier] == before["shift (seeds 0, 1)"]
    # The blood-smear chain: the same jobs; each now sits with its stage's other runs instead of first.
    with_smears = dump(runner.grid(seeds, smear_chain=True))
    assert sorted(map(json.dumps, with_smears)) == sorted(map(json.dumps, before["report+smears"]))
    ids = [j["id"] for j in with_smears]
    assert all(ids.index(j["depends"]) < ids.index(j["id"]) for j in with_smears if j["depends"])


def test_the_grid_is_consistent_and_counts_its_runs():
    grid.check()
    assert grid.size() == 21 and grid.size("smears") == 4 and grid.size("shift") == len(shift.SETTINGS) == 11
    assert grid.rows("Table 2") == ["WBC_1", "WBC_10", "WBC_50", "WBC_100"]
    assert grid.columns("Table 2") == [grid.NN, grid.NM, grid.PN, grid.PM]
    assert [c.id for _, c in grid.table("Table 1")] == ["cam16-ce", "cam16-ce-prcc", "cam16-ce-dice",
                                                        "cam16-ce-prcc-dice"]
    assert grid.cell("chains", "WBC_10", grid.SMEARS).id == "wbc10-smears-mask"
    assert shift.SETTINGS["gn"][0] == {"norm": "group"}
    first = grid.CONFIGURATIONS[0]
    for broken, message in (((first, first), "defined twice"),
                            ((dataclasses.replace(first, start_from="cam16-ce"), grid.CONFIGURATIONS[1]),
                             "not a configuration of an earlier stage"),
                            ((dataclasses.replace(first, id="x", dataset="wbc"),), "needs a subset"),
                            ((first, dataclasses.replace(grid.CONFIGURATIONS[1], cells=first.cells)),
                             "filled twice")):
        with pytest.raises(WbcError, match=message):
            grid.check(broken)


#: The row a test adds: WBC_1 from scratch with masks and GroupNorm, a fifth column of Table 2.
EXTRA = grid.Configuration("wbc1-scratch-mask-gn", "wbc", 1, overrides={"norm": "group"},
                           cells=(grid.Cell("Table 2", "WBC_1", "w/o pretrain, with mask, GroupNorm"),))


@pytest.fixture
def one_more_row(monkeypatch):
    monkeypatch.setattr(grid, "CONFIGURATIONS", (*grid.CONFIGURATIONS, EXTRA))


def test_one_more_row_is_one_more_job_column_and_run_count(one_more_row, tmp_path):
    grid.check()
    jobs = {j.id: j for j in runner.grid([0, 1])}
    assert len(jobs) == 2 * 22 and grid.size() == 22
    assert jobs["wbc1-scratch-mask-gn-s1"].depends is None
    config = runner.job_config(jobs["wbc1-scratch-mask-gn-s1"], "quick", None, tmp_path, {})
    assert (config.dataset, config.subset, config.masks, config.norm, config.seed) == ("wbc", 1, True, "group", 1)
    assert analysis.expected_runs(analysis.load_runs(tmp_path)) == 22
    assert ("w/o pretrain, with mask, GroupNorm", "ours") in analysis.table2(analysis.load_runs(tmp_path)).columns


@pytest.mark.slow
def test_a_row_added_to_the_grid_trains_and_appears_in_table_2(one_more_row, tmp_path, capsys):
    """The whole path of a new configuration: ``wbc study --only`` trains it (tiny synthetic data, one epoch),
    its run.json places it, and the analysis shows its number in its own column of Table 2."""
    from wbclib.cli import main
    from wbclib.data import synth

    root, runs_dir = tmp_path / "data", tmp_path / "runs"
    synth.generate(root, scale=0.003, seed=0, progress=False)
    assert main(["study", "--data-root", str(root), "--only", "wbc1-scratch-mask-gn-s0", "--runs-dir",
                 str(runs_dir), "--no-book", "--jobs", "1", *TINY]) == 0, capsys.readouterr().out
    assert json.loads((runs_dir / "wbc1-scratch-mask-gn-s0" / "config.json").read_text())["norm"] == "group"
    df = analysis.load_runs(runs_dir)
    assert list(df["config"]) == ["wbc1-scratch-mask-gn"]
    table = analysis.table2(df)
    got = table.loc["WBC_1", ("w/o pretrain, with mask, GroupNorm", "ours")]
    assert got == f"{df['accuracy'].iloc[0]:.4f}" and table.loc["WBC_1", (grid.NM, "ours")] == "–"
    assert table.loc["WBC_1", ("w/o pretrain, with mask, GroupNorm", analysis.REPORT_COLUMN)] == "–"


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["analysis.ipynb", "evaluation.ipynb"])
def test_the_results_notebooks_read_the_grid_instead_of_restating_it(name):
    """No run count and no configuration name assembled from its parts in the notebooks: both come from the
    grid, so that a row added there reaches the pages."""
    import re

    import nbformat

    code = "\n".join(c.source for c in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells
                     if c.cell_type == "code")
    assert not re.search(r"\b21\b", code)
    assert not re.search(r"f\"wbc\{|startswith\(\"wbc", code)
    assert "WBC_SUBSETS" not in code and "TABLE2_COLUMNS" not in code
