"""How a trained model's accuracy degrades when its images were stored, resampled, stained or framed otherwise.

Each perturbation is a torchvision v2 transform applied to an image at the run's scale (after the loader's
resize, before the evaluation crop), at a few fixed levels:

- ``jpeg``: re-compressed as a JPEG of quality 95 to 30;
- ``down-up``: shrunk by a factor and enlarged back (bilinear), the blur of a lower-resolution camera or of a
  resize done twice;
- ``blur``: a Gaussian blur (sigma in pixels at the run's scale), a slightly defocused image;
- ``hue``: the hue turned by a share of the colour circle, another stain or white balance;
- ``scale``: the whole image rescaled, so the cell appears 0.7 to 1.4 times its size (another magnification
  or crop framing; the evaluation crop then takes the centre as usual).

:func:`perturbed_metrics` scores one model under all of them; :func:`evaluate_runs` does it for a table of
runs (the domain-shift chapter's ``shift-*`` runs), caching each run's result in its run directory;
:func:`table` puts the seeds of each setting together, mean with a 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from wbclib.training import metrics

#: Perturbation -> (what it stands for, its levels). Level None of kind "none" is the unchanged image.
PERTURBATIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "jpeg": ("JPEG re-compression, quality", (95, 75, 50, 30)),
    "down-up": ("shrunk by this factor and enlarged back", (0.75, 0.5, 0.33)),
    "blur": ("Gaussian blur, sigma in pixels", (0.5, 1.0, 1.5)),
    "hue": ("hue turned by this share of the colour circle", (-0.1, -0.05, 0.05, 0.1)),
    "scale": ("image rescaled by this factor", (0.7, 0.85, 1.2, 1.4)),
}


class Rescale(v2.Transform):
    """Resize image and mask by ``factor`` (the mask by nearest neighbour, as v2 does for masks)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def transform(self, inpt, params: dict):
        h, w = inpt.shape[-2:]
        return F.resize(inpt, [max(1, round(h * self.factor)), max(1, round(w * self.factor))], antialias=True)


def perturbation(kind: str, level: float | None) -> v2.Transform:
    """The transform of one perturbation at one level (``kind`` 'none': the identity)."""
    from wbclib.data.transforms import Recompress, ShrinkEnlarge

    if kind == "none":
        return v2.Identity()
    if kind == "jpeg":
        return Recompress(level, level)
    if kind == "down-up":
        return ShrinkEnlarge(level, level, modes=(v2.InterpolationMode.BILINEAR,))
    if kind == "blur":
        return v2.GaussianBlur(2 * math.ceil(3 * level) + 1, sigma=(level, level))
    if kind == "hue":
        return v2.ColorJitter(hue=(level, level))
    if kind == "scale":
        return Rescale(level)
    raise ValueError(f"unknown perturbation {kind!r}; choose one of none, {', '.join(PERTURBATIONS)}")


def levels(kinds=None) -> list[tuple[str, float | None]]:
    """(kind, level) pairs: the unchanged image first, then every level of every kind asked for."""
    return [("none", None)] + [(k, lv) for k in (kinds or PERTURBATIONS) for lv in PERTURBATIONS[k][1]]


@torch.no_grad()
def perturbed_metrics(checkpoint, folder, kinds=None, skip_bad: bool = False) -> pd.DataFrame:
    """Accuracy and balanced accuracy of a trained model on a labelled class-folder set under each perturbation
    (one row per kind and level; kind 'none' is the set as it is). The images reach the model through the
    run's own loader (its resize rule) and evaluation crop, with the perturbation in between."""
    from wbclib.data import datasets, readers, transforms
    from wbclib.results.evaluate import _loader
    from wbclib.training.inference import load_model, predict

    model, config, rt = load_model(checkpoint)
    classes = config.classes
    records, root = readers.folder_records(folder, classes, skip_bad=skip_bad)
    crop = transforms.eval_transform(config.input_size)
    images = datasets.KeptDataset(datasets.CellDataset(records, classes, crop, config.mask_threshold, config.resize,
                                                       root, config.resize_quality))  # decoded once, not per level
    rows = []
    for kind, level in levels(kinds):
        ds = images.with_transform(v2.Compose([perturbation(kind, level), crop]))
        pred = predict(model, _loader(ds, config, rt), rt)
        m = metrics.classification_metrics(pred["label"], pred["logits"].argmax(1), list(classes))
        rows.append({"perturbation": kind, "level": level, "accuracy": m["accuracy"],
                     "balanced_accuracy": m["balanced_accuracy"], "n": len(records)})
    return pd.DataFrame(rows)


