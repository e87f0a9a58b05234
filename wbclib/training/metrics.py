"""Every number the book reports: classification, segmentation and reconstruction metrics, confidence intervals
across seeds, and paired tests between two models evaluated on the same validation images.

Inputs are lists or numpy arrays; outputs are plain Python ``float``/``int``/``list``/``dict`` (JSON-serialisable,
no numpy scalars), with ``None`` wherever a number is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

PSNR_CAP_DB = 100.0  #: PSNR reported for a perfect reconstruction (MSE = 0).
MINUS = "\u2212"  # typographic minus sign, for the sentences of describe_difference


def _labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr):
            raise ValueError(f"{name} must hold integer class indices")
        arr = as_int
    return arr.astype(np.int64)


def _class_index(cls, class_names: Sequence[str]) -> int:
    if isinstance(cls, str):
        if cls not in class_names:
            raise ValueError(f"majority_class {cls!r} is not one of {list(class_names)}")
        return list(class_names).index(cls)
    idx = int(cls)
    if not 0 <= idx < len(class_names):
        raise ValueError(f"majority_class {cls} is out of range for {len(class_names)} classes")
    return idx


def classification_metrics(y_true, y_pred, class_names: Sequence[str], majority_class=None) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class P/R/F1, confusion matrix and majority baseline.

    Balanced accuracy is the mean recall over the classes with support > 0 in ``y_true``; macro F1 averages
    over the classes present in ``y_true`` or ``y_pred``. ``majority_class`` is an index or a name.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.size == 0:
        raise ValueError("classification_metrics needs at least one sample")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} != {y_pred.size}")
    k = len(class_names)
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= k:
            raise ValueError(f"{name} holds class indices outside 0..{k - 1}")
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    balanced = float(np.mean(recall[support > 0]))
    counts = np.bincount(y_true, minlength=k)
    majority = int(np.argmax(counts)) if majority_class is None else _class_index(majority_class, class_names)
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(macro_f1),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "majority_class": class_names[majority],
        "majority_baseline": float(np.mean(y_true == majority)),
        "missing_classes": [name for i, name in enumerate(class_names) if counts[i] == 0],
    }


def segmentation_metrics(pred_masks, true_masks) -> dict:
    """Mean per-image Dice and IoU of boolean masks (N, H, W); an image where both masks are empty scores 1."""
    pred, true = np.asarray(pred_masks).astype(bool), np.asarray(true_masks).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} != {true.shape}")
    if pred.ndim == 2:
        pred, true = pred[None], true[None]
    if pred.ndim < 3 or pred.shape[0] == 0:
        raise ValueError(f"need masks of shape (N, H, W) with N >= 1, got {pred.shape}")
    pred, true = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    return segmentation_from_counts(np.sum(pred & true, axis=1), np.sum(pred | true, axis=1),
                                    pred.sum(axis=1) + true.sum(axis=1))


def segmentation_from_counts(inter, union, total) -> dict:
    """:func:`segmentation_metrics` from each image's pixel counts: intersection, union and the two masks' sizes
    added (what a device reduces to before the host sees it)."""
    inter, union, total = (np.asarray(v, dtype=np.int64) for v in (inter, union, total))
    empty = union == 0
    dice = np.where(empty, 1.0, 2.0 * inter / np.maximum(total, 1))
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    return {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": len(inter)}


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def psnr(reconstruction, target, data_range: float = 1.0) -> float:
    """Mean per-image PSNR (dB) over (N, C, H, W) arrays or tensors, after clipping the reconstruction to
    [0, data_range]. Tensors are reduced where they lie (on a GPU only the N per-image errors reach the host).

    A perfect reconstruction (MSE = 0) is capped at 100 dB.
    """
    if hasattr(reconstruction, "detach"):  # a torch tensor
        rec, tgt = reconstruction.detach().float().clamp(0.0, data_range).double(), target.detach().double()
    else:
        rec, tgt = np.clip(_to_numpy(reconstruction), 0.0, data_range), _to_numpy(target)
    if rec.shape != tgt.shape:
        raise ValueError(f"shapes differ: {tuple(rec.shape)} != {tuple(tgt.shape)}")
    if rec.ndim < 2 or rec.shape[0] == 0:
        raise ValueError(f"need a batch of images (N, C, H, W) with N >= 1, got {tuple(rec.shape)}")
    mse = ((rec - tgt).reshape(len(rec), -1) ** 2).mean(1)
    mse = mse.cpu().numpy() if hasattr(mse, "cpu") else mse
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(data_range**2 / mse)
    return float(np.mean(np.minimum(db, PSNR_CAP_DB)))


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean and Student-t confidence interval across seeds; with one value the interval is undefined (None)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "half_width": None, "low": None, "high": None, "n": 1}
    sem = x.std(ddof=1) / math.sqrt(x.size)
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, x.size - 1) * sem)
    return {"mean": mean, "half_width": half, "low": mean - half, "high": mean + half, "n": int(x.size)}


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a).astype(bool).ravel(), np.asarray(correct_b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired vectors differ in length: {a.size} != {b.size}")
    if a.size == 0:
        raise ValueError("paired test needs at least one image")
    return a, b


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's test on paired correctness vectors: exact binomial when b + c < 25, else chi-square with
    continuity correction (b = A right & B wrong, c = A wrong & B right)."""
    a, b_ = _paired(correct_a, correct_b)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    if b + c == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact binomial"}
    if b + c < 25:
        p = stats.binomtest(b, b + c, 0.5).pvalue
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(min(p, 1.0)),
                "method": "exact binomial"}
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": float(stats.chi2.sf(statistic, df=1)),
            "method": "chi-square with continuity correction"}


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Accuracy difference (A - B) with a percentile interval from resampling images with replacement;
    two-sided p = 2 x fraction of bootstrap differences on the other side of 0 (capped at 1)."""
    a, b = _paired(correct_a, correct_b)
    d = a.astype(np.float64) - b.astype(np.float64)
    n = d.size
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound the memory of the index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        boots[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    diff = float(d.mean())
    low, high, p = _bootstrap_summary(boots, diff, confidence)
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": min(p, 1.0),
            "confidence": confidence, "n": int(n), "n_boot": int(n_boot), "method": "paired bootstrap"}


def _bootstrap_summary(boots: np.ndarray, diff: float, confidence: float) -> tuple[float, float, float]:
    """Percentile interval of bootstrap differences and the two-sided p-value: twice the share of replicates
    on the other side of 0 from ``diff`` (1.0 when ``diff`` is 0)."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(boots, [tail, 100.0 - tail])
    if diff > 0:
        p = 2.0 * float(np.mean(boots <= 0))
    elif diff < 0:
        p = 2.0 * float(np.mean(boots >= 0))
    else:
        p = 1.0
    return float(low), float(high), p


