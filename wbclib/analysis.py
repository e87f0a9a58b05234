"""Tables and tests of the results pages, read only from finished run directories.

Every table reports the mean and a 95 % confidence interval across seeds, the report's own number beside
ours, the majority-class baseline, and paired tests between ablation settings on the same images.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, runs, train

RUN_ID = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)$")
WBC_ID = re.compile(r"^wbc(?P<subset>\d+)-(?P<init>scratch|pretrained)-(?P<mask>nomask|mask)$")
TABLE1_SETTINGS = [("cam16-ce", "CE"), ("cam16-ce-prcc", "CE + pRCC"), ("cam16-ce-dice", "CE + Dice"),
                   ("cam16-ce-prcc-dice", "CE + pRCC + Dice")]
TABLE2_COLUMNS = [("scratch", "nomask"), ("scratch", "mask"), ("pretrained", "nomask"), ("pretrained", "mask")]
COLUMN_NAMES = {("scratch", "nomask"): "w/o pretrain, w/o mask", ("scratch", "mask"): "w/o pretrain, with mask",
                ("pretrained", "nomask"): "with pretrain, w/o mask", ("pretrained", "mask"): "with pretrain, with mask"}


def reference() -> dict:
    """The reference report's published numbers (data shipped with the package)."""
    return json.loads(resources.files("wbclib").joinpath("reference_results.json").read_text())