def _cached(csv: Path, run: Path, folder) -> pd.DataFrame | None:
    """The kept result of a run, if it is newer than the checkpoint and was made on ``folder``."""
    from wbclib.training.runs import is_current

    if not is_current(csv, run):
        return None
    res = pd.read_csv(csv)
    return res if "data" in res and set(res["data"]) == {str(Path(folder).resolve())} else None


def evaluate_runs(runs: pd.DataFrame, folder, name: str = "pbc", progress=None) -> pd.DataFrame:
    """:func:`perturbed_metrics` of every run of ``runs`` (columns ``run``, ``setting``, ``seed``, ``path``, as
    :func:`wbclib.results.shift.shift_runs` gives) on ``folder``. Each result is kept in its run directory
    (``robustness-<name>.csv``) and reused while it is newer than the run's checkpoint."""
    from wbclib.core.storage import write_atomic

    frames = []
    for _, r in runs.iterrows():
        csv = Path(r["path"]) / f"robustness-{name}.csv"
        res = _cached(csv, Path(r["path"]), folder)
        if res is None:
            res = perturbed_metrics(r["path"], folder).assign(data=str(Path(folder).resolve()))
            write_atomic(csv, res.to_csv(index=False))
        if progress:
            progress(f"{r['run']}: {len(res)} perturbation levels")
        frames.append(res.assign(run=r["run"], setting=r["setting"], seed=r["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["perturbation", "level", "accuracy", "balanced_accuracy", "n", "data", "run", "setting", "seed"])


def _cell(values, digits: int = 3) -> str:
    values = [float(v) for v in values]
    if not values:
        return "–"
    ci = metrics.mean_ci(values)
    if ci["low"] is None:
        return f"{ci['mean']:.{digits}f} (1 seed)"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def table(results: pd.DataFrame, settings: list[str] | None = None, metric: str = "balanced_accuracy"
          ) -> pd.DataFrame:
    """One row per perturbation and level, one column per setting: ``metric`` as the mean over seeds with a
    95 % Student-t interval (the number of seeds in the header)."""
    settings = settings or list(dict.fromkeys(results["setting"]))
    header = {s: f"{s} ({results.loc[results['setting'] == s, 'seed'].nunique()} seeds)" for s in settings}
    rows = []
    for kind, level in levels():
        sel = results["perturbation"] == kind
        if kind != "none":
            sel &= results["level"].astype(float).sub(level).abs() < 1e-9
        if not sel.any():
            continue
        row = {"perturbation": kind, "level": "–" if level is None else f"{level:g}"}
        for s in settings:
            mine = results[sel & (results["setting"] == s)]
            row[header[s]] = _cell(mine[metric])
        rows.append(row)
    return pd.DataFrame(rows)


def figure(results: pd.DataFrame, settings: list[str] | None = None, metric: str = "balanced_accuracy"):
    """One panel per perturbation: ``metric`` against the level, a line per setting (mean over seeds, the
    seeds as dots), the unperturbed score as a dashed line of the same colour."""
    import matplotlib.pyplot as plt

    settings = settings or list(dict.fromkeys(results["setting"]))
    kinds = [k for k in PERTURBATIONS if (results["perturbation"] == k).any()]
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.8 * len(kinds), 2.8), layout="constrained", squeeze=False,
                             sharey=True)
    for ax, kind in zip(axes[0], kinds):
        for i, s in enumerate(settings):
            colour = f"C{i}"
            mine = results[(results["setting"] == s) & (results["perturbation"] == kind)]
            mean = mine.groupby("level")[metric].mean()
            ax.plot(mean.index, mean.values, "-o", color=colour, label=s, markersize=3)
            ax.scatter(mine["level"], mine[metric], color=colour, s=6, alpha=0.5)
            clean = results.loc[(results["setting"] == s) & (results["perturbation"] == "none"), metric].mean()
            ax.axhline(clean, color=colour, linestyle="--", linewidth=0.8)
        ax.set_title(PERTURBATIONS[kind][0], fontsize="small")
        ax.set_xlabel(kind)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][0].legend(fontsize="x-small")
    return fig
