"""Domain shift: does a model trained on one laboratory's cells work on another's?

The pieces of the book's domain-shift chapter, kept out of the notebook:

- :data:`SETTINGS`: the training runs ``shift-<setting>-s<seed>`` that ``wbc study --only 'shift-*'`` trains
  (WBC_100 from scratch with masks, on the default data, each with one remedy switched on): the ``shift`` rows
  of the study's grid (:mod:`wbclib.core.grid`);
- AdaBN (Li et al., 2016; :func:`wbclib.results.adabn.adapt_batchnorm`), the BatchNorm statistics re-estimated
  on the target images at test time, without their labels (``wbc evaluate --adabn``);
- :func:`image_statistics`: colour and scale of each image of a set, to show what differs between sets;
- :func:`evaluate_runs`, :func:`remedy_table`, :func:`paired_table` and :func:`choose`: the chapter's tables,
  its paired comparisons and its selection rule (settings chosen on one external set, reported on the other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import rgb_to_hsv

from wbclib.core import grid
from wbclib.results import rescale
from wbclib.training import metrics

#: Seeds per setting when ``wbc study --seeds`` is not given.
SEEDS = 2
#: The training settings, from the grid's ``shift`` rows (:mod:`wbclib.core.grid`): a name, the config fields it
#: changes and a sentence on what it is. ``bn`` is the study's WBC_100 from-scratch, with-mask configuration unchanged.
SETTINGS: dict[str, tuple[dict, str]] = {c.cells[0].row: (c.overrides or {}, c.words)
                                         for c in grid.configurations("shift")}
#: How a model is applied at test time: unchanged, or with AdaBN (BatchNorm models only).
MODES = ("plain", "adabn")


def describe(setting: str, seed: int) -> str:
    """A shift run in words (the title of its page in the book)."""
    words = SETTINGS[setting][1] if setting in SETTINGS else setting
    return f"domain shift: {words}, WBC_100 from scratch, seed {seed}"


# -- what differs between the sets ------------------------------------------------------------------------

def stained_fraction(rgb: np.ndarray) -> float:
    """Share of the frame covered by the white cell's stained parts: pixels much bluer than they are green
    (nucleus and granules are blue-violet after Romanowsky-type stains; red cells and background are not),
    with the threshold at half the image's own range of that difference, so that a paler or bluer stain
    moves the threshold with it. A proxy for how large the cell appears in the frame, not a segmentation."""
    blue = rgb[..., 2] - rgb[..., 1]
    lo, hi = np.percentile(blue, [5, 99.5])
    if hi - lo < 0.08:  # no stained cell stands out
        return 0.0
    return float((blue > lo + 0.5 * (hi - lo)).mean())


def image_statistics(folder: str | Path, name: str | None = None, limit: int | None = None,
                     seed: int = 0) -> pd.DataFrame:
    """One row per image of a class-folder set: its set name, class, size, mean RGB, mean hue, saturation
    and brightness, and :func:`stained_fraction`. ``limit`` draws that many images at random (seeded)."""
    from wbclib import WBC_CLASSES
    from wbclib.data import images, readers

    records, _ = readers.folder_records(Path(folder), WBC_CLASSES, check=False)
    if limit and len(records) > limit:
        idx = np.random.default_rng(seed).choice(len(records), limit, replace=False)
        records = [records[i] for i in sorted(idx)]
    rows = []
    for r in records:
        img = images.open_image(r.path)
        rgb = np.asarray(img, dtype=np.float32) / 255
        h, s, v = np.moveaxis(rgb_to_hsv(rgb), -1, 0)
        # Hue is circular: averaged as an angle, reported in -0.5..0.5 (0 red, positive towards yellow, negative
        # towards magenta and violet), so that the reds on either side of 0 do not average to cyan.
        hue = float(np.angle(np.mean(np.exp(2j * np.pi * h[s > 0.1]))) / (2 * np.pi)) if (s > 0.1).any() else 0.0
        rows.append({"set": name or Path(folder).name, "class": WBC_CLASSES[r.label], "width": img.size[0],
                     "height": img.size[1], "red": float(rgb[..., 0].mean()), "green": float(rgb[..., 1].mean()),
                     "blue": float(rgb[..., 2].mean()), "hue": hue, "saturation": float(s.mean()),
                     "brightness": float(v.mean()), "stained_fraction": stained_fraction(rgb)})
    return pd.DataFrame(rows)


STAT_COLUMNS = {"stained_fraction": "stained share of the frame (cell scale)", "brightness": "brightness (HSV value)",
                "saturation": "saturation", "hue": "mean hue of coloured pixels (0 = red, < 0 violet)"}


def statistics_figure(stats: pd.DataFrame):
    """One panel per statistic of :func:`image_statistics`, a box per set side by side."""
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(stats["set"]))
    fig, axes = plt.subplots(1, len(STAT_COLUMNS), figsize=(3.2 * len(STAT_COLUMNS), 3.2), layout="constrained")
    for ax, (col, label) in zip(axes, STAT_COLUMNS.items()):
        ax.boxplot([stats.loc[stats["set"] == s, col] for s in sets], showfliers=False)
        ax.set_xticks(range(1, len(sets) + 1), sets)
        ax.set_title(label, fontsize="small")
    return fig


def examples_figure(folders: dict[str, str | Path], n: int = 6, size: int = 96, seed: int = 0):
    """``n`` random images of each set in a row (shorter side resized to ``size``, centre-cropped square),
    as the sets come, before the model's own transform."""
    import matplotlib.pyplot as plt

    from wbclib import WBC_CLASSES
    from wbclib.data import images, readers

    fig, axes = plt.subplots(len(folders), n, figsize=(1.4 * n, 1.5 * len(folders)), layout="constrained",
                             squeeze=False)
    for row, (name, folder) in zip(axes, folders.items()):
        records, _ = readers.folder_records(Path(folder), WBC_CLASSES, check=False)
        pick = np.random.default_rng(seed).choice(len(records), min(n, len(records)), replace=False)
        for ax in row:
            ax.axis("off")
        for ax, i in zip(row, pick):
            img = images.open_image(records[i].path)
            w, h = img.size
            k = size / min(w, h)
            img = img.resize((max(size, round(w * k)), max(size, round(h * k))))
            left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
            ax.imshow(np.asarray(img.crop((left, top, left + size, top + size))))
            ax.set_title(WBC_CLASSES[records[i].label][:4], fontsize="x-small")
        row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, ha="right", va="center", fontsize="small")
    return fig