def seed_t_interval(differences, confidence: float = 0.95) -> dict:
    """Mean of per-seed paired differences with a Student-t interval over seeds (n - 1 degrees of freedom).

    Each training seed gives one difference (A - B on the same images); their spread is the run-to-run
    variation of training, which an image bootstrap of a single run cannot see. One seed: no interval (None).
    A two-sided p-value of the one-sample t-test of mean 0 comes with it (1.0 when every difference is 0).
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("seed_t_interval needs at least one seed")
    ci = mean_ci(d, confidence)
    p = None
    if d.size > 1:
        sd = float(d.std(ddof=1))
        if sd == 0:
            p = 1.0 if ci["mean"] == 0 else 0.0
        else:
            t = ci["mean"] / (sd / math.sqrt(d.size))
            p = float(2 * stats.t.sf(abs(t), d.size - 1))
    return {"diff": ci["mean"], "low": ci["low"], "high": ci["high"], "p_value": p, "seeds": int(d.size),
            "confidence": confidence, "method": "per-seed differences, t-interval"}


def hierarchical_bootstrap(pairs, n_boot: int = 10000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Accuracy difference (A - B) averaged over training seeds, with a two-level percentile interval.

    ``pairs`` is a list with one ``(correct_a, correct_b)`` pair of boolean vectors per training seed (the
    same images, in the same order, within a seed). Each replicate draws the seeds with replacement, then,
    within each drawn seed, its images with replacement, and averages the seeds' differences: the interval
    holds both the variation between training runs and the sampling of the images. With one seed it reduces
    to the paired image bootstrap of that seed.
    """
    ds = []
    for a, b in pairs:
        a, b = _paired(a, b)
        ds.append(a.astype(np.float64) - b.astype(np.float64))
    if not ds:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    rng = np.random.default_rng(seed)
    s = len(ds)
    boots = np.zeros(n_boot)
    seed_draws = rng.integers(0, s, size=(n_boot, s))
    for k in range(s):  # images of seed k, for every replicate that drew it (possibly several times)
        d = ds[k]
        counts = (seed_draws == k).sum(axis=1)
        for reps in np.unique(counts[counts > 0]):
            rows = np.flatnonzero(counts == reps)
            chunk = max(1, 2_000_000 // (int(reps) * d.size))  # bound the memory of the index matrix
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                means = d[rng.integers(0, d.size, size=(len(part) * int(reps), d.size))].mean(axis=1)
                boots[part] += means.reshape(len(part), int(reps)).sum(axis=1)
    boots /= s
    diff = float(np.mean([d.mean() for d in ds]))
    low, high, p = _bootstrap_summary(boots, diff, confidence)
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": min(p, 1.0), "seeds": s,
            "n": int(sum(d.size for d in ds)), "confidence": confidence, "n_boot": int(n_boot),
            "method": "hierarchical bootstrap (seeds, then images)"}


