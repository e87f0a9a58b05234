"""Tables and tests of the results pages, read only from finished run directories.

Every table reports the mean and a 95 % confidence interval across seeds, the report's own number (a single
run) beside ours, the majority-class baseline labelled by its source, and paired tests between ablation
settings on the same images whose intervals include the variation between training seeds.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from wbclib import WBC_SUBSETS
from wbclib.core import storage
from wbclib.data import datasets
from wbclib.training import metrics, runs

TABLE1_SETTINGS = [(runs.cam16_configuration(prcc, dice), name) for prcc, dice, name in (
    (False, False, "CE"), (True, False, "CE + pRCC"), (False, True, "CE + Dice"), (True, True, "CE + pRCC + Dice"))]
TABLE2_COLUMNS = [("scratch", "nomask"), ("scratch", "mask"), ("pretrained", "nomask"), ("pretrained", "mask")]
#: The reference report's column: each of its numbers is one training run (it reports no seeds or intervals).
REPORT_COLUMN = "report (single run)"
COLUMN_NAMES = {("scratch", "nomask"): "w/o pretrain, w/o mask", ("scratch", "mask"): "w/o pretrain, with mask",
                ("pretrained", "nomask"): "with pretrain, w/o mask", ("pretrained", "mask"): "with pretrain, with mask"}


def reference() -> dict:
    """The reference report's published numbers (data shipped with the package)."""
    return json.loads(resources.files("wbclib.results").joinpath("reference_results.json").read_text())