def confusion_figure(results: pd.DataFrame, set_name: str, remedies: list[tuple[str, str]]):
    """Confusion matrices (rows: true class, colour: row fraction, text: counts summed over seeds) of the
    given (setting, mode) pairs on one set, side by side."""
    from wbclib import WBC_CLASSES
    from wbclib.results import plots

    mats = [(f"{set_name}: {variant(s, m)}", mean_confusion(results, set_name, s, m)) for s, m in remedies]
    return plots.confusion_grid([(name, cm) for name, cm in mats if cm is not None],
                                [c[:4] for c in WBC_CLASSES], per_row=len(mats))


# -- the chapter's tables ---------------------------------------------------------------------------------

def shift_runs(runs_dir: str | Path) -> pd.DataFrame:
    """The finished domain-shift runs of ``runs_dir``: run, setting, seed, norm, path and held-out PBC
    (the embedded validation split) accuracy and balanced accuracy."""
    from wbclib.core import storage
    from wbclib.training import runs

    rows = []
    for p in sorted(Path(runs_dir).glob("*/metrics.json")):
        structure = runs.read_structure(p.parent)
        if structure.get("chapter") != "shift":
            continue
        parsed = (structure["setting"], structure["seed"])
        m = storage.read_json(p) or {}
        config = storage.read_json(p.parent / "config.json") or {}
        val = m.get(m.get("reported_split", "val"), {})
        rows.append({"run": p.parent.name, "setting": parsed[0], "seed": parsed[1],
                     "norm": config.get("norm", "batch"), "path": str(p.parent),
                     "pbc_accuracy": val.get("accuracy"), "pbc_balanced_accuracy": val.get("balanced_accuracy")})
    return pd.DataFrame(rows, columns=["run", "setting", "seed", "norm", "path", "pbc_accuracy",
                                       "pbc_balanced_accuracy"])


