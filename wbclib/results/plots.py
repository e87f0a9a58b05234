"""Figures for the notebooks: loss curves, reconstruction grids, confusion matrices and t-SNE maps.

Every function returns a matplotlib ``Figure`` (made with pyplot, so Jupyter shows it at the end of the cell) and
never calls ``plt.show``; close figures you no longer need with ``plt.close(fig)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from wbclib import CAM16_CLASSES, WBC_CLASSES
from wbclib.model.losses import LOSS_PARTS

#: Loss components of history.csv (:data:`~wbclib.model.losses.LOSS_PARTS`), in panel order, with their titles.
LOSS_COMPONENTS = dict(zip(LOSS_PARTS, ("total loss", "MSE (reconstruction)", "cross-entropy (class)",
                                        "Dice loss (mask)")))
UNLABELED = "unlabelled"
_BASE = sns.color_palette("colorblind", 10)
#: Fixed colour per class name, across every figure of the book (WBC classes first, in index order).
CLASS_PALETTE = {name: _BASE[i] for i, name in enumerate(WBC_CLASSES)}
CLASS_PALETTE.update({name: _BASE[len(WBC_CLASSES) + i] for i, name in enumerate(CAM16_CLASSES)})
CLASS_PALETTE[UNLABELED] = (0.6, 0.6, 0.6)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
    return np.asarray(x)


def _column(history: pd.DataFrame, name: str) -> pd.Series:
    if name not in history:
        return pd.Series(np.nan, index=history.index, dtype=float)
    return pd.to_numeric(history[name], errors="coerce")


def _informative(s: pd.Series) -> bool:
    return bool((s.fillna(0) != 0).any())


def loss_curves(history: pd.DataFrame, title: str | None = None) -> Figure:
    """One panel per loss component (train vs val over epochs; all-zero components skipped), plus validation
    accuracy when the history has it."""
    epochs = _column(history, "epoch") if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))
    panels = [(c, _column(history, f"train_{c}"), _column(history, f"val_{c}")) for c in LOSS_COMPONENTS]
    panels = [p for p in panels if _informative(p[1]) or _informative(p[2])]
    accuracy = _column(history, "val_accuracy")
    has_acc = bool(accuracy.notna().any())
    n = max(1, len(panels) + has_acc)
    cols = min(n, 3)  # at most three panels a row: each stays legible at the book's text width
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    axes = grid.ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)  # an empty slot of the last row
    axes = axes[:n]
    for ax, (comp, train, val) in zip(axes, panels):
        for name, values in (("train", train), ("validation", val)):
            ok = values.notna()  # validation may run at a cadence: join the epochs that have it
            if ok.any():
                ax.plot(epochs[ok], values[ok], marker=".", label=name)
        ax.set(title=LOSS_COMPONENTS[comp], xlabel="epoch", ylabel="loss")
    if has_acc:
        ax = axes[len(panels)]
        ok = accuracy.notna()
        ax.plot(epochs[ok], accuracy[ok], marker=".", color="C1", label="validation")
        ax.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    if not panels and not has_acc:
        axes[0].text(0.5, 0.5, "nothing recorded", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    elif panels:
        axes[0].legend(frameon=False)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return fig


def _grey(masks, n: int) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) masks/probabilities -> (n, H, W) in [0, 1] (channels merged by max)."""
    m = _numpy(masks)[:n].astype(np.float64)
    if m.ndim == 4:
        m = m.max(axis=1)
    return np.clip(m, 0.0, 1.0)


def _rgb(images, n: int) -> np.ndarray:
    """(N, C, H, W) -> (n, H, W, C) in [0, 1]; one channel stays (n, H, W)."""
    x = np.clip(_numpy(images)[:n].astype(np.float64), 0.0, 1.0)
    x = np.moveaxis(x, 1, -1)
    return x[..., 0] if x.shape[-1] == 1 else x


