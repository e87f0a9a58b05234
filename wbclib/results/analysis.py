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

from wbclib.core import grid, storage
from wbclib.data import datasets
from wbclib.training import metrics, runs

#: The reference report's column: each of its numbers is one training run (it reports no seeds or intervals).
REPORT_COLUMN = "report (single run)"


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
    return metrics.format_mean_ci(values.dropna().to_numpy(), digits)


def expected_runs(df: pd.DataFrame) -> int:
    """How many runs of the report's grid a study with this many seeds trains (:func:`wbclib.core.grid.size`
    per seed; at least one seed)."""
    return grid.size() * max(1, df["seed"].nunique() if len(df) else 1)


def _reference_cell(numbers: dict, configuration: str) -> str:
    """The report's number of a configuration, or "–" for one the report did not train."""
    return f"{numbers[configuration]:.4f}" if configuration in numbers else "–"


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
    for i, (cell, c) in enumerate(grid.table("Table 1"), start=1):
        sub = df[df["config"] == c.id]
        rows.append({"#": i, "setting": cell.row, "CE": "✓", "pRCC": "✓" if c.start_from else "",
                     "Dice": "✓" if c.masks else "", "seeds": len(sub),
                     "accuracy": _ci_cell(sub["accuracy"]), "balanced accuracy": _ci_cell(sub["balanced_accuracy"]),
                     "macro-F1": _ci_cell(sub["macro_f1"]), "mask Dice": _ci_cell(sub["mask_dice"]),
                     REPORT_COLUMN: _reference_cell(ref, c.id)})
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
    for cell, c in grid.table("Table 1"):
        row = {"setting": cell.row}
        for set_name, group in groups.items():
            got = external[(external["config"] == c.id) & (external["set"] == set_name)]
            row[(group, "seeds")] = len(got)
            row[(group, "accuracy")] = _ci_cell(got["accuracy"])
            row[(group, "balanced accuracy")] = _ci_cell(got["balanced_accuracy"])
            row[(group, "tumour mask Dice")] = _ci_cell(got["tumour_mask_dice"])
        rows.append(row)
    out = pd.DataFrame(rows).set_index("setting")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)


def table2(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """WBC validation ``metric`` for the rows (training subsets) and columns (pretraining x mask) of the grid's
    Table 2; the report's accuracy (single runs) beside ours; the majority-class row labelled by where each
    number comes from."""
    ref = reference()["wbc_val_accuracy"]
    columns = grid.columns("Table 2")
    rows = []
    for label in grid.rows("Table 2"):
        row = {"dataset": label}
        for column in columns:
            c = grid.cell("Table 2", label, column)
            row[(column, "ours")] = _ci_cell(df.loc[df["config"] == c.id, metric]) if c else "–"
            if metric == "accuracy":
                row[(column, REPORT_COLUMN)] = _reference_cell(ref, c.id) if c else "–"
        rows.append(row)
    # Always answering the most frequent class of the full training set (WBC_100; Neutrophil on the real data).
    largest = max(c.subset for _, c in grid.table("Table 2"))
    full = df[df["config"].isin([c.id for _, c in grid.table("Table 2") if c.subset == largest])]
    wbc100 = full["majority_baseline"].dropna()
    majority = f"{wbc100.iloc[0]:.4f} (this split)" if metric == "accuracy" and len(wbc100) else "–"
    notes = reference()["course_notes"]
    base = {"dataset": "majority class"}
    for column in columns:
        base[(column, "ours")] = majority
        if metric == "accuracy":
            base[(column, REPORT_COLUMN)] = (
                f"{notes['wbc_val_majority_baseline']:.4f} (course notes)")
    rows.append(base)
    out = pd.DataFrame(rows).set_index("dataset")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)