def evaluate_runs(runs: pd.DataFrame, sets: dict[str, str | Path], progress=None) -> pd.DataFrame:
    """Every run on every external set, unchanged and (BatchNorm models) with AdaBN. One row per run, set and
    mode with the metrics of :func:`wbclib.evaluate.evaluate`; results are written into each run directory
    (``external-<set>[-adabn]``), never into a data set, and reused while they are newer than the run's
    checkpoint (so a later study re-executes the chapter in seconds)."""
    import matplotlib.pyplot as plt

    from wbclib.results.evaluate import evaluate_into_run, external_dir

    rows = []
    for _, r in runs.iterrows():
        for set_name, folder in sets.items():
            for mode in MODES:
                if mode == "adabn" and r["norm"] != "batch":
                    continue
                res = evaluate_into_run(r["path"], set_name, folder, adabn=mode == "adabn")
                out = external_dir(r["path"], set_name, adabn=mode == "adabn")
                rows.append({"run": r["run"], "setting": r["setting"], "seed": r["seed"], "set": set_name,
                             "mode": mode, "balanced_accuracy": res["balanced_accuracy"],
                             "accuracy": res["accuracy"], "macro_f1": res["macro_f1"], "n": res["n"],
                             "recall": {c: v["recall"] for c, v in res["per_class"].items()},
                             "confusion": res["confusion_matrix"], "predictions": out / "predictions.csv"})
                plt.close("all")  # evaluate() draws a confusion figure for its folder; the chapter draws its own
                if progress:
                    progress(f"{r['run']} {set_name} {mode}: balanced accuracy {res['balanced_accuracy']:.3f}")
    return pd.DataFrame(rows)


def variant(setting: str, mode: str) -> str:
    """The name of a remedy: the training setting, with ``+adabn`` where AdaBN was applied at test time."""
    return setting + ("+adabn" if mode == "adabn" else "")


def _ci(values) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return metrics.mean_ci(values) if values else {"mean": np.nan, "low": None, "high": None, "n": 0}


def _cell(values, digits: int = 3) -> str:
    return metrics.format_mean_ci(list(values), digits, bounds=True)


def remedy_table(runs: pd.DataFrame, results: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per remedy (setting x test-time mode): held-out PBC and each external set's ``metric`` as the
    mean over seeds with a 95 % Student-t interval, the seeds, and the seed means as numbers (for verdicts)."""
    rows = []
    sets = list(dict.fromkeys(results["set"])) if len(results) else []
    for setting in [s for s in SETTINGS if s in set(runs["setting"])]:
        mine = runs[runs["setting"] == setting]
        for mode in MODES:
            res = results[(results["setting"] == setting) & (results["mode"] == mode)] if len(results) else results
            if mode == "adabn" and not len(res):
                continue
            row = {"remedy": variant(setting, mode), "setting": setting, "mode": mode, "seeds": len(mine),
                   "PBC held-out": _cell(mine["pbc_balanced_accuracy"]),
                   "pbc_mean": _ci(mine["pbc_balanced_accuracy"])["mean"]}
            for s in sets:
                vals = res.loc[res["set"] == s, metric]
                row[s] = _cell(vals)
                row[f"{s}_mean"] = _ci(vals)["mean"]
            rows.append(row)
    return pd.DataFrame(rows)


def _predictions(predictions: Path) -> pd.DataFrame:
    return pd.read_csv(predictions).set_index("path")


def balanced_bootstrap(correct_a, correct_b, labels, n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> dict:
    """Difference in balanced accuracy (A - B) on the same images, with a percentile interval from resampling
    images with replacement. Each image carries the weight 1 / (classes x images of its class), so the weighted
    mean of per-image correctness is the balanced accuracy; the bootstrap resamples the weighted differences.
    Two-sided p as in :func:`wbclib.training.metrics.paired_bootstrap`."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    weight = 1.0 / (len(classes) * counts[np.searchsorted(classes, labels)])
    d = (a - b) * weight * len(a)  # mean(d) = balanced accuracy of A - that of B
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    diff = float(d.mean())
    p = 1.0 if diff == 0 else min(1.0, 2.0 * float(np.mean(boots <= 0) if diff > 0 else np.mean(boots >= 0)))
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": p, "n": len(d),
            "n_boot": n_boot}