def load_runs(runs_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: id, configuration, seed and its headline metrics."""
    rows = []
    for d in sorted(Path(runs_dir).glob("*/metrics.json")):
        run_dir = d.parent
        structure = runs.read_structure(run_dir)
        if structure.get("chapter", "report") != "report":
            continue  # the domain-shift chapter's runs (wbclib.results.shift) are not part of the report's tables
        m = storage.read_json(d) or {}
        split = m.get(m.get("reported_split", ""), {})
        manifest = storage.read_json(run_dir / "manifest.json") or {}
        rows.append({
            "run": run_dir.name, "config": structure["configuration"], "seed": int(structure["seed"]),
            "dataset": m.get("dataset"),
            "split": m.get("reported_split"), "n": split.get("n"), "accuracy": split.get("accuracy"),
            "balanced_accuracy": split.get("balanced_accuracy"), "macro_f1": split.get("macro_f1"),
            "mask_dice": (split.get("masks") or {}).get("dice"),
            "majority_baseline": split.get("majority_baseline"), "psnr": split.get("psnr"),
            "train_mask_dice": (m.get("train_masks") or {}).get("dice"), "train_images": m.get("train_images"),
            "train_masks": m.get("train_masks_available"), "minutes": m.get("wall_time_s", 0) / 60,
            "synthetic": manifest.get("synthetic"), "data_source": manifest.get("data_source") or (
                "synthetic" if manifest.get("synthetic") else "data-root"), "path": str(run_dir),
        })
    columns = ["run", "config", "seed", "dataset", "split", "n", "accuracy", "balanced_accuracy", "macro_f1",
               "mask_dice", "majority_baseline", "psnr", "train_mask_dice", "train_images", "train_masks", "minutes",
               "synthetic", "data_source", "path"]
    return pd.DataFrame(rows, columns=columns)


TABLE_DATASETS = (("Table 1", "cam16", "CAM16 test split"), ("Table 2", "wbc", "WBC validation split"),
                  ("pretraining", "prcc", "pRCC stage, reconstruction only"))


def _sources(df: pd.DataFrame, dataset: str) -> list[str]:
    return sorted(df.loc[df["dataset"] == dataset, "data_source"].dropna().unique()) if len(df) else []


def banner(df: pd.DataFrame) -> str:
    """A MyST admonition for the top of a results page: where each table's images come from (a warning when
    every number comes from the synthetic stand-in)."""
    if not len(df):
        return ""
    if set(df["data_source"].dropna()) <= {"synthetic"}:
        return (":::{warning} Synthetic data\nThese numbers come from the **synthetic stand-in** of the course data "
                "(procedurally drawn cells), trained with the CPU `quick` profile. They show that the pipeline "
                "works end to end; they are not results about real blood smears. Rerun `wbc study` without "
                "`--data synthetic` for the embedded real cells, or with `--data-root PATH` for the course data.\n:::")
    lines = []
    for table, dataset, what in TABLE_DATASETS:
        sources = _sources(df, dataset)
        if not sources:
            continue
        n = df.loc[df["dataset"] == dataset, "n"].dropna()
        size = f", {int(n.iloc[0])} images" if len(n) and dataset != "prcc" else ""
        words = [datasets.describe_source(s, dataset) for s in sources]
        lines.append(f"- **{table}** ({what}{size}): " + "; ".join(words) + ".")
    return ":::{note} Where these numbers come from\n" + "\n".join(lines) + "\n:::" if lines else ""


def _ci_cell(values: pd.Series, digits: int = 4) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    return metrics.format_mean_ci(metrics.mean_ci(values.to_numpy()), digits)


def cam16_external(df: pd.DataFrame, sets: dict[str, str | Path] | None) -> pd.DataFrame:
    """Every finished CAM16 run on each CAM16-class test set (the real CAMELYON16 patches of the embedded data):
    one row per run and set with accuracy, balanced accuracy and mask Dice. The evaluations are written into
    the run directories and reused (:func:`wbclib.results.evaluate.evaluate_into_run`)."""
    import matplotlib.pyplot as plt

    from wbclib.results.evaluate import evaluate_into_run

    rows = []
    for _, r in df[df["dataset"] == "cam16"].iterrows() if len(df) else ():
        for name, folder in (sets or {}).items():
            m = evaluate_into_run(r["path"], name, folder)
            plt.close("all")
            rows.append({"run": r["run"], "config": r["config"], "seed": r["seed"], "set": name, "n": m["n"],
                         "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                         "mask_dice": (m.get("masks") or {}).get("dice"),
                         "tumour_mask_dice": ((m.get("masks_by_class") or {}).get("tumor") or {}).get("dice")})
    return pd.DataFrame(rows, columns=["run", "config", "seed", "set", "n", "accuracy", "balanced_accuracy",
                                       "mask_dice", "tumour_mask_dice"])


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """CAM16 test accuracy of the four settings, with balanced accuracy, macro F1, mask Dice and the report's
    number.

    Ours: mean ± 95 % t half-width over seeds (the mean alone for one seed). The report's numbers are single
    runs. The majority-class row: ours is measured on the split we evaluated; the reference one comes from the
    course notes (the report does not state it). Mask Dice is the mean over the test images that have a mask
    (an image whose true and predicted masks are both empty scores 1)."""
    ref = reference()["cam16_test_accuracy"]
    rows = []
    for i, (cid, name) in enumerate(TABLE1_SETTINGS, start=1):
        sub = df[df["config"] == cid]
        rows.append({"#": i, "setting": name, "CE": "✓", "pRCC": "✓" if "prcc" in cid else "",
                     "Dice": "✓" if "dice" in cid else "", "seeds": len(sub),
                     "accuracy": _ci_cell(sub["accuracy"]), "balanced accuracy": _ci_cell(sub["balanced_accuracy"]),
                     "macro-F1": _ci_cell(sub["macro_f1"]), "mask Dice": _ci_cell(sub["mask_dice"]),
                     REPORT_COLUMN: f"{ref[cid]:.4f}"})
    cam = df[df["dataset"] == "cam16"]["majority_baseline"].dropna()
    notes = reference()["course_notes"]
    rows.append({"#": "", "setting": "majority class", "CE": "", "pRCC": "", "Dice": "", "seeds": "",
                 "accuracy": f"{cam.iloc[0]:.4f} (this split)" if len(cam) else "–", "balanced accuracy": "0.5000",
                 "macro-F1": "", "mask Dice": "",
                 REPORT_COLUMN: f"{notes['cam16_test_majority_baseline']:.4f} (course notes)"})
    return corner_label(pd.DataFrame(rows).set_index("#"))


def corner_label(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its index name moved to the header's corner cell: pandas shows a named index as an extra
    header row of its own (a lone "#" or "dataset" above the body); as the columns' name it sits in the first
    header row instead. The rows and columns stay as they were."""
    name = table.index.name
    top = [name, *[None] * (table.columns.nlevels - 1)]
    return table.rename_axis(index=None).rename_axis(columns=top if table.columns.nlevels > 1 else name)