def load_runs(runs_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: id, configuration, seed and its headline metrics."""
    rows = []
    for d in sorted(Path(runs_dir).glob("*/metrics.json")):
        run_dir = d.parent
        if run_dir.name.startswith("shift-"):
            continue  # the domain-shift chapter's runs (wbclib.shift) are not part of the report's tables
        m = runs.read_json(d) or {}
        match = RUN_ID.match(run_dir.name)
        split = m.get(m.get("reported_split", ""), {})
        manifest = runs.read_json(run_dir / "manifest.json") or {}
        rows.append({
            "run": run_dir.name, "config": match["config"] if match else run_dir.name,
            "seed": int(match["seed"]) if match else 0, "dataset": m.get("dataset"),
            "split": m.get("reported_split"), "n": split.get("n"), "accuracy": split.get("accuracy"),
            "balanced_accuracy": split.get("balanced_accuracy"), "macro_f1": split.get("macro_f1"),
            "majority_baseline": split.get("majority_baseline"), "psnr": split.get("psnr"),
            "train_mask_dice": (m.get("train_masks") or {}).get("dice"), "train_images": m.get("train_images"),
            "train_masks": m.get("train_masks_available"), "minutes": m.get("wall_time_s", 0) / 60,
            "synthetic": manifest.get("synthetic"), "data_source": manifest.get("data_source") or (
                "synthetic" if manifest.get("synthetic") else "data-root"), "path": str(run_dir),
        })
    columns = ["run", "config", "seed", "dataset", "split", "n", "accuracy", "balanced_accuracy", "macro_f1",
               "majority_baseline", "psnr", "train_mask_dice", "train_images", "train_masks", "minutes", "synthetic",
               "data_source", "path"]
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
        words = [train.describe_source(s, dataset) for s in sources]
        lines.append(f"- **{table}** ({what}{size}): " + "; ".join(words) + ".")
    return ":::{note} Where these numbers come from\n" + "\n".join(lines) + "\n:::" if lines else ""


def _ci_cell(values: pd.Series, digits: int = 4) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    return metrics.format_mean_ci(metrics.mean_ci(values.to_numpy()), digits)


def table1(df: pd.DataFrame) -> pd.DataFrame:
    """CAM16 test accuracy of the four settings, with balanced accuracy, macro F1 and the report's number."""
    ref = reference()["cam16_test_accuracy"]
    rows = []
    for i, (cid, name) in enumerate(TABLE1_SETTINGS, start=1):
        sub = df[df["config"] == cid]
        rows.append({"#": i, "setting": name, "CE": "✓", "pRCC": "✓" if "prcc" in cid else "",
                     "Dice": "✓" if "dice" in cid else "", "seeds": len(sub),
                     "accuracy": _ci_cell(sub["accuracy"]), "balanced accuracy": _ci_cell(sub["balanced_accuracy"]),
                     "macro-F1": _ci_cell(sub["macro_f1"]), "report accuracy": f"{ref[cid]:.4f}"})
    cam = df[df["dataset"] == "cam16"]["majority_baseline"].dropna()
    rows.append({"#": "", "setting": "majority class", "CE": "", "pRCC": "", "Dice": "", "seeds": "",
                 "accuracy": f"{cam.iloc[0]:.4f}" if len(cam) else "–", "balanced accuracy": "0.5000",
                 "macro-F1": "", "report accuracy": "0.5000"})
    return pd.DataFrame(rows).set_index("#")


def table2(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """WBC validation ``metric`` for WBC_1/10/50/100 x pretraining x mask; the report's accuracy beside ours."""
    ref = reference()["wbc_val_accuracy"]
    rows = []
    for n in (1, 10, 50, 100):
        row = {"dataset": f"WBC_{n}"}
        for init, mask in TABLE2_COLUMNS:
            cid = f"wbc{n}-{init}-{mask}"
            row[(COLUMN_NAMES[(init, mask)], "ours")] = _ci_cell(df.loc[df["config"] == cid, metric])
            if metric == "accuracy":
                row[(COLUMN_NAMES[(init, mask)], "report")] = f"{ref[cid]:.4f}"
        rows.append(row)
    # Always answering the most frequent class of the full training set (WBC_100; Neutrophil on the real data).
    wbc100 = df[df["config"].str.startswith("wbc100-")]["majority_baseline"].dropna()
    majority = f"{wbc100.iloc[0]:.4f}" if metric == "accuracy" and len(wbc100) else "–"
    base = {"dataset": "majority class"}
    for init, mask in TABLE2_COLUMNS:
        base[(COLUMN_NAMES[(init, mask)], "ours")] = majority
        if metric == "accuracy":
            base[(COLUMN_NAMES[(init, mask)], "report")] = f"{reference()['wbc_val_majority_baseline']:.4f}"
    rows.append(base)
    out = pd.DataFrame(rows).set_index("dataset")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


def learning_points(df: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per (Table 2 setting, subset) with a finished run: training-set size, mean ``metric`` over seeds
    and its 95 % t-interval (NaN for one seed): the data of the learning-curve figure."""
    rows = []
    for init, mask in TABLE2_COLUMNS:
        for n in (1, 10, 50, 100):
            sub = df[df["config"] == f"wbc{n}-{init}-{mask}"]
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


def pooled_correct(df: pd.DataFrame, config: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-image correctness of every seed of ``config``, pooled, keyed by (seed, path) for pairing."""
    keys, correct = [], []
    for _, r in df[df["config"] == config].sort_values("seed").iterrows():
        p = Path(r["path"]) / "embeddings.npz"
        if not p.is_file():
            continue
        with np.load(p, allow_pickle=False) as z:
            keys += [f"{r['seed']}:{path}" for path in z["path"]]
            correct.append(z["prediction"] == z["label"])
    if not correct:
        return None
    return np.array(keys), np.concatenate(correct)


def compare(df: pd.DataFrame, a: str, b: str, n_boot: int = 5000) -> dict | None:
    """McNemar and a paired bootstrap of ``a`` against ``b`` on the same images (seeds paired by index)."""
    pa, pb = pooled_correct(df, a), pooled_correct(df, b)
    if pa is None or pb is None:
        return None
    common, ia, ib = np.intersect1d(pa[0], pb[0], return_indices=True)
    if len(common) == 0:
        return None
    ca, cb = pa[1][ia], pb[1][ib]
    return {**metrics.paired_bootstrap(ca, cb, n_boot=n_boot), "mcnemar": metrics.mcnemar(ca, cb)}


def ablation_tests(df: pd.DataFrame) -> pd.DataFrame:
    """Every ablation pair of Tables 1 and 2, tested on the same images; one sentence per pair."""
    pairs = [("CAM16", "cam16-ce-dice", "cam16-ce", "Dice", "no Dice"),
             ("CAM16", "cam16-ce-prcc", "cam16-ce", "pRCC", "no pRCC"),
             ("CAM16", "cam16-ce-prcc-dice", "cam16-ce-dice", "pRCC + Dice", "Dice only")]
    for n in (1, 10, 50, 100):
        for init in ("scratch", "pretrained"):
            pairs.append((f"WBC_{n}", f"wbc{n}-{init}-mask", f"wbc{n}-{init}-nomask", f"{init}, with mask",
                          f"{init}, without mask"))
        for mask in ("nomask", "mask"):
            pairs.append((f"WBC_{n}", f"wbc{n}-pretrained-{mask}", f"wbc{n}-scratch-{mask}",
                          f"pretrained ({mask})", f"scratch ({mask})"))
    rows = []
    for group, a, b, name_a, name_b in pairs:
        t = compare(df, a, b)
        if t is None:
            continue
        rows.append({"set": group, "comparison": f"{name_a} vs {name_b}", "difference (points)": 100 * t["diff"],
                     "95 % CI": f"{100 * t['low']:+.1f} to {100 * t['high']:+.1f}",
                     "McNemar p": t["mcnemar"]["p_value"], "bootstrap p": t["p_value"],
                     "images": t.get("n"), "verdict": f"{group}: " + metrics.describe_difference(name_a, name_b, t)})
    return pd.DataFrame(rows).set_index("set") if rows else pd.DataFrame(rows)


def representative(df: pd.DataFrame, config: str) -> Path | None:
    """The lowest-seed finished run of a configuration (used for figures)."""
    sub = df[df["config"] == config].sort_values("seed")
    return Path(sub.iloc[0]["path"]) if len(sub) else None