def paired_table(results: pd.DataFrame, baseline: str = "bn", n_boot: int = 2000) -> pd.DataFrame:
    """Each remedy against the unchanged baseline on the same external images: per seed the difference in
    balanced accuracy (mean over seeds, 95 % t-interval), and over all seeds pooled (images paired by seed
    and path) a paired bootstrap of the difference in balanced accuracy and McNemar's test of per-image
    correctness."""
    rows = []
    if not len(results):
        return pd.DataFrame(rows)
    base = results[(results["setting"] == baseline) & (results["mode"] == "plain")]
    for (setting, mode), grp in results.groupby(["setting", "mode"], sort=False):
        if setting == baseline and mode == "plain":
            continue
        for set_name, sub in grp.groupby("set", sort=False):
            b = base[base["set"] == set_name].set_index("seed")
            diffs, ca, cb, labels = [], [], [], []
            for _, r in sub.iterrows():
                if r["seed"] not in b.index:
                    continue
                diffs.append(r["balanced_accuracy"] - b.loc[r["seed"], "balanced_accuracy"])
                pa, pb = _predictions(r["predictions"]), _predictions(b.loc[r["seed"], "predictions"])
                common = pa.index.intersection(pb.index)
                pa, pb = pa.loc[common], pb.loc[common]
                ca.append((pa["true_class"] == pa["predicted_class"]).to_numpy())
                cb.append((pb["true_class"] == pb["predicted_class"]).to_numpy())
                labels.append(pa["true_class"].to_numpy())
            if not diffs:
                continue
            ci = _ci(diffs)
            ca, cb = np.concatenate(ca), np.concatenate(cb)
            boot = balanced_bootstrap(ca, cb, np.concatenate(labels), n_boot=n_boot)
            mc = metrics.mcnemar(ca, cb)
            rows.append({"remedy": variant(setting, mode), "set": set_name, "seeds": len(diffs),
                         "Δ balanced accuracy (points)": 100 * ci["mean"],
                         "95 % CI over seeds": metrics.format_interval(ci),
                         "bootstrap 95 % CI (pooled)": metrics.format_interval(boot),
                         "Δ accuracy (points)": 100 * (ca.mean() - cb.mean()),
                         "McNemar p": mc["p_value"], "verdict": verdict(ci, boot)})
    return pd.DataFrame(rows)


def verdict(seed_ci: dict, boot: dict) -> str:
    """A plain word for a paired comparison of balanced accuracy: *helps* / *hurts* when the bootstrap over
    images and the interval over seeds both exclude zero on the same side; *probably* when only one of them is
    clear (with one seed there is no seed interval); *no clear effect* otherwise."""
    by_images = (boot["low"] > 0) - (boot["high"] < 0)  # +1, -1 or 0
    by_seeds = 0 if seed_ci.get("low") is None else (seed_ci["low"] > 0) - (seed_ci["high"] < 0)
    if by_images and by_images == by_seeds:
        return "helps" if by_images > 0 else "hurts"
    if by_images and by_seeds:
        return "mixed (images and seeds disagree)"
    if by_images or by_seeds:
        why = "over images only" if by_images else "over seeds only"
        return ("probably helps" if (by_images or by_seeds) > 0 else "probably hurts") + f" (clear {why})"
    return "no clear effect"


def choose(table: pd.DataFrame, select_on: str, tolerance: float = 0.01) -> dict | None:
    """The selection rule of the chapter, fixed before looking at the other set: among the remedies whose mean
    held-out PBC balanced accuracy is within ``tolerance`` of the best remedy's, the one with the highest mean
    balanced accuracy on ``select_on``. Returns its row (as a dict) or None."""
    if not len(table) or f"{select_on}_mean" not in table:
        return None
    best_pbc = table["pbc_mean"].max()
    ok = table[table["pbc_mean"] >= best_pbc - tolerance]
    if not len(ok):
        return None
    return ok.sort_values(f"{select_on}_mean", ascending=False).iloc[0].to_dict()


def recall_table(results: pd.DataFrame, set_name: str) -> pd.DataFrame:
    """Mean recall of each class over seeds, one row per remedy, on one external set."""
    rows = {}
    for (setting, mode), grp in results[results["set"] == set_name].groupby(["setting", "mode"], sort=False):
        rec = pd.DataFrame(list(grp["recall"]))
        rows[variant(setting, mode)] = rec.mean()
    return pd.DataFrame(rows).T


def mean_confusion(results: pd.DataFrame, set_name: str, setting: str, mode: str = "plain") -> np.ndarray | None:
    """The confusion matrices of one remedy on one set, summed over seeds."""
    sel = results[(results["set"] == set_name) & (results["setting"] == setting) & (results["mode"] == mode)]
    if not len(sel):
        return None
    return np.sum([np.asarray(c) for c in sel["confusion"]], axis=0)