def table1_external(external: pd.DataFrame) -> pd.DataFrame:
    """The four Table 1 models, unchanged, on each further CAM16-class test set (:func:`cam16_external`):
    accuracy, balanced accuracy and the mask Dice of the tumour images (mean ± 95 % t half-width over seeds).
    Tumour images only: CAMELYON16's normal masks are empty, while the stand-in's mark glands in both classes."""
    if external is None or not len(external):
        return pd.DataFrame()
    groups = {name: f"{name} ({int(n)} images)" for name, n in external.groupby("set", sort=False)["n"].max().items()}
    rows = []
    for cid, name in TABLE1_SETTINGS:
        row = {"setting": name}
        for set_name, group in groups.items():
            got = external[(external["config"] == cid) & (external["set"] == set_name)]
            row[(group, "seeds")] = len(got)
            row[(group, "accuracy")] = _ci_cell(got["accuracy"])
            row[(group, "balanced accuracy")] = _ci_cell(got["balanced_accuracy"])
            row[(group, "tumour mask Dice")] = _ci_cell(got["tumour_mask_dice"])
        rows.append(row)
    out = pd.DataFrame(rows).set_index("setting")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)


def table2(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """WBC validation ``metric`` for WBC_1/10/50/100 x pretraining x mask; the report's accuracy (single runs)
    beside ours; the majority-class row labelled by where each number comes from."""
    ref = reference()["wbc_val_accuracy"]
    rows = []
    for n in WBC_SUBSETS:
        row = {"dataset": f"WBC_{n}"}
        for init, mask in TABLE2_COLUMNS:
            cid = runs.wbc_configuration(n, init == "pretrained", mask == "mask")
            row[(COLUMN_NAMES[(init, mask)], "ours")] = _ci_cell(df.loc[df["config"] == cid, metric])
            if metric == "accuracy":
                row[(COLUMN_NAMES[(init, mask)], REPORT_COLUMN)] = f"{ref[cid]:.4f}"
        rows.append(row)
    # Always answering the most frequent class of the full training set (WBC_100; Neutrophil on the real data).
    wbc100 = df[df["config"].isin([runs.wbc_configuration(100, p, m) for p in (False, True) for m in (False, True)])
                ]["majority_baseline"].dropna()
    majority = f"{wbc100.iloc[0]:.4f} (this split)" if metric == "accuracy" and len(wbc100) else "–"
    notes = reference()["course_notes"]
    base = {"dataset": "majority class"}
    for init, mask in TABLE2_COLUMNS:
        base[(COLUMN_NAMES[(init, mask)], "ours")] = majority
        if metric == "accuracy":
            base[(COLUMN_NAMES[(init, mask)], REPORT_COLUMN)] = (
                f"{notes['wbc_val_majority_baseline']:.4f} (course notes)")
    rows.append(base)
    out = pd.DataFrame(rows).set_index("dataset")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)