def _signed(x: float, digits: int = 1) -> str:
    s = f"{x:+.{digits}f}"
    if float(s) == 0:
        s = f"{0:+.{digits}f}"  # no "-0.0"
    return s.replace("-", MINUS)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def describe_difference(name_a: str, name_b: str, test: dict, alpha: float = 0.05) -> str:
    """One plain-English sentence for a paired comparison: the output of paired_bootstrap (optionally with a
    ``"mcnemar"`` entry holding mcnemar's output), of seed_t_interval or hierarchical_bootstrap, or mcnemar's
    output alone. The verdict uses ``p_value`` and never calls a non-significant difference "equal"."""
    p = float(test["p_value"])
    if p < alpha:
        direction = "higher" if test.get("diff", test.get("b", 0) - test.get("c", 0)) > 0 else "lower"
        verdict = f"evidence at \u03b1 = {alpha:g} that {name_a} scores {direction} than {name_b}"
    else:  # absence of evidence: the data do not show a difference, which does not make the two equal
        verdict = f"no evidence of a difference at \u03b1 = {alpha:g} (which does not show that they are equal)"
    if test.get("seeds") == 1:
        verdict += "; one training seed, so the interval covers the images only, not training randomness"
    if "diff" in test:
        conf = round(100 * float(test.get("confidence", 0.95)))
        text = f"{name_a} vs {name_b}: {_signed(100 * test['diff'])} points "
        if test.get("low") is not None:
            text += f"({conf} % CI {_signed(100 * test['low'])} to {_signed(100 * test['high'])}), "
        else:
            text += "(no interval), "
        p_text = _p(p)
        if p == 0 and test.get("n_boot"):  # a bootstrap p-value cannot resolve below 2 / n_boot
            p_text = f"p < {max(2.0 / test['n_boot'], 0.001):.2g}"
        extra = test.get("mcnemar")
        if extra is None:
            text += p_text
        else:  # two tests: name both
            text += f"{test.get('method', 'paired bootstrap')} {p_text}; "
            if isinstance(extra, dict):
                text += f"McNemar ({extra.get('method', 'test')}) {_p(float(extra['p_value']))}"
            else:
                text += f"McNemar {_p(float(extra))}"
    else:
        text = (f"{name_a} vs {name_b}: {name_a} alone right on {test['b']} images, {name_b} alone right on "
                f"{test['c']}, McNemar ({test.get('method', 'test')}) {_p(p)}")
    return f"{text} \u2014 {verdict}."


def format_mean_ci(values, digits: int = 4, bounds: bool = False) -> str:
    """The one way the book writes a mean over seeds with its 95 % t-interval: ``values`` (numbers; None and NaN
    are left out) or the output of :func:`mean_ci`.

    ``bounds=False``: "0.7000 ± 0.0248" (the half-width), the mean alone for one seed; ``bounds=True``:
    "0.700 [0.675, 0.725]", "0.700 (1 seed)" for one seed. No values: "–"."""
    if isinstance(values, dict):
        d = values
    else:
        kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not kept:
            return "\u2013"
        d = mean_ci(kept)
    half = d.get("half_width")
    if half is None or (isinstance(half, float) and math.isnan(half)):
        return f"{d['mean']:.{digits}f}" + (" (1 seed)" if bounds else "")
    if bounds:
        return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"
    return f"{d['mean']:.{digits}f} \u00b1 {half:.{digits}f}"


def format_interval(d: dict, scale: float = 100, digits: int = 1) -> str:
    """An interval of a difference as signed bounds, in points by default: "+1.2 to +4.5"; "–" when undefined."""
    if d.get("low") is None:
        return "\u2013"
    return f"{scale * d['low']:+.{digits}f} to {scale * d['high']:+.{digits}f}"


__all__ = [
    "classification_metrics",
    "describe_difference",
    "format_interval",
    "format_mean_ci",
    "hierarchical_bootstrap",
    "mcnemar",
    "mean_ci",
    "paired_bootstrap",
    "psnr",
    "seed_t_interval",
    "segmentation_metrics",
]