__all__ = [
    "MODES",
    "SETTINGS",
    "choose",
    "evaluate_runs",
    "goal_summary",
    "image_statistics",
    "mean_confusion",
    "paired_table",
    "recall_table",
    "remedy_table",
    "shift_runs",
    "stained_fraction",
]


# -- the chapter ------------------------------------------------------------------------------------------

#: What a build without domain-shift runs shows on the chapter's page.
STUB = """# Domain shift: another laboratory

This build trained no domain-shift run. The chapter trains the WBC_100 model on the embedded PBC cells with
each of a few cheap remedies (GroupNorm instead of BatchNorm, colour and hue augmentation, zoom
augmentation, image-quality augmentation, and combinations; AdaBN and a mask-guided rescale are applied at test
time) and evaluates it unchanged on the BCCD crops and the held-out segwbc cells, and under controlled
perturbations of the held-out PBC cells. It is not part of the default build because it
trains {runs} runs ({settings} settings x {seeds} seeds). On a quiet two-core CPU, two at a time, a run takes
about 2 minutes (GroupNorm 2.5), so the training takes about {minutes} minutes, and the chapter's first
evaluation of every run (the robustness levels, the rescale rules) about 10 minutes more:

```bash
wbc study --only 'shift-*'   # trains them and builds the book with this chapter
```

Any later `wbc study` executes the chapter again (in seconds: its evaluations are kept in the run directories)
while the runs exist.
"""


def stub_text() -> str:
    return STUB.format(runs=len(SETTINGS) * SEEDS, settings=len(SETTINGS), seeds=SEEDS,
                       minutes=round(len(SETTINGS) * SEEDS * 120 / 2 / 60))


def goal_summary(table: pd.DataFrame, select_on: str, report_on: str, goal: float = 0.60,
                 tolerance: float = 0.01) -> str:
    """The chapter's answer in Markdown: the remedy :func:`choose` picks on ``select_on``, its ``report_on``
    balanced accuracy read once, and whether the goal (``goal`` on ``report_on``, held-out PBC within
    ``tolerance`` of the best remedy's) is reached."""
    chosen = choose(table, select_on, tolerance)
    if chosen is None:
        return "Nothing to choose from: no finished domain-shift run."
    best = table.loc[table["pbc_mean"].idxmax()]
    base = table[table["remedy"] == "bn"]
    reached = chosen.get(f"{report_on}_mean", float("nan"))
    within = chosen["pbc_mean"] >= best["pbc_mean"] - tolerance
    against = f", against {base.iloc[0][report_on]} for the unchanged baseline" if len(base) else ""
    if reached >= goal and within:
        verdict_text = "**reached**."
    else:
        verdict_text = (f"**not reached**: {report_on} {reached:.3f}"
                        + ("" if within else ", and held-out PBC more than one point below the best") + ".")
    return "\n".join([
        (f"- **Chosen on {select_on}:** `{chosen['remedy']}` ({chosen['seeds']} seed(s)): {select_on} "
         f"{chosen[select_on]}, held-out PBC {chosen['PBC held-out']} (best in domain: `{best['remedy']}`, "
         f"{best['pbc_mean']:.3f})."),
        f"- **Reported on {report_on}, once:** balanced accuracy {chosen[report_on]}{against}.",
        f"- **Goal** (≥ {goal:.2f} on {report_on}, held-out PBC within one point of the best): {verdict_text}",
    ])


# -- the mask-guided rescale (wbclib.results.rescale) on the chapter's runs ------------------------------

