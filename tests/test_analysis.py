"""The results pages' numbers, read from hand-made run directories (one and three seeds) whose expected tables,
intervals and pairings are worked out by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbclib import WBC_CLASSES
from wbclib.core import grid
from wbclib.results import analysis
from wbclib.training import metrics

T_975_DF2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom


def fake_run(runs: Path, run_id: str, dataset: str = "wbc", source: str = "embedded", balanced: float = 0.5,
             train_images: int = 15, n: int = 400, accuracy: float | None = None, majority: float = 0.2,
             correct: dict[str, bool] | None = None, per_class: dict | None = None, cm=None) -> Path:
    """A finished run as the study writes it: metrics.json, manifest.json and, given ``correct`` (image path ->
    right or wrong), an embeddings.npz whose predictions are right exactly on those images."""
    d = runs / run_id
    d.mkdir(parents=True)
    split = "test" if dataset == "cam16" else "val"
    body = {"n": n, "accuracy": balanced if accuracy is None else accuracy, "balanced_accuracy": balanced,
            "macro_f1": balanced, "majority_baseline": majority}
    if per_class is not None:
        body["per_class"] = per_class
    if cm is not None:
        body["confusion_matrix"] = cm
    (d / "metrics.json").write_text(json.dumps({
        "dataset": dataset, "reported_split": split, "train_images": train_images, split: body}))
    (d / "manifest.json").write_text(json.dumps({"synthetic": source == "synthetic", "data_source": source}))
    configuration, _, seed = run_id.rpartition("-s")  # what the study records in run.json
    (d / "run.json").write_text(json.dumps({"configuration": configuration, "seed": int(seed), "chapter": "report"}))
    if correct is not None:
        paths = list(correct)
        labels = np.arange(len(paths)) % 5
        predictions = np.where([correct[p] for p in paths], labels, (labels + 1) % 5)
        np.savez(d / "embeddings.npz", embedding=np.zeros((len(paths), 2), np.float32), label=labels,
                 prediction=predictions, path=np.array(paths), classes=np.array(WBC_CLASSES))
    return d


def right(*flags: int) -> dict[str, bool]:
    """Images img0, img1, ... right (1) or wrong (0)."""
    return {f"img{i}": bool(f) for i, f in enumerate(flags)}


def test_no_runs_give_an_empty_frame_with_columns(tmp_path):
    df = analysis.load_runs(tmp_path)
    assert len(df) == 0 and "config" in df and "data_source" in df
    assert analysis.banner(df) == "" and len(analysis.learning_points(df)) == 0
    assert len(analysis.ablation_tests(df)) == 0


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


def test_table1_with_one_seed_shows_means_without_interval_and_labels_every_reference(tmp_path):
    for cid, acc in (("cam16-ce", 0.90), ("cam16-ce-prcc", 0.85), ("cam16-ce-dice", 0.95)):
        fake_run(tmp_path, f"{cid}-s0", "cam16", "synthetic", acc, n=22, majority=0.5)
    t = analysis.table1(analysis.load_runs(tmp_path))
    assert list(t["accuracy"]) == ["0.9000", "0.8500", "0.9500", "–", "0.5000 (this split)"]
    assert list(t["seeds"])[:4] == [1, 1, 1, 0]
    # the report's numbers (single runs, its Table 1) and the course notes' majority baseline, each so named
    assert list(t[analysis.REPORT_COLUMN]) == ["0.9259", "0.9167", "0.9259", "0.9213", "0.5000 (course notes)"]
    assert analysis.REPORT_COLUMN == "report (single run)"


def test_table2_with_three_seeds_gives_the_t_interval(tmp_path):
    for seed, acc in enumerate((0.70, 0.80, 0.90)):
        fake_run(tmp_path, f"wbc1-scratch-mask-s{seed}", accuracy=acc, balanced=acc - 0.1, majority=0.2)
    fake_run(tmp_path, "wbc100-scratch-nomask-s0", accuracy=0.97, majority=0.2)
    df = analysis.load_runs(tmp_path)
    t = analysis.table2(df, "accuracy")
    col = ("w/o pretrain, with mask", "ours")
    # mean 0.8, sd 0.1: half-width 4.3027 * 0.1 / sqrt(3) = 0.2484
    assert t.loc["WBC_1", col] == "0.8000 ± 0.2484"
    assert t.loc["WBC_100", ("w/o pretrain, w/o mask", "ours")] == "0.9700"  # one seed: no interval
    assert t.loc["WBC_10", col] == "–"
    assert t.loc["WBC_1", ("w/o pretrain, with mask", "report (single run)")] == "0.8958"
    assert t.loc["majority class", col] == "0.2000 (this split)"
    assert t.loc["majority class", ("w/o pretrain, with mask", "report (single run)")] == "0.6128 (course notes)"
    b = analysis.table2(df, "balanced_accuracy")
    assert b.loc["WBC_1", col] == "0.7000 ± 0.2484" and "report (single run)" not in b.columns.get_level_values(1)


def test_learning_points_average_seeds_with_a_t_interval(tmp_path):
    for seed, value in enumerate((0.70, 0.80, 0.90)):
        fake_run(tmp_path, f"wbc1-scratch-mask-s{seed}", "wbc", "embedded", value, train_images=15)
    fake_run(tmp_path, "wbc100-scratch-mask-s0", "wbc", "embedded", 0.97, train_images=1669)
    pts = analysis.learning_points(analysis.load_runs(tmp_path)).set_index("subset")
    assert list(pts["images"]) == [15, 1669] and list(pts["seeds"]) == [3, 1]
    assert pts.loc["WBC_1", "mean"] == pytest.approx(0.8)
    assert pts.loc["WBC_1", "high"] - pts.loc["WBC_1", "mean"] == pytest.approx(T_975_DF2 * 0.1 / np.sqrt(3))
    assert np.isnan(pts.loc["WBC_100", "low"])  # one seed has no interval


def three_seed_ablation(runs: Path) -> None:
    """Mask vs no mask at WBC_10 from scratch, three seeds of four images each.

    seed 0: A right on 4, B on 3 -> +0.25; seed 1: A on 2, B on 0 -> +0.50; seed 2: A on 2, B on 2 (other
    images) -> 0. B's files list their images in another order and one extra image; A has a fourth seed."""
    fake_run(runs, "wbc10-scratch-mask-s0", correct=right(1, 1, 1, 1))
    fake_run(runs, "wbc10-scratch-mask-s1", correct=right(1, 1, 0, 0))
    fake_run(runs, "wbc10-scratch-mask-s2", correct=right(1, 1, 0, 0))
    fake_run(runs, "wbc10-scratch-mask-s3", correct=right(1, 1, 1, 1))  # no partner: left out
    for seed, flags in ((0, (1, 1, 1, 0)), (1, (0, 0, 0, 0)), (2, (0, 0, 1, 1))):
        b = dict(reversed(list(right(*flags).items())))
        b["img9"] = False  # only B evaluated it: not paired
        fake_run(runs, f"wbc10-scratch-nomask-s{seed}", correct=b)