def learning_points(df: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per (Table 2 setting, subset) with a finished run: training-set size, mean ``metric`` over seeds
    and its 95 % t-interval (NaN for one seed): the data of the learning-curve figure."""
    rows = []
    for init, mask in TABLE2_COLUMNS:
        for n in WBC_SUBSETS:
            sub = df[df["config"] == runs.wbc_configuration(n, init == "pretrained", mask == "mask")]
            values = sub[metric].dropna().to_numpy()
            if not len(values):
                continue
            ci = metrics.mean_ci(values)
            images = sub["train_images"].dropna()
            rows.append({"setting": COLUMN_NAMES[(init, mask)], "subset": f"WBC_{n}",
                         "images": int(images.iloc[0]) if len(images) else n, "mean": ci["mean"],
                         "low": np.nan if ci["low"] is None else ci["low"],
                         "high": np.nan if ci["high"] is None else ci["high"], "seeds": len(values)})
    return pd.DataFrame(rows, columns=["setting", "subset", "images", "mean", "low", "high", "seeds"])


def correct_by_seed(df: pd.DataFrame, config: str) -> dict[int, dict[str, bool]]:
    """Per-image correctness of each seed of ``config`` on its reported split: ``{seed: {image path: right?}}``
    (from the run's ``embeddings.npz``; seeds without that file are left out)."""
    out: dict[int, dict[str, bool]] = {}
    for _, r in df[df["config"] == config].sort_values("seed").iterrows():
        p = Path(r["path"]) / "embeddings.npz"
        if not p.is_file():
            continue
        with np.load(p, allow_pickle=False) as z:
            out[int(r["seed"])] = dict(zip(map(str, z["path"]), (z["prediction"] == z["label"]).tolist()))
    return out


def paired_by_seed(df: pd.DataFrame, a: str, b: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For every seed that both configurations finished: their correctness on the images both evaluated,
    in the same (sorted) order. Runs pair by seed number: seed s of ``a`` against seed s of ``b``."""
    ca, cb = correct_by_seed(df, a), correct_by_seed(df, b)
    pairs = {}
    for seed in sorted(set(ca) & set(cb)):
        common = sorted(set(ca[seed]) & set(cb[seed]))
        if common:
            pairs[seed] = (np.array([ca[seed][k] for k in common]), np.array([cb[seed][k] for k in common]))
    return pairs


def compare(df: pd.DataFrame, a: str, b: str, n_boot: int = 5000) -> dict | None:
    """The accuracy difference ``a`` - ``b`` on the same images, with an interval that includes training seeds.

    With two or more seeds the verdict rests on the per-seed differences (one number per training run) and
    their Student-t interval; a hierarchical bootstrap (seeds, then images) is given beside it. With one seed
    the variation between training runs cannot be measured: the interval is the paired image bootstrap of that
    seed, with McNemar's test, and it is labelled as covering the images only.
    """
    pairs = paired_by_seed(df, a, b)
    if not pairs:
        return None
    per_seed = [float(x.mean() - y.mean()) for x, y in pairs.values()]
    boot = metrics.hierarchical_bootstrap(list(pairs.values()), n_boot=n_boot)
    images = sorted({len(x) for x, _ in pairs.values()})
    if len(pairs) >= 2:
        main = metrics.seed_t_interval(per_seed)
    else:
        (x, y), = pairs.values()
        main = {**boot, "method": "paired bootstrap over the images of one seed", "mcnemar": metrics.mcnemar(x, y)}
    return {**main, "seeds": len(pairs), "seed_ids": list(pairs), "per_seed": per_seed, "images": images,
            "bootstrap": boot}


def _interval(t: dict) -> str:
    return "–" if t.get("low") is None else f"{100 * t['low']:+.1f} to {100 * t['high']:+.1f}"


def ablation_pairs() -> list[tuple[str, str, str, str, str]]:
    """Every ablation of Tables 1 and 2 as (set, configuration A, configuration B, name of A, name of B)."""
    cam = runs.cam16_configuration
    pairs = [("CAM16", cam(False, True), cam(False, False), "Dice", "no Dice"),
             ("CAM16", cam(True, False), cam(False, False), "pRCC", "no pRCC"),
             ("CAM16", cam(True, True), cam(False, True), "pRCC + Dice", "Dice only")]
    wbc = runs.wbc_configuration
    for n in WBC_SUBSETS:
        for init in ("scratch", "pretrained"):
            pre = init == "pretrained"
            pairs.append((f"WBC_{n}", wbc(n, pre, True), wbc(n, pre, False), f"{init}, with mask",
                          f"{init}, without mask"))
        for mask in ("nomask", "mask"):
            pairs.append((f"WBC_{n}", wbc(n, True, mask == "mask"), wbc(n, False, mask == "mask"),
                          f"pretrained ({mask})", f"scratch ({mask})"))
    return pairs


def ablation_tests(df: pd.DataFrame, n_boot: int = 5000) -> pd.DataFrame:
    """Every ablation pair of Tables 1 and 2, tested on the same images with training seeds counted; one
    sentence per pair. ``interval`` is what the verdict rests on (per-seed t-interval with two or more seeds,
    the image bootstrap of the single seed otherwise); ``seeds + images`` is the hierarchical bootstrap."""
    rows = []
    for group, a, b, name_a, name_b in ablation_pairs():
        t = compare(df, a, b, n_boot=n_boot)
        if t is None:
            continue
        covers = (f"{t['seeds']} training seeds (t-interval)" if t["seeds"] >= 2
                  else "the images of one training seed only")
        rows.append({"set": group, "comparison": f"{name_a} vs {name_b}", "seeds": t["seeds"],
                     "images per seed": ", ".join(map(str, t["images"])),
                     "difference (points)": round(100 * t["diff"], 2), "95 % interval": _interval(t),
                     "interval covers": covers, "seeds + images (bootstrap)": _interval(t["bootstrap"]),
                     "p": t["p_value"], "verdict": f"{group}: " + metrics.describe_difference(name_a, name_b, t)})
    return corner_label(pd.DataFrame(rows).set_index("set")) if rows else pd.DataFrame(rows)


def per_class_recall(df: pd.DataFrame, subset: int = 100) -> pd.DataFrame:
    """Recall of each WBC class in the four Table 2 cells of one subset, averaged over seeds (rows: cells)."""
    rows = {}
    for init, mask in TABLE2_COLUMNS:
        recalls = []
        for _, r in df[df["config"] == runs.wbc_configuration(subset, init == "pretrained", mask == "mask")].iterrows():
            split = (storage.read_json(Path(r["path"]) / "metrics.json") or {}).get(r["split"] or "", {})
            if "per_class" in split:
                recalls.append({c: v["recall"] for c, v in split["per_class"].items()})
        if recalls:
            rows[COLUMN_NAMES[(init, mask)]] = pd.DataFrame(recalls).mean()
    return pd.DataFrame(rows).T


def confusion(df: pd.DataFrame, config: str) -> tuple[np.ndarray, list[str]] | None:
    """The confusion matrix of a configuration on its reported split, summed over its seeds, and the classes."""
    total, classes = None, None
    for _, r in df[df["config"] == config].iterrows():
        split = (storage.read_json(Path(r["path"]) / "metrics.json") or {}).get(r["split"] or "", {})
        if "confusion_matrix" not in split:
            continue
        cm = np.asarray(split["confusion_matrix"], dtype=np.int64)
        total = cm if total is None else total + cm
        classes = list(split["per_class"])
    return None if total is None else (total, classes)


def representative(df: pd.DataFrame, config: str) -> Path | None:
    """The lowest-seed finished run of a configuration (used for figures)."""
    sub = df[df["config"] == config].sort_values("seed")
    return Path(sub.iloc[0]["path"]) if len(sub) else None


#: The three starting points the blood-smear comparison sets side by side, by the configuration of each subset.
CHAINS = (("from scratch", lambda n: runs.wbc_configuration(n, False, True)),
          ("H&E chain (EBHI tiles → CAM16 stage)", lambda n: runs.wbc_configuration(n, True, True)),
          ("blood-smear chain (BCCD tiles → CAM16 stage)", lambda n: runs.smear_configuration("wbc", n)))


def chain_comparison(df: pd.DataFrame, subsets=(1, 10), metric: str = "balanced_accuracy") -> pd.DataFrame:
    """``metric`` on the WBC validation split at each subset for the three starting points of :data:`CHAINS`
    (all with masks): mean ± 95 % t half-width over seeds, and each chain's difference from training from
    scratch, paired by seed (mean ± t half-width of the per-seed differences). Empty without smear-chain runs."""
    if not len(df) or not df["config"].isin([CHAINS[2][1](n) for n in subsets]).any():
        return pd.DataFrame()
    rows = []
    for n in subsets:
        scratch = df[df["config"] == CHAINS[0][1](n)].set_index("seed")[metric].dropna()
        row = {"training set": f"WBC_{n}"}
        for name, configuration in CHAINS:
            got = df[df["config"] == configuration(n)].set_index("seed")[metric].dropna()
            row[(name, "seeds")] = len(got)
            row[(name, metric.replace("_", " "))] = _ci_cell(got, 3)
            if configuration is not CHAINS[0][1]:
                paired = (got - scratch).dropna()
                row[(name, "− scratch (paired by seed)")] = (
                    metrics.format_mean_ci(metrics.mean_ci(paired.to_numpy()), 3) if len(paired) else "–")
        rows.append(row)
    out = pd.DataFrame(rows).set_index("training set")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)
