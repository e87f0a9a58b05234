"""Result tables read from hand-made run directories: the data note, the learning-curve points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wbclib import analysis


def fake_run(runs: Path, run_id: str, dataset: str, source: str, balanced: float, train_images: int = 15,
             n: int = 400) -> None:
    d = runs / run_id
    d.mkdir(parents=True)
    split = "test" if dataset == "cam16" else "val"
    (d / "metrics.json").write_text(json.dumps({
        "dataset": dataset, "reported_split": split, "train_images": train_images,
        split: {"n": n, "accuracy": balanced, "balanced_accuracy": balanced, "macro_f1": balanced}}))
    (d / "manifest.json").write_text(json.dumps({"synthetic": source == "synthetic", "data_source": source}))


def test_no_runs_give_an_empty_frame_with_columns(tmp_path):
    df = analysis.load_runs(tmp_path)
    assert len(df) == 0 and "config" in df and "data_source" in df
    assert analysis.banner(df) == "" and len(analysis.learning_points(df)) == 0


def test_banner_names_the_data_of_each_table(tmp_path):
    fake_run(tmp_path, "cam16-ce-s0", "cam16", "synthetic", 0.9, n=22)
    fake_run(tmp_path, "wbc1-scratch-mask-s0", "wbc", "embedded", 0.8)
    text = analysis.banner(analysis.load_runs(tmp_path))
    assert text.startswith(":::{note}")
    table1 = next(line for line in text.splitlines() if "Table 1" in line)
    table2 = next(line for line in text.splitlines() if "Table 2" in line)
    assert "22 images" in table1 and "synthetic stand-in" in table1
    assert "400 images" in table2 and "PBC" in table2 and "not the course data" in table2


def test_all_synthetic_runs_get_the_warning(tmp_path):
    fake_run(tmp_path, "wbc1-scratch-mask-s0", "wbc", "synthetic", 0.5)
    assert analysis.banner(analysis.load_runs(tmp_path)).startswith(":::{warning} Synthetic data")


def test_learning_points_average_seeds_with_a_t_interval(tmp_path):
    for seed, value in enumerate((0.70, 0.80, 0.90)):
        fake_run(tmp_path, f"wbc1-scratch-mask-s{seed}", "wbc", "embedded", value, train_images=15)
    fake_run(tmp_path, "wbc100-scratch-mask-s0", "wbc", "embedded", 0.97, train_images=1669)
    pts = analysis.learning_points(analysis.load_runs(tmp_path)).set_index("subset")
    assert list(pts["images"]) == [15, 1669] and list(pts["seeds"]) == [3, 1]
    # mean 0.8, sd 0.1, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert pts.loc["WBC_1", "mean"] == pytest.approx(0.8)
    assert pts.loc["WBC_1", "high"] - pts.loc["WBC_1", "mean"] == pytest.approx(0.24841, abs=1e-4)
    assert pts.loc["WBC_100", "low"] != pts.loc["WBC_100", "low"]  # NaN: one seed has no interval