def test_pairing_matches_seeds_by_number_and_images_by_path(tmp_path):
    three_seed_ablation(tmp_path)
    pairs = analysis.paired_by_seed(analysis.load_runs(tmp_path), "wbc10-scratch-mask", "wbc10-scratch-nomask")
    assert list(pairs) == [0, 1, 2]
    a, b = pairs[0]
    assert a.tolist() == [True, True, True, True] and b.tolist() == [True, True, True, False]
    assert [len(a) for a, _ in pairs.values()] == [4, 4, 4]


def test_three_seeds_give_a_t_interval_over_the_per_seed_differences(tmp_path):
    three_seed_ablation(tmp_path)
    t = analysis.compare(analysis.load_runs(tmp_path), "wbc10-scratch-mask", "wbc10-scratch-nomask", n_boot=2000)
    assert t["seeds"] == 3 and t["images"] == [4]
    assert t["per_seed"] == pytest.approx([0.25, 0.5, 0.0])
    # mean 0.25, sd 0.25: half-width 4.3027 * 0.25 / sqrt(3) = 0.6210; t = sqrt(3) -> p = 0.2254
    assert t["diff"] == pytest.approx(0.25)
    assert t["high"] - t["diff"] == pytest.approx(T_975_DF2 * 0.25 / np.sqrt(3))
    assert t["low"] == pytest.approx(0.25 - 0.621033, abs=1e-5)
    assert t["p_value"] == pytest.approx(0.22540, abs=1e-4)
    boot = t["bootstrap"]
    assert boot["seeds"] == 3 and boot["low"] <= 0.0 < 0.25 < boot["high"]
    row = analysis.ablation_tests(analysis.load_runs(tmp_path), n_boot=500).iloc[0]
    assert row["comparison"] == "scratch, with mask vs scratch, without mask"
    assert row["interval covers"] == "3 training seeds (t-interval)" and row["95 % interval"] == "-37.1 to +87.1"
    assert "no evidence of a difference" in row["verdict"] and "equal" not in row["verdict"].split("(")[0]