def learning_points(df: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per (Table 2 setting, subset) with a finished run: training-set size, mean ``metric`` over seeds
    and its 95 % t-interval (NaN for one seed): the data of the learning-curve figure."""
    rows = []
    cells = sorted(grid.table("Table 2"), key=lambda cell_c: (grid.columns("Table 2").index(cell_c[0].column),
                                                             cell_c[1].subset))
    for cell, c in cells:
        sub = df[df["config"] == c.id]
        values = sub[metric].dropna().to_numpy()
        if not len(values):
            continue
        ci = metrics.mean_ci(values)
        images = sub["train_images"].dropna()
        rows.append({"setting": cell.column, "subset": cell.row,
                     "images": int(images.iloc[0]) if len(images) else c.subset, "mean": ci["mean"],
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


#: The ablations of Table 1, by its row labels: (A, B, name of A, name of B).
TABLE1_ABLATIONS = (("CE + Dice", "CE", "Dice", "no Dice"), ("CE + pRCC", "CE", "pRCC", "no pRCC"),
                    ("CE + pRCC + Dice", "CE + Dice", "pRCC + Dice", "Dice only"))
#: The ablations within each row of Table 2, by its column labels: (A, B, name of A, name of B).
TABLE2_ABLATIONS = ((grid.NM, grid.NN, "scratch, with mask", "scratch, without mask"),
                    (grid.PM, grid.PN, "pretrained, with mask", "pretrained, without mask"),
                    (grid.PN, grid.NN, "pretrained (nomask)", "scratch (nomask)"),
                    (grid.PM, grid.NM, "pretrained (mask)", "scratch (mask)"))


def ablation_pairs() -> list[tuple[str, str, str, str, str]]:
    """Every ablation of Tables 1 and 2 whose two cells the grid fills, as (set, configuration A, configuration
    B, name of A, name of B)."""
    pairs = [("CAM16", grid.cell("Table 1", a), grid.cell("Table 1", b), na, nb) for a, b, na, nb in TABLE1_ABLATIONS]
    for row in grid.rows("Table 2"):
        pairs += [(row, grid.cell("Table 2", row, a), grid.cell("Table 2", row, b), na, nb)
                  for a, b, na, nb in TABLE2_ABLATIONS]
    return [(group, a.id, b.id, na, nb) for group, a, b, na, nb in pairs if a and b]


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
                     "difference (points)": round(100 * t["diff"], 2), "95 % interval": metrics.format_interval(t),
                     "interval covers": covers, "seeds + images (bootstrap)": metrics.format_interval(t["bootstrap"]),
                     "p": t["p_value"], "verdict": f"{group}: " + metrics.describe_difference(name_a, name_b, t)})
    return corner_label(pd.DataFrame(rows).set_index("set")) if rows else pd.DataFrame(rows)


def per_class_recall(df: pd.DataFrame, subset: int = 100) -> pd.DataFrame:
    """Recall of each WBC class in the Table 2 cells of one subset, averaged over seeds (rows: cells)."""
    rows = {}
    for cell, c in table2_cells(subset):
        recalls = []
        for _, r in df[df["config"] == c.id].iterrows():
            split = (storage.read_json(Path(r["path"]) / "metrics.json") or {}).get(r["split"] or "", {})
            if "per_class" in split:
                recalls.append({c: v["recall"] for c, v in split["per_class"].items()})
        if recalls:
            rows[cell.column] = pd.DataFrame(recalls).mean()
    return pd.DataFrame(rows).T


def table2_cells(subset: int) -> list[tuple[grid.Cell, grid.Configuration]]:
    """The Table 2 cells of one WBC subset (one row of the table), in column order."""
    return [(cell, c) for cell, c in grid.table("Table 2") if c.subset == subset]


def subsets() -> list[int]:
    """The WBC subsets of Table 2's rows, in order."""
    return list(dict.fromkeys(c.subset for _, c in grid.table("Table 2")))


def confusions(df: pd.DataFrame, subset: int) -> list[tuple[str, np.ndarray]]:
    """The confusion matrix of each finished Table 2 cell of one subset, by column name (for
    :func:`wbclib.results.plots.confusion_grid`)."""
    got = [(cell.column, confusion(df, c.id)) for cell, c in table2_cells(subset)]
    return [(name, cm[0]) for name, cm in got if cm is not None]


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


def chain_comparison(df: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """``metric`` on the WBC validation split at each subset (row) for the starting points (columns) of the
    grid's ``chains`` table, all with masks: mean ± 95 % t half-width over seeds, and each chain's difference
    from the first column (training from scratch), paired by seed (mean ± t half-width of the per-seed
    differences). Empty without runs of the blood-smear chain."""
    smear_ids = [c.id for c in grid.configurations("smears")]
    if not len(df) or not df["config"].isin(smear_ids).any():
        return pd.DataFrame()
    columns = grid.columns("chains")
    rows = []

    def values(label, column):
        c = grid.cell("chains", label, column)
        return df[df["config"] == (c.id if c else None)].set_index("seed")[metric].dropna()

    for label in grid.rows("chains"):
        scratch = values(label, columns[0])
        row = {"training set": label}
        for column in columns:
            got = values(label, column)
            row[(column, "seeds")] = len(got)
            row[(column, metric.replace("_", " "))] = _ci_cell(got, 3)
            if column != columns[0]:
                row[(column, "− scratch (paired by seed)")] = metrics.format_mean_ci((got - scratch).dropna(), 3)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("training set")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return corner_label(out)


# -- what the results notebook says around its tables ---------------------------------------------------------

def overview(df: pd.DataFrame, runs_dir: str | Path) -> str:
    """The line under the results page's title: how many runs of the grid finished (a partial study says how
    many of the :func:`expected_runs` are missing), or how to make them when there are none."""
    name = Path(runs_dir).name
    if not len(df):
        return (f"**No finished runs in `{name}/`**: run `make study` or `wbc study` first; the sections below "
                "stay empty until then.")
    expected = expected_runs(df)
    partial = (f" **Partial:** {len(df)} of the {expected} runs of the grid have finished; missing cells show –."
               if len(df) < expected else "")
    return f"{len(df)} finished runs in `{name}/`, {df['seed'].nunique()} seed(s) per configuration.{partial}"


def synthetic_start_note(df: pd.DataFrame) -> str:
    """A caveat for Table 2 when the CAM16 models that its pretrained columns start from learned synthetic
    patches while the WBC cells are real (empty otherwise)."""
    cam = set(df.loc[df["dataset"] == "cam16", "data_source"].dropna()) if len(df) else set()
    cells = set(df.loc[df["dataset"] == "wbc", "data_source"].dropna()) if len(df) else set()
    if cam != {"synthetic"} or not cells - {"synthetic"}:
        return ""
    return (f"In this build the CAM16 model that the *with pretrain* columns start from (`{grid.CAM16_FULL}`) "
            "learned drawn patches of the synthetic stand-in, while the WBC cells are real: those columns measure a "
            "pretraining chain that ends on synthetic images, not pretraining on real lymph-node tissue as in the "
            "report.")


def mask_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Training images and masked training images of each WBC run (what the mask ablation can compare)."""
    wbc = df[df["dataset"] == "wbc"] if len(df) else df
    return corner_label(wbc.set_index("run")[["train_images", "train_masks"]].rename(
        columns={"train_images": "training images", "train_masks": "of which with a mask"}))


# -- the external-evaluation page ----------------------------------------------------------------------------

EXTERNAL_COLUMNS = ["set", "run", "images", "accuracy", "balanced accuracy", "macro-F1", "majority class",
                    "PSNR (dB)", "mask Dice", "masks", "recall", "confusion", "classes", "missing classes"]


def external_models(df: pd.DataFrame, subset: int = 100) -> pd.DataFrame:
    """The finished runs of the Table 2 cells of one WBC subset (the models the external page evaluates)."""
    if not len(df):
        return df
    return df[df["config"].isin([c.id for _, c in table2_cells(subset)])].sort_values("run")


def evaluate_external(df: pd.DataFrame, sets: list[str | Path], subset: int = 100) -> pd.DataFrame:
    """Every model of :func:`external_models` on every class-folder set, unchanged: one row per set and run with
    its metrics, per-class recall and confusion matrix. Each evaluation is written into the run directory and
    reused while the run is unchanged (:func:`wbclib.results.evaluate.evaluate_into_run`)."""
    import matplotlib.pyplot as plt

    from wbclib.results.evaluate import evaluate_into_run

    rows = []
    for folder in sets:
        name = Path(folder).name
        for _, run in external_models(df, subset).iterrows():
            res = evaluate_into_run(run["path"], name, folder)
            plt.close("all")  # the evaluation draws its own confusion figure into the run directory
            masks = res.get("masks") or {}
            rows.append({"set": name, "run": run["run"], "images": res["n"], "accuracy": res["accuracy"],
                         "balanced accuracy": res["balanced_accuracy"], "macro-F1": res["macro_f1"],
                         "majority class": res["majority_baseline"], "PSNR (dB)": res["psnr"],
                         "mask Dice": masks.get("dice"), "masks": masks.get("n"),
                         "recall": {c: v["recall"] for c, v in res["per_class"].items()},
                         "confusion": res["confusion_matrix"], "classes": list(res["per_class"]),
                         "missing classes": list(res["missing_classes"])})
    return pd.DataFrame(rows, columns=EXTERNAL_COLUMNS)


def external_table(results: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """The metrics of every model on one set, one row per run (the mask columns only where the set has masks)."""
    sub = results[results["set"] == set_name].set_index("run")
    shown = sub[EXTERNAL_COLUMNS[2:10]].dropna(axis=1, how="all")
    return corner_label(shown.astype({c: float for c in shown.columns if c not in ("images", "masks")}).round(4))


def external_recall(results: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """Recall of each class for every model on one set (rows: runs)."""
    sub = results[results["set"] == set_name]
    return pd.DataFrame(list(sub["recall"]), index=list(sub["run"])).round(3)


def external_folders(external: str | Path | list | None) -> list[str]:
    """The sets the external page evaluates: the one given, the list given, or else the embedded data's
    external sets of white blood cells."""
    sets = [external] if isinstance(external, (str, Path)) else list(external or [])
    return [str(s) for s in sets] or [str(p) for p in datasets.embedded_external_sets()]
