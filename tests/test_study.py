"""The grid runner and the book: ids, dependencies, reuse, failures that don't stop the study, the whole chain."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY, wbc
from wbclib.core import grid
from wbclib.study import book, runner


def test_grid_ids_and_dependencies():
    jobs = runner.grid([0])
    ids = [j.id for j in jobs]
    assert len(ids) == 21 and len(set(ids)) == 21
    assert ids[0] == "prcc-s0"
    assert {"cam16-ce-s0", "cam16-ce-prcc-s0", "cam16-ce-dice-s0", "cam16-ce-prcc-dice-s0"} <= set(ids)
    for n in (1, 10, 50, 100):
        for init in ("scratch", "pretrained"):
            for mask in ("nomask", "mask"):
                assert f"wbc{n}-{init}-{mask}-s0" in ids
    deps = {j.id: j.depends for j in jobs}
    assert deps["cam16-ce-prcc-s0"] == "prcc-s0" and deps["cam16-ce-s0"] is None
    assert deps["wbc10-pretrained-mask-s0"] == "cam16-ce-prcc-dice-s0" and deps["wbc10-scratch-mask-s0"] is None
    assert all(ids.index(d) < ids.index(i) for i, d in deps.items() if d)
    assert len(runner.grid([0, 1, 2])) == 63


def test_only_pulls_in_dependencies():
    ids = [j.id for j in runner.select(runner.grid([0, 1]), "wbc1-pretrained-mask-s1")]
    assert ids == ["prcc-s1", "cam16-ce-prcc-dice-s1", "wbc1-pretrained-mask-s1"]
    with pytest.raises(runner.WbcError, match="matches no run id"):
        runner.select(runner.grid([0]), "nothing-*")


def test_the_smear_chain_is_opt_in_and_selected_with_several_globs():
    assert not any("smears" in j.id for j in runner.grid([0]))
    jobs = runner.grid([0, 1], smear_chain=True)
    by_id = {j.id: j for j in jobs}
    assert len(jobs) == 2 * (21 + 4)
    assert by_id["cam16-ce-smears-dice-s1"].depends == "smears-s1"
    assert by_id["wbc10-smears-mask-s0"].depends == "cam16-ce-smears-dice-s0"
    assert by_id["smears-s0"].params["overrides"] == {"prcc_folder": "smears_nolabel"}
    config = runner.job_config(by_id["smears-s0"], "quick", None, Path("runs"), {})
    assert config.dataset == "prcc" and config.prcc_folder == "smears_nolabel"
    assert book.describe(by_id["wbc1-smears-mask-s0"].structure) == (
        "WBC_1, pretrained on blood-smear + CAM16, with masks, seed 0")
    assert book.describe(by_id["wbc1-pretrained-mask-s0"].structure).startswith("WBC_1, pretrained on pRCC + CAM16")
    picked = [j.id for j in runner.select(jobs, "wbc1-*-mask-s0, wbc10-*-mask-s0")]
    assert set(picked) == {"prcc-s0", "cam16-ce-prcc-dice-s0", "smears-s0", "cam16-ce-smears-dice-s0",
                           *(f"wbc{n}-{k}-mask-s0" for n in (1, 10) for k in ("scratch", "pretrained", "smears"))}


def test_dry_run_plans_without_running(tmp_path, capsys):
    from wbclib.cli import main

    capsys.readouterr()
    assert main(["study", "--dry-run", "--seeds", "2", "--only", "cam16-*", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cam16-ce-prcc-s1  (starts from prcc-s1)" in out and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_failed_configuration_does_not_stop_the_others(tmp_path):
    from wbclib.data import synth

    root = tmp_path / "data"
    synth.generate(root, scale=0.003, seed=0, progress=False)
    bad = next((root / "CAM16_100cls_10mask/train/data/tumor").iterdir())
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    p = wbc(["study", "--data-root", str(root), "--only", "wbc1-*", "--runs-dir", str(tmp_path / "runs"),
             "--no-book", "--jobs", "2", *TINY], tmp_path)  # two at a time, each in its own papermill process
    assert p.returncode == 1, p.stdout + p.stderr
    assert "up to 2 configurations at a time" in p.stdout
    assert "FAILED cam16-ce-prcc-dice-s0: DatasetError" in p.stdout
    assert str(tmp_path / "runs" / "cam16-ce-prcc-dice-s0" / "train.ipynb") in p.stdout
    assert "skipped wbc1-pretrained-mask-s0" in p.stdout
    for rid in ("prcc-s0", "wbc1-scratch-mask-s0", "wbc1-scratch-nomask-s0"):
        assert (tmp_path / "runs" / rid / "metrics.json").is_file(), rid
    # a second invocation reuses what finished and retries only what failed
    p2 = wbc(["study", "--data-root", str(root), "--only", "wbc1-scratch-*", "--runs-dir", str(tmp_path / "runs"),
              "--no-book", *TINY], tmp_path)
    assert p2.returncode == 0 and p2.stdout.count(" reused ") == 2, p2.stdout


@pytest.mark.slow
def test_the_whole_chain_at_a_tiny_size_builds_tables_and_the_site(tiny_book):
    tmp_path, book, p = tiny_book
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "synthetic stand-in" in p.stdout
    assert "training steps" in p.stdout and (tmp_path / "runs" / "study-time.json").is_file()
    index = book / "_build" / "html" / "index.html"
    assert index.is_file() and str(index) in p.stdout
    results = (book / "_build" / "html" / "book" / "generated" / "results.html").read_text()
    for fragment in ("Table 1", "Table 2", "CE + pRCC + Dice", "WBC_100", "Synthetic data", "0.9826",
                     "report (single run)", "(course notes)", "no evidence of a difference", "Learning curve"):
        assert fragment in results, fragment
    pages = sorted(p.name for p in (book / "_build" / "html" / "book" / "generated" / "runs").glob("*.html"))
    assert len(pages) == grid.size() and "wbc100-pretrained-mask-s0.html" in pages
    nb = json.loads((book / "book" / "generated" / "results.ipynb").read_text())
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    summary = (book / "book/generated/data_summary.md").read_text()
    assert "- **WBC**: the **synthetic stand-in**" in summary and "embedded" not in summary
    evaluation = (book / "_build" / "html" / "book" / "generated" / "evaluation.html").read_text()
    assert "wbc100-scratch-mask-s0" in evaluation and "balanced accuracy" in evaluation
    assert (tmp_path / "runs" / "wbc100-scratch-mask-s0" / "external-external" / "metrics.json").is_file()
    fig6 = next(c for c in nb["cells"] if "tsne.transform" in "".join(c["source"]))  # the external set placed
    assert any("image/png" in o.get("data", {}) for o in fig6["outputs"])  # into the t-SNE map, drawn
    assert nb["metadata"]["papermill"]["parameters"]["external"] == "external"  # (relative to the study)
    walkthrough = (book / "_build" / "html" / "book" / "generated" / "walkthrough.html").read_text()
    assert "Exercises" in walkthrough and "After 20 steps" in walkthrough
    # its plain Markdown link to the method page, resolved by the book as a link to that page
    assert re.search(r'href="\.\./method\.html"><span[^>]*>the method</span>', walkthrough)
    assert "without encryption" not in p.stdout + p.stderr  # no kernel warning between the study's own lines
    # Tables 1 and 2 without a header row holding only the row labels' name ("#", "dataset") above empty cells
    assert "<th>dataset</th>" in results and not re.search(r"<tr>\s*<th>(#|dataset)</th>\s*(<th></th>\s*)+</tr>",
                                                            results)


@pytest.mark.slow
def test_pages_open_with_results_and_carry_no_absolute_path_of_the_machine(tiny_book):
    """Every file of the site (pages, notebook sources, search index) is free of the project's, the home
    directory's and the study's own absolute paths, and run pages fold their code and drop parameters."""
    tmp_path, book, p = tiny_book
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    html = book / "_build" / "html"
    forbidden = [str(runner.NOTEBOOKS.parent), str(tmp_path), str(Path.home()) + "/"]
    files = [f for f in html.rglob("*") if f.is_file() and f.suffix in (".html", ".ipynb", ".js", ".txt", ".md")]
    assert len(files) > 30
    for f in files:
        text = f.read_text(errors="replace")
        for path in forbidden:
            assert path not in text, f"{path} in {f.relative_to(html)}"
    page = (html / "book" / "generated" / "runs" / "wbc10-scratch-mask-s0.html").read_text()
    assert "injected-parameters" not in page and "run_dir = " not in page
    assert "tag_hide-input" in page  # code folded behind a toggle
    first_code, first_table = page.find("highlight-ipython3"), page.find("<table")
    assert 0 < first_table and (first_code == -1 or page.find("tag_hide-input") < first_code)


def test_the_notebook_trains_exactly_the_config_the_runner_resolved(tmp_path):
    """The runner resolves each job's config once and hands it to the notebook whole: executing the notebook's
    parameters cell, papermill's injected values and its config cell must give back that very config."""
    import nbformat


    nb = nbformat.read(book.NOTEBOOKS / "train.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source
    setup = next(c for c in nb.cells if "cfg.from_dict(run_config)" in c.source).source
    jobs = runner.grid([0]) + runner.jobs_of(("shift",), [0])
    for job in jobs:
        config = runner.job_config(job, "quick", None, tmp_path, {"lr": 0.01, "resize": None})
        ns: dict = {}
        exec(params, ns)
        ns.update(runner.notebook_params(config, tmp_path / job.id))
        exec(setup, ns)
        assert ns["config"] == config and str(ns["run_dir"]) == str((tmp_path / job.id).resolve()), job.id
    assert config.lr == 0.01 and config.resize is None  # KEY=none reaches the run


def test_time_breakdown_adds_the_parts_of_trained_runs_only(tmp_path):
    jobs = [runner.Job("a-s0", {}, status="finished", seconds=10.0), runner.Job("b-s0", {}, status="reused"),
            runner.Job("c-s0", {}, status="failed", seconds=3.0)]
    for j, timing in (("a-s0", {"setup": 1.0, "train_steps": 6.0, "validation": 1.0, "checkpoints": 0.5,
                                "final_evaluation": 0.5}), ("b-s0", {"train_steps": 100.0})):
        (tmp_path / j).mkdir()
        (tmp_path / j / "metrics.json").write_text(json.dumps({"timing_s": timing, "wall_time_s": 9.0}))
    b = runner.time_breakdown(jobs, tmp_path, book_seconds=5.0, wall=20.0)
    assert b["parts_s"]["train_steps"] == 6.0 and b["parts_s"]["notebook"] == 1.0 and b["parts_s"]["book"] == 5.0
    assert b["work_s"] == 15.0 and b["shares"]["train_steps"] == 6.0 / 15.0
    text = runner.describe_time(b)
    assert text.startswith("time: 20 s wall, 15 s of work") and "training steps" in text and "40.0 %" in text


@pytest.mark.slow
def test_a_kept_alive_kernel_trains_exactly_what_a_fresh_kernel_trains(tmp_path):
    """A slot keeps its kernel from one run to the next (imports paid once); the run must not notice."""
    import pandas as pd

    from wbclib.core import config as cfg
    from wbclib.data import synth

    root = tmp_path / "data"
    synth.generate(root, scale=0.003, seed=0, progress=False)
    overrides = dict(cfg.parse_assignment(s) for s in TINY[1::2])
    params = {j.id: j.params for j in runner.grid([0])}
    book.ensure_kernel()

    def run(slot, rid, runs_dir):
        job = runner.Job(rid, params[rid])
        job.notebook = runs_dir / rid / "train.ipynb"
        config = runner.job_config(job, "quick", str(root), runs_dir, overrides)
        slot.run(job, runner.notebook_params(config, runs_dir / rid))
        assert job.status == "finished", job.detail
        return pd.read_csv(runs_dir / rid / "history.csv").drop(columns="seconds")

    kept, fresh = runner.Slot({}), runner.Slot({})
    try:
        run(kept, "wbc1-scratch-nomask-s0", tmp_path / "a")
        km = kept.km
        second = run(kept, "wbc1-scratch-mask-s0", tmp_path / "a")
        assert kept.km is km and km.is_alive()  # the same kernel ran both
        alone = run(fresh, "wbc1-scratch-mask-s0", tmp_path / "b")
    finally:
        kept.close()
        fresh.close()
    pd.testing.assert_frame_equal(second, alone)


def test_study_outside_a_checkout_says_it_needs_one(tmp_path, monkeypatch):
    """``pip install .`` installs wbclib without the notebooks and the book: the study says so in one line."""
    monkeypatch.setattr(book, "NOTEBOOKS", tmp_path / "notebooks")
    with pytest.raises(runner.WbcError, match="needs a checkout of the project"):
        book.require_checkout()
    monkeypatch.undo()
    book.require_checkout()  # this checkout has them


def test_slots_spread_over_the_gpus_k_per_gpu_and_a_cpu_keeps_its_thread_shares(monkeypatch):
    envs = runner.slot_envs(6, gpus=2)  # --slots-per-gpu 3 on two GPUs
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1", "0", "1"]
    assert {e["WBC_RUNS_PER_DEVICE"] for e in envs} == {"3"}
    assert [e["WBC_RUNS_PER_DEVICE"] for e in runner.slot_envs(3, gpus=2)] == ["2", "1", "2"]
    assert runner.slot_envs(2, gpus=1) == [{"CUDA_VISIBLE_DEVICES": "0", "WBC_RUNS_PER_DEVICE": "2"}] * 2
    assert runner.slot_envs(1, gpus=4) == [{}]  # one slot: the environment as it is
    assert runner.slot_envs(2, gpus=0, cpus=2) == [{"OMP_NUM_THREADS": "1"}] * 2  # a CPU: as before
    executor = runner.SlotExecutor(4, gpus=2)
    try:
        assert executor.capacity == 4 and [s.env["CUDA_VISIBLE_DEVICES"] for s in executor.slots] == ["0", "1"] * 2
    finally:
        executor.close()
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runner.default_jobs(3) == 6 and runner.default_jobs() == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runner.default_jobs(3) == runner.default_jobs(1)  # no GPU: --slots-per-gpu changes nothing


def test_slots_per_gpu_reaches_the_options_and_refuses_zero(capsys, monkeypatch):
    from wbclib import cli

    seen = {}
    monkeypatch.setattr(runner, "run", lambda options, log=print: seen.setdefault("options", options) and 0)
    assert cli.main(["study", "--slots-per-gpu", "3", "--dry-run"]) == 0
    assert seen["options"].slots_per_gpu == 3
    with pytest.raises(SystemExit):
        cli.main(["study", "--slots-per-gpu", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