def test_one_seed_falls_back_to_the_images_and_says_so(tmp_path):
    # A right on 9 of 10 images, B on 1: McNemar b = 8 (A alone right), c = 0, exact binomial p = 2 / 2^8
    fake_run(tmp_path, "wbc1-pretrained-mask-s0", correct=right(1, 1, 1, 1, 1, 1, 1, 1, 1, 0))
    fake_run(tmp_path, "wbc1-pretrained-nomask-s0", correct=right(0, 0, 0, 0, 0, 0, 0, 0, 1, 0))
    t = analysis.compare(analysis.load_runs(tmp_path), "wbc1-pretrained-mask", "wbc1-pretrained-nomask")
    assert t["seeds"] == 1 and t["diff"] == pytest.approx(0.8)
    assert t["mcnemar"]["b"] == 8 and t["mcnemar"]["c"] == 0
    assert t["mcnemar"]["p_value"] == pytest.approx(2 / 2**8)
    assert t["method"] == "paired bootstrap over the images of one seed" and t["low"] > 0
    row = analysis.ablation_tests(analysis.load_runs(tmp_path)).iloc[0]
    assert row["interval covers"] == "the images of one training seed only"
    assert "evidence at α = 0.05 that pretrained, with mask scores higher" in row["verdict"]
    assert "one training seed" in row["verdict"]


def test_one_seed_where_a_alone_is_right_on_one_of_ten_images_is_no_evidence(tmp_path):
    """The book's one-seed verdict rests on the image bootstrap: A alone right on 1 of 10 images (the other 9
    agree) gives p = 2 x 0.9^10 = 0.70 (the chance that 10 draws miss that image, twice), never 0."""
    fake_run(tmp_path, "wbc1-scratch-mask-s0", correct=right(1, 1, 1, 0, 0, 0, 0, 1, 1, 1))
    fake_run(tmp_path, "wbc1-scratch-nomask-s0", correct=right(1, 1, 1, 0, 0, 0, 0, 1, 1, 0))
    t = analysis.compare(analysis.load_runs(tmp_path), "wbc1-scratch-mask", "wbc1-scratch-nomask", n_boot=5000)
    assert t["seeds"] == 1 and t["diff"] == pytest.approx(0.1)
    assert t["p_value"] == pytest.approx(2 * 0.9**10, abs=0.04) and t["low"] == 0.0
    assert t["mcnemar"]["p_value"] == 1.0  # b = 1, c = 0: exact binomial 2 x 1/2, capped at 1
    row = analysis.ablation_tests(analysis.load_runs(tmp_path), n_boot=5000).iloc[0]
    assert "no evidence of a difference" in row["verdict"] and "p < " not in row["verdict"]


def test_hierarchical_bootstrap_carries_the_variation_between_seeds():
    """Seed 0: A right and B wrong on every image (+1); seed 1: both right everywhere (0). Images add no
    variation within a seed, so the replicates are the seed draws: 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, and
    the 95 % interval is 0 to 1. Pooling the images as one sample would give a narrow band around 0.5."""
    ones, zeros = np.ones(50, bool), np.zeros(50, bool)
    r = metrics.hierarchical_bootstrap([(ones, zeros), (ones, ones)], n_boot=4000, seed=1)
    assert r["diff"] == pytest.approx(0.5) and r["low"] == 0.0 and r["high"] == 1.0 and r["seeds"] == 2
    pooled = metrics.paired_bootstrap(np.r_[ones, ones], np.r_[zeros, ones], n_boot=4000, seed=1)
    assert pooled["high"] - pooled["low"] < 0.3
    one = metrics.hierarchical_bootstrap([(ones[:3], np.array([True, False, False]))], n_boot=2000, seed=0)
    assert one["seeds"] == 1 and one["diff"] == pytest.approx(2 / 3) and 0 <= one["low"] <= one["high"] <= 1