def rescale_metrics(checkpoint, folder, rule: rescale.Rule | None, adabn: bool = False) -> dict:
    """Balanced accuracy, accuracy, per-class recall and predictions of a trained model on a labelled
    class-folder set, with the images rescaled by ``rule`` (None: unchanged) and, with ``adabn``, AdaBN
    (estimated again on the rescaled images)."""
    from wbclib.data import readers
    from wbclib.results.evaluate import _adapt, _dataset, _loader, _run
    from wbclib.training.inference import load_model

    model, config, rt = load_model(checkpoint)
    classes = config.classes
    records, root = readers.folder_records(folder, classes)
    ds = _dataset(records, classes, config, root)
    if rule is not None:
        ds = rescale.rescaled_dataset(model, ds, config, rt, lambda d: _loader(d, config, rt), rule, adabn=adabn)
    if adabn:
        _adapt(model, ds, config, rt)
    pred = _run(model, ds, config, rt, progress=False)
    y_pred = pred["logits"].argmax(1)
    m = metrics.classification_metrics(pred["label"], y_pred, list(classes))
    factors = [p[0] if p else 1.0 for p in ds.params] if rule is not None else [1.0] * len(ds)
    return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"], "n": len(ds),
            "recall": {c: v["recall"] for c, v in m["per_class"].items()},
            "median_factor": float(np.median(factors)), "confusion": m["confusion_matrix"]}


