"""Smoke tests of wbclib.results.plots: each function returns a Figure with the expected axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from wbclib import WBC_CLASSES
from wbclib.results.plots import (
    CLASS_PALETTE,
    confusion_grid,
    confusion_matrix_plot,
    fit_tsne,
    loss_curves,
    recall_bars,
    reconstruction_grid,
    tsne_plot,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(ce=True, dice=True, accuracy=True, n=4):
    e = np.arange(1, n + 1)
    h = {"epoch": e, "lr": 1e-3, "seconds": 1.0}
    for split in ("train", "val"):
        h[f"{split}_mse"] = 1 / e
        h[f"{split}_ce"] = 0.5 / e if ce else 0.0
        h[f"{split}_dice"] = 0.3 / e if dice else 0.0
        h[f"{split}_total"] = h[f"{split}_mse"] + h[f"{split}_ce"] + h[f"{split}_dice"]
    h["val_accuracy"] = np.linspace(0.5, 0.9, n) if accuracy else np.nan
    return pd.DataFrame(h)


def test_loss_curves_all_panels():
    fig = loss_curves(_history(), title="run 1")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # total, mse, ce, dice, accuracy
    assert fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None


def test_loss_curves_skips_zero_components_and_missing_accuracy():
    fig = loss_curves(_history(ce=False, dice=False, accuracy=False))
    assert len(fig.axes) == 2  # total, mse
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["total loss", "MSE (reconstruction)"]


def test_loss_curves_reads_csv_with_empty_accuracy(tmp_path):
    path = tmp_path / "history.csv"
    _history(accuracy=False).to_csv(path, index=False)
    fig = loss_curves(pd.read_csv(path))
    assert len(fig.axes) == 4


def test_reconstruction_grid_rows_and_columns():
    rng = np.random.default_rng(0)
    images = rng.random((5, 3, 8, 8))
    fig = reconstruction_grid(images, images * 1.3 - 0.1, n=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3
    masks = rng.random((5, 8, 8)) > 0.5
    pred = torch.rand(5, 5, 8, 8)  # per-class probabilities, as a tensor
    fig = reconstruction_grid(torch.from_numpy(images), images, masks=masks, pred_masks=pred,
                              titles=list("abcde"), n=8)
    assert len(fig.axes) == 4 * 5
    assert fig.axes[0].get_ylabel() == "input" and fig.axes[15].get_ylabel() == "predicted mask"
    assert fig.axes[0].get_title() == "a" and not fig.axes[0].get_xticks().size


def test_confusion_matrix_plot():
    cm = [[5, 1, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 4, 0], [0, 0, 0, 2, 8]]
    fig = confusion_matrix_plot(cm, WBC_CLASSES, title="val")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colour bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 25 and texts[0] == "5"
    assert len(confusion_matrix_plot(cm, WBC_CLASSES, normalize=False).axes) == 2
    with pytest.raises(ValueError):
        confusion_matrix_plot(cm, WBC_CLASSES[:3])


def test_tsne_plot_with_extra_set():
    rng = np.random.default_rng(0)
    coords, labels = rng.normal(size=(30, 2)), rng.integers(0, 5, 30)
    fig = tsne_plot(coords, labels, WBC_CLASSES, extra_coords=rng.normal(size=(6, 2)), extra_name="pRCC")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[-1] == "pRCC" and set(legend[:-1]) == {WBC_CLASSES[i] for i in set(labels.tolist())}
    fig = tsne_plot(coords, labels, WBC_CLASSES, extra_coords=coords[:4], extra_labels=labels[:4])
    assert len(fig.axes) == 1
    assert len(tsne_plot(coords, np.full(30, -1), WBC_CLASSES).axes) == 1  # unlabelled points


def test_class_colours_are_fixed_and_distinct():
    colours = [CLASS_PALETTE[name] for name in WBC_CLASSES]
    assert len(set(colours)) == len(WBC_CLASSES)


def test_fit_tsne_and_transform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    emb = fit_tsne(x, seed=0)
    assert np.asarray(emb).shape == (40, 2)
    new = emb.transform(rng.normal(size=(10, 16)))
    assert np.asarray(new).shape == (10, 2) and np.isfinite(np.asarray(new)).all()
    assert np.asarray(fit_tsne(x[:20], seed=1)).shape == (20, 2)  # small n: perplexity lowered


def test_loss_curves_wrap_after_three_panels():
    fig = loss_curves(_history())
    rows = sorted({round(ax.get_position().y0, 2) for ax in fig.axes})
    assert len(fig.axes) == 5 and len(rows) == 2  # three panels, then two


def test_recall_bars_and_confusion_grid():
    recall = pd.DataFrame([[1.0, 0.5, 0.0, 1.0, 0.5], [0.2] * 5], index=["a", "b"], columns=WBC_CLASSES)
    fig = recall_bars(recall, title="WBC_100")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert len(heights) == 10 and heights[:5] == [1.0, 0.5, 0.0, 1.0, 0.5]
    cms = [(f"cell {i}", np.eye(5, dtype=int) * (i + 1)) for i in range(3)]
    fig = confusion_grid(cms, WBC_CLASSES)
    assert [ax.get_title() for ax in fig.axes] == ["cell 0", "cell 1", "cell 2"]
    with pytest.raises(ValueError, match="does not match"):
        confusion_grid([("x", np.eye(2))], WBC_CLASSES)