def test_seed_t_interval_by_hand():
    r = metrics.seed_t_interval([0.01, 0.03, 0.02])
    # mean 0.02, sd 0.01: half-width 4.3027 * 0.01 / sqrt(3) = 0.024841; t = 0.02 / (0.01 / sqrt(3)) = 3.4641
    assert r["diff"] == pytest.approx(0.02) and r["high"] == pytest.approx(0.02 + 0.0248414, abs=1e-6)
    assert r["p_value"] == pytest.approx(0.07418, abs=1e-4)
    assert metrics.seed_t_interval([0.05])["low"] is None
    assert metrics.seed_t_interval([0.0, 0.0])["p_value"] == 1.0


def test_per_class_recall_and_confusion_of_the_table2_cells(tmp_path):
    recall = {c: {"precision": 1.0, "recall": r, "f1": 1.0, "support": 2}
              for c, r in zip(WBC_CLASSES, (1.0, 0.5, 0.0, 1.0, 0.5))}
    cm = np.diag([2, 1, 0, 2, 1]).tolist()
    cm[1][0], cm[2][3], cm[2][4], cm[4][0] = 1, 1, 1, 1
    for seed in (0, 1):
        fake_run(tmp_path, f"wbc100-scratch-mask-s{seed}", per_class=recall, cm=cm)
    other = {c: {**v, "recall": 1.0} for c, v in recall.items()}
    fake_run(tmp_path, "wbc100-pretrained-mask-s0", per_class=other, cm=np.diag([2] * 5).tolist())
    df = analysis.load_runs(tmp_path)
    r = analysis.per_class_recall(df, 100)
    assert list(r.index) == ["w/o pretrain, with mask", "with pretrain, with mask"]
    assert r.loc["w/o pretrain, with mask"].tolist() == [1.0, 0.5, 0.0, 1.0, 0.5]
    total, classes = analysis.confusion(df, "wbc100-scratch-mask")
    assert classes == list(WBC_CLASSES) and total.sum() == 20 and total[2, 3] == 2 and total[0, 0] == 4
    assert analysis.confusion(df, "wbc10-scratch-mask") is None
    # the results page's confusion figure: one matrix per finished cell of the subset, named by its column
    assert [(name, cm.sum()) for name, cm in analysis.confusions(df, 100)] == [("w/o pretrain, with mask", 20),
                                                                              ("with pretrain, with mask", 10)]
    assert analysis.confusions(df, 1) == []


def test_the_results_page_counts_the_grid_and_says_what_is_missing(tmp_path):
    assert "No finished runs in" in analysis.overview(analysis.load_runs(tmp_path), tmp_path)
    fake_run(tmp_path, "cam16-ce-s0", "cam16", "synthetic", 0.9, n=22, majority=0.5)
    fake_run(tmp_path, "wbc1-scratch-mask-s0", accuracy=0.8, train_images=15)
    fake_run(tmp_path, "wbc1-scratch-mask-s1", accuracy=0.8, train_images=15)
    df = analysis.load_runs(tmp_path)
    assert analysis.expected_runs(df) == 2 * grid.size() == 42  # two seeds of the report's 21 configurations
    text = analysis.overview(df, tmp_path)
    assert "3 finished runs" in text and "3 of the 42 runs" in text
    assert "cam16-ce-prcc-dice" in analysis.synthetic_start_note(df)  # synthetic CAM16, real (embedded) WBC
    assert analysis.mask_counts(df).columns.tolist() == ["training images", "of which with a mask"]
    assert len(analysis.mask_counts(df)) == 2