def evaluate_rescale_runs(runs: pd.DataFrame, sets: dict[str, str | Path], rules: dict[str, rescale.Rule | None],
                          modes=("plain", "adabn"), progress=None) -> pd.DataFrame:
    """Every run (columns ``run``, ``setting``, ``seed``, ``path``, ``norm``) on every set, with every rule
    (None: no rescale) and test-time mode. One row each; results are kept in the run directory
    (``rescale-<set>.csv``, reused while newer than the checkpoint and made from the same folder)."""
    from wbclib.core.storage import write_atomic
    from wbclib.training.runs import is_current

    frames = []
    for _, r in runs.iterrows():
        run = Path(r["path"])
        for set_name, folder in sets.items():
            csv = run / f"rescale-{set_name}.csv"
            old = pd.read_csv(csv) if is_current(csv, run) else pd.DataFrame(columns=["rule", "mode", "data"])
            old = old[old["data"] == str(Path(folder).resolve())] if len(old) else old
            have = set(zip(old["rule"].astype(str), old["mode"]))
            rows = []
            for name, rule in rules.items():
                for mode in modes:
                    if mode == "adabn" and r.get("norm", "batch") != "batch":
                        continue
                    if (str(name), mode) in have:
                        continue
                    res = rescale_metrics(run, folder, rule, adabn=mode == "adabn")
                    rows.append({"rule": str(name), "mode": mode, "data": str(Path(folder).resolve()),
                                 "balanced_accuracy": res["balanced_accuracy"], "accuracy": res["accuracy"],
                                 "n": res["n"], "median_factor": res["median_factor"],
                                 **{f"recall_{c}": v for c, v in res["recall"].items()}})
                    if progress:
                        progress(f"{r['run']} {set_name} {name} {mode}: {res['balanced_accuracy']:.3f}")
            if rows:
                old = pd.concat([old, pd.DataFrame(rows)], ignore_index=True)
                write_atomic(csv, old.to_csv(index=False))
            asked = old["rule"].astype(str).isin([str(n) for n in rules]) & old["mode"].isin(modes)
            frames.append(old[asked].assign(run=r["run"], setting=r["setting"], seed=r["seed"], set=set_name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell_mean(values) -> tuple[str, float]:
    return _cell(list(values)), _ci(list(values))["mean"]


def rescale_table(results: pd.DataFrame, sets: list[str]) -> pd.DataFrame:
    """One row per setting, rule and mode: each set's balanced accuracy, mean over seeds with a 95 % t-interval
    (``<set>_mean``: the mean as a number), and the median rescale factor on each set."""
    rows = []
    for (setting, rule, mode), grp in results.groupby(["setting", "rule", "mode"], sort=False):
        row = {"setting": setting, "rule": rule, "mode": mode, "seeds": grp["seed"].nunique()}
        for s in sets:
            mine = grp[grp["set"] == s]
            row[s], row[f"{s}_mean"] = _cell_mean(mine["balanced_accuracy"])
            row[f"factor {s}"] = float(mine["median_factor"].median()) if len(mine) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def choose_rescale_rule(table: pd.DataFrame, select_on: str = "segwbc", setting: str = "bn", mode: str = "plain",
                        tolerance: float = 0.01, pbc: str = "pbc") -> dict | None:
    """The chapter's selection rule for the rescale: among the candidate rules (on the ``setting`` models,
    ``mode``) whose held-out PBC balanced accuracy with the rescale is within ``tolerance`` of the unchanged
    model's, the one with the highest ``select_on`` balanced accuracy (``within``: True). If no rule keeps PBC,
    the one with the highest ``select_on`` balanced accuracy all the same (``within``: False; it cannot meet
    the goal). Returns ``{"rule", "within", "pbc", "pbc_base", select_on}`` or None (nothing measured)."""
    mine = table[(table["setting"] == setting) & (table["mode"] == mode)]
    base = mine[mine["rule"] == "none"]
    cands = mine[mine["rule"] != "none"]
    if not len(base) or not len(cands) or f"{select_on}_mean" not in cands:
        return None
    ok = cands[cands[f"{pbc}_mean"] >= base.iloc[0][f"{pbc}_mean"] - tolerance]
    best = (ok if len(ok) else cands).sort_values(f"{select_on}_mean", ascending=False).iloc[0]
    return {"rule": str(best["rule"]), "within": bool(len(ok)), "pbc": best[pbc], "pbc_base": base.iloc[0][pbc],
            select_on: best[select_on]}


def rescale_goal(table: pd.DataFrame, chosen: dict | None, report_on: str = "bccd", setting: str = "bn",
                 goal: float = 0.60) -> str:
    """The chapter's answer in Markdown: the ``report_on`` balanced accuracy of the ``setting`` models with the
    chosen rule (:func:`choose_rescale_rule`), plain and with AdaBN, against the unchanged models and the goal
    (``goal`` on ``report_on`` with held-out PBC within one point of the unchanged model's)."""
    if chosen is None:
        return "No rescale rule was measured."
    rule = chosen["rule"]
    mine = table[table["setting"] == setting].set_index(["rule", "mode"])
    lines = [f"- **Chosen on segwbc:** rule `{rule}`; held-out PBC {chosen['pbc']} with it, {chosen['pbc_base']} "
             "without" + ("" if chosen["within"] else " (no candidate rule kept held-out PBC within one point: "
                                                          "this one is the best on segwbc all the same)") + "."]
    for mode in ("plain", "adabn"):
        if (rule, mode) not in mine.index or f"{report_on}_mean" not in mine:
            continue
        row = mine.loc[(rule, mode)]
        base = mine.loc[("none", mode), report_on] if ("none", mode) in mine.index else "–"
        reached = row[f"{report_on}_mean"] >= goal and chosen["within"]
        lines.append(f"- **`{setting}` + rescale{' + AdaBN' if mode == 'adabn' else ''}, reported once on "
                     f"{report_on}** ({row['seeds']} seeds): balanced accuracy {row[report_on]} (without the "
                     f"rescale: {base}); goal {goal:.2f}"
                     + (" **reached**." if reached else " **not reached**"
                        + ("." if row[f"{report_on}_mean"] < goal else " (held-out PBC more than one point lower).")))
    return "\n".join(lines)


def rescale_examples_figure(checkpoint, folder, rule: rescale.Rule | None = None, n: int = 6, seed: int = 0):
    """``n`` random images of a class-folder set as the network sees them (the centre crop at the run's
    scale), above the same images after the rescale, with the predicted mask's outline and the factor."""
    import matplotlib.pyplot as plt
    import torch

    from wbclib.data import readers
    from wbclib.results.evaluate import _dataset, _loader
    from wbclib.training.inference import load_model

    model, config, rt = load_model(checkpoint)
    classes = config.classes
    rule = rule or rescale.RULES[rescale.DEFAULT]
    records, root = readers.folder_records(folder, classes)
    pick = np.random.default_rng(seed).choice(len(records), min(n, len(records)), replace=False)
    ds = _dataset([records[i] for i in sorted(pick)], classes, config, root)
    out = rescale.rescaled_dataset(model, ds, config, rt, lambda d: _loader(d, config, rt), rule)
    fig, axes = plt.subplots(2, len(ds), figsize=(1.6 * len(ds), 3.5), layout="constrained", squeeze=False)
    for row, d in zip(axes, (ds, out)):
        images = torch.stack([d[i]["image"] for i in range(len(d))])
        masks = rescale.predicted_masks(model, _loader(d, config, rt), rt)
        for j, ax in enumerate(row):
            ax.imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.contour(masks[j].numpy().astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if d is out:
                ax.set_xlabel(f"x{out.params[j][0]:.2f}" if out.params[j] else "no cell", fontsize="x-small")
    axes[0][0].set_ylabel("as it comes", fontsize="small")
    axes[1][0].set_ylabel("rescaled", fontsize="small")
    return fig