def reconstruction_grid(images, reconstructions, masks=None, pred_masks=None, titles: Sequence[str] | None = None,
                        n: int = 8) -> Figure:
    """Columns of samples; rows: input, reconstruction and, when given, true and predicted masks (grey).

    Images are (N, 3, H, W) in [0, 1] (arrays or tensors); masks are (N, H, W) or (N, C, H, W) probabilities.
    """
    n = min(n, len(images))
    if n == 0:
        raise ValueError("reconstruction_grid needs at least one image")
    rows = [("input", _rgb(images, n)), ("reconstruction", _rgb(reconstructions, n))]
    if masks is not None:
        rows.append(("true mask", _grey(masks, n)))
    if pred_masks is not None:
        rows.append(("predicted mask", _grey(pred_masks, n)))
    side = 2.0 if n <= 6 else 1.6  # about 130 px a cell at the book's text width
    fig, axes = plt.subplots(len(rows), n, figsize=(side * n + 0.6, side * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (label, data) in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(data[j], cmap="gray" if data[j].ndim == 2 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if r == 0 and titles is not None and j < len(titles):
                ax.set_title(str(titles[j]), fontsize="small")
    return fig


def confusion_heatmap(ax, cm, class_names: Sequence[str], normalize: bool = True, colorbar: bool = True,
                      title: str | None = None) -> None:
    """The one drawing of a confusion matrix, on ``ax``: rows are the true class, columns the prediction, the
    text is the counts and the colour the fraction of the true class (``normalize``) or the count."""
    counts = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {k} classes")
    if normalize:
        sums = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, sums, out=np.zeros(counts.shape), where=sums > 0)
        kw = {"vmin": 0.0, "vmax": 1.0, "cbar_kws": {"label": "fraction of true class"}}
    else:
        values, kw = counts, {"cbar_kws": {"label": "count"}}
    sns.heatmap(values, annot=counts.astype(str), fmt="", cmap="Blues", square=True, linewidths=0.5,
                xticklabels=list(class_names), yticklabels=list(class_names), ax=ax,
                **(kw if colorbar else {k: v for k, v in kw.items() if k != "cbar_kws"}), cbar=colorbar)
    ax.set(xlabel="predicted", ylabel="true")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.tick_params(axis="y", rotation=0)
    if title:
        ax.set_title(title)


def confusion_matrix_plot(cm, class_names: Sequence[str], normalize: bool = True, title: str | None = None) -> Figure:
    """One confusion matrix as a figure with its colour bar (:func:`confusion_heatmap`)."""
    side = 1.0 + 0.9 * len(class_names)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    confusion_heatmap(ax, cm, class_names, normalize, title=title)
    return fig


def _names(labels, class_names: Sequence[str]) -> np.ndarray:
    idx = _numpy(labels).astype(np.int64).ravel()
    names = np.array(list(class_names) + [UNLABELED], dtype=object)
    return names[np.where((idx >= 0) & (idx < len(class_names)), idx, len(class_names))]


def _palette(names: Sequence[str]) -> dict:
    extra = [nm for nm in names if nm not in CLASS_PALETTE]
    other = sns.color_palette("husl", max(1, len(extra)))
    return {nm: CLASS_PALETTE.get(nm) or other[extra.index(nm)] for nm in names}


def tsne_plot(coords, labels, class_names: Sequence[str], extra_coords=None, extra_labels=None,
              extra_name: str = "external", title: str | None = None) -> Figure:
    """Scatter of a 2-d map coloured by class (fixed colour per class); an optional second set (e.g. an external
    dataset placed with ``.transform``) is drawn as black-edged crosses, coloured by ``extra_labels`` if given."""
    xy = _numpy(coords).astype(np.float64)
    names = _names(labels, class_names)
    present = [nm for nm in list(class_names) + [UNLABELED] if nm in set(names)]
    extra_xy = None if extra_coords is None else _numpy(extra_coords).astype(np.float64)
    extra_names = None
    if extra_xy is not None and extra_labels is not None:
        extra_names = _names(extra_labels, class_names)
    palette = _palette(list(class_names) + [UNLABELED])
    fig, ax = plt.subplots(figsize=(6.5, 5.0), layout="constrained")
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=names, hue_order=present, palette=palette, s=8, linewidth=0,
                    alpha=0.8, ax=ax, legend=True)
    handles, texts = ax.get_legend_handles_labels()
    if extra_xy is not None:
        if extra_names is None:
            ax.scatter(extra_xy[:, 0], extra_xy[:, 1], marker="X", s=40, c="0.2", edgecolors="black",
                       linewidths=0.6, zorder=3)
        else:
            ax.scatter(extra_xy[:, 0], extra_xy[:, 1], marker="X", s=40, c=[palette[nm] for nm in extra_names],
                       edgecolors="black", linewidths=0.6, zorder=3)
        handles.append(Line2D([], [], linestyle="", marker="X", markersize=7, markerfacecolor="0.6",
                              markeredgecolor="black"))
        texts.append(extra_name)
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ax.legend(handles, texts, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.5)
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    if title:
        ax.set_title(title)
    return fig


def fit_tsne(embeddings, seed: int = 0, perplexity: float = 30.0):
    """openTSNE map of (N, D) embeddings; the perplexity is lowered to (N - 1) / 3 for small N.

    Place another set in the same map with ``.transform(new_x)`` on the returned ``TSNEEmbedding``.
    """
    from openTSNE import TSNE  # imported here: the other plots do not need it

    x = np.ascontiguousarray(_numpy(embeddings), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        raise ValueError(f"fit_tsne needs an (N, D) array with N >= 4, got shape {x.shape}")
    perp = min(float(perplexity), (x.shape[0] - 1) / 3.0)
    return TSNE(perplexity=perp, random_state=seed, n_jobs=1, verbose=False).fit(x)


__all__ = [
    "CLASS_PALETTE",
    "LOSS_COMPONENTS",
    "cell_grid",
    "confusion_grid",
    "confusion_heatmap",
    "confusion_matrix_plot",
    "fit_tsne",
    "learning_curve",
    "loss_curves",
    "recall_bars",
    "reconstruction_grid",
    "step_curves",
    "tsne_plot",
]


def learning_curve(points: pd.DataFrame, metric: str = "balanced accuracy", title: str | None = None) -> Figure:
    """Metric against the number of training images, one line per setting, with the seeds' 95 % interval.

    ``points`` has one row per (setting, subset): columns ``setting``, ``images``, ``mean``, ``low``, ``high``
    (``low``/``high`` NaN for a single seed)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (setting, sub) in enumerate(points.sort_values("images").groupby("setting", sort=False)):
        colour = _BASE[i % len(_BASE)]
        ax.plot(sub["images"], sub["mean"], marker="o", color=colour, label=setting)
        if sub["low"].notna().any():
            ax.fill_between(sub["images"], sub["low"], sub["high"], color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("training images (WBC_1, WBC_10, WBC_50, WBC_100)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def recall_bars(recall: pd.DataFrame, title: str | None = None) -> Figure:
    """Grouped bars of per-class recall: one group per class (columns of ``recall``), one bar per setting (its
    rows), coloured by setting; a dashed line at the recall of a model that guesses uniformly (1 / classes)."""
    classes, settings = list(recall.columns), list(recall.index)
    fig, ax = plt.subplots(figsize=(8.0, 3.6), layout="constrained")
    width = 0.8 / max(1, len(settings))
    x = np.arange(len(classes))
    for i, setting in enumerate(settings):
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, recall.loc[setting].to_numpy(dtype=float), width,
               label=setting, color=_BASE[i % len(_BASE)])
    if classes:
        ax.axhline(1 / len(classes), color="0.4", linestyle="--", linewidth=1, label="uniform guess")
    ax.set_xticks(x, classes)
    ax.set(ylim=(0, 1.05), ylabel="recall")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title)
    return fig


def confusion_grid(matrices: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str],
                   title: str | None = None, per_row: int = 2) -> Figure:
    """Several confusion matrices side by side (:func:`confusion_heatmap`, colour = fraction of the true class,
    one shared scale without a bar), ``per_row`` a row, each titled with its name."""
    n = len(matrices)
    if n == 0:
        raise ValueError("confusion_grid needs at least one matrix")
    cols = min(n, max(1, per_row))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        fig.delaxes(ax)
    for ax, (name, cm) in zip(axes.ravel(), matrices):
        confusion_heatmap(ax, cm, class_names, colorbar=False, title=name)
    if title:
        fig.suptitle(title)
    return fig


def cell_grid(images, masks=None, titles: Sequence[str] | None = None, n: int = 12, per_row: int = 6) -> Figure:
    """Cells (at most ``n``), ``per_row`` to a row and, given ``masks`` (N, H, W) or (N, 1, H, W), each row of
    cells followed by a row of their masks, with "no mask" where a cell has none (an all-zero mask)."""
    n = min(n, len(images))
    if n == 0:
        raise ValueError("cell_grid needs at least one image")
    imgs = _rgb(images, n)
    grey = None if masks is None else _grey(masks, n)
    cols = min(per_row, n)
    blocks = math.ceil(n / cols)
    per_block = 1 if grey is None else 2
    fig, axes = plt.subplots(blocks * per_block, cols, figsize=(1.9 * cols + 0.4, 1.9 * blocks * per_block),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(blocks * cols):
        r, c = divmod(j, cols)
        top = axes[r * per_block, c]
        if j >= n:
            top.set_axis_off()
            if grey is not None:
                axes[r * per_block + 1, c].set_axis_off()
            continue
        top.imshow(imgs[j], interpolation="nearest")
        if titles is not None and j < len(titles):
            top.set_title(str(titles[j]), fontsize="small")
        if grey is not None:
            below = axes[r * per_block + 1, c]
            if grey[j].any():
                below.imshow(grey[j], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                below.text(0.5, 0.5, "no mask", ha="center", va="center", fontsize="small", transform=below.transAxes)
        if c == 0:
            top.set_ylabel("cell")
            if grey is not None:
                axes[r * per_block + 1, c].set_ylabel("mask")
    return fig


def step_curves(history: pd.DataFrame, window: int = 10, title: str | None = None) -> Figure:
    """Loss terms against the optimiser step (thin: every step; thick: a ``window``-step running mean; the
    Dice term only on steps whose batch had a mask) and, where recorded, held-out accuracy."""
    panels = [(c, LOSS_COMPONENTS[c]) for c in LOSS_COMPONENTS if c in history and _informative(history[c])]
    has_acc = "val_accuracy" in history and history["val_accuracy"].notna().any()
    n = len(panels) + has_acc
    cols = min(3, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    axes = grid.ravel()
    for ax in axes[n:]:
        fig.delaxes(ax)
    steps = history["step"]
    for ax, (col, name) in zip(axes, panels):
        values = pd.to_numeric(history[col], errors="coerce")
        ok = values.notna()
        ax.plot(steps[ok], values[ok], color="C0", alpha=0.3, linewidth=0.8)
        ax.plot(steps[ok], values[ok].rolling(window, min_periods=1).mean(), color="C0", linewidth=2)
        ax.set(title=name, xlabel="step", ylabel="loss")
    if has_acc:
        ax = axes[len(panels)]
        ok = history["val_accuracy"].notna()
        ax.plot(steps[ok], history["val_accuracy"][ok], marker="o", color="C1")
        ax.set(title="held-out accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    if title:
        fig.suptitle(title)
    return fig