def test_table1_adds_mask_dice_and_a_table_for_each_second_test_set(tmp_path):
    import pandas as pd

    for cid, dice in (("cam16-ce-dice", 0.70), ("cam16-ce-prcc-dice", 0.80)):
        d = fake_run(tmp_path, f"{cid}-s0", "cam16", "embedded", 0.9, n=109, majority=0.587)
        m = json.loads((d / "metrics.json").read_text())
        m["test"]["masks"] = {"dice": dice, "iou": dice / 2, "n": 109}
        (d / "metrics.json").write_text(json.dumps(m))
    df = analysis.load_runs(tmp_path)
    assert list(analysis.table1(df)["mask Dice"])[:4] == ["–", "–", "0.7000", "0.8000"]
    ext = pd.DataFrame([{"config": "cam16-ce-prcc-dice", "seed": s, "set": "camelyon16", "n": 89, "accuracy": a,
                         "balanced_accuracy": a - 0.05, "mask_dice": 0.9, "tumour_mask_dice": 0.3}
                        for s, a in ((0, 0.6), (1, 0.7), (2, 0.8))])
    t = analysis.table1_external(ext)
    group = "camelyon16 (89 images)"
    half = T_975_DF2 * 0.1 / np.sqrt(3)  # accuracies 0.6, 0.7, 0.8: standard deviation 0.1
    assert t.loc["CE + pRCC + Dice", (group, "accuracy")] == f"0.7000 ± {half:.4f}"
    assert t.loc["CE + pRCC + Dice", (group, "seeds")] == 3 and t.loc["CE", (group, "seeds")] == 0
    assert t.loc["CE + pRCC + Dice", (group, "tumour mask Dice")] == "0.3000 ± 0.0000"
    assert t.loc["CE", (group, "balanced accuracy")] == "–"
    assert len(analysis.table1_external(ext.iloc[:0])) == 0


def test_chain_comparison_pairs_each_chain_with_scratch_by_seed(tmp_path):
    # WBC_1 balanced accuracy by seed: scratch 0.80 0.70 0.75; H&E chain 0.60 0.65 0.55; smears 0.85 0.70 0.80
    # paired differences: H&E -0.20 -0.05 -0.20 (mean -0.15); smears +0.05 0.00 +0.05 (mean +0.0333)
    values = {"wbc1-scratch-mask": (0.80, 0.70, 0.75), "wbc1-pretrained-mask": (0.60, 0.65, 0.55),
              "wbc1-smears-mask": (0.85, 0.70, 0.80)}
    assert len(analysis.chain_comparison(analysis.load_runs(tmp_path))) == 0
    for cid, accs in values.items():
        for seed, acc in enumerate(accs):
            fake_run(tmp_path, f"{cid}-s{seed}", "wbc", "embedded", acc)
    t = analysis.chain_comparison(analysis.load_runs(tmp_path))
    assert list(t.index) == ["WBC_1", "WBC_10"]
    scratch, he, smears = grid.columns("chains")
    half = T_975_DF2 * np.std([-0.20, -0.05, -0.20], ddof=1) / np.sqrt(3)
    assert t.loc["WBC_1", (he, "− scratch (paired by seed)")] == f"-0.150 ± {half:.3f}"
    half = T_975_DF2 * np.std([0.05, 0.0, 0.05], ddof=1) / np.sqrt(3)
    assert t.loc["WBC_1", (smears, "− scratch (paired by seed)")] == f"0.033 ± {half:.3f}"
    assert t.loc["WBC_1", (scratch, "seeds")] == 3 and t.loc["WBC_10", (smears, "seeds")] == 0
    assert t.loc["WBC_10", (he, "− scratch (paired by seed)")] == "–"


def header_rows(table) -> list[list[str]]:
    """The header rows of a table as a notebook (and the book) shows it: the cells of each <thead> row."""
    import re

    head = re.search(r"<thead>(.*?)</thead>", table.to_html(), re.S).group(1)
    return [re.findall(r"<th[^>]*>(.*?)</th>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", head, re.S)]


def test_tables_1_and_2_show_no_header_row_of_their_own_for_the_row_labels(tmp_path):
    fake_run(tmp_path, "cam16-ce-s0", "cam16", "synthetic", 0.9, n=22, majority=0.5)
    fake_run(tmp_path, "wbc1-scratch-mask-s0", accuracy=0.8, majority=0.2)
    df = analysis.load_runs(tmp_path)
    t1 = header_rows(analysis.table1(df))
    assert len(t1) == 1 and t1[0][:3] == ["#", "setting", "CE"]  # the row labels' name sits in the corner
    t2 = header_rows(analysis.table2(df))
    assert len(t2) == 2 and t2[0][0] == "dataset" and t2[1][0] == "" and "ours" in t2[1]  # two column levels
    assert analysis.table2(df).loc["WBC_1", ("w/o pretrain, with mask", "ours")] == "0.8000"
