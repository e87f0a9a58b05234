"""Tests of wbclib.training.metrics against small hand-computed examples."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from wbclib import WBC_CLASSES
from wbclib.training.metrics import (
    classification_metrics,
    describe_difference,
    format_mean_ci,
    mcnemar,
    mean_ci,
    paired_bootstrap,
    psnr,
    segmentation_metrics,
)

NAMES3 = ("a", "b", "c")


def test_three_class_confusion_by_hand():
    # true a a a b b c ; pred a a b b c c
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, NAMES3)
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precision a 2/2, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["majority_baseline"] == pytest.approx(0.5)
    assert m["majority_class"] == "a"
    assert m["missing_classes"] == []
    json.dumps(m)  # plain Python types only
    assert type(m["accuracy"]) is float and type(m["per_class"]["a"]["support"]) is int


def test_missing_class_does_not_warn_and_balanced_accuracy_uses_present_classes():
    y_true = [0, 0, 1, 1, 2, 2]  # Monocyte (3) and Neutrophil (4) absent
    y_pred = [0, 1, 1, 1, 2, 3]  # one prediction of an absent class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true, y_pred, WBC_CLASSES)
    assert m["missing_classes"] == ["Monocyte", "Neutrophil"]
    assert m["per_class"]["Neutrophil"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert len(m["confusion_matrix"]) == 5 and all(len(r) == 5 for r in m["confusion_matrix"])
    assert m["confusion_matrix"][2][3] == 1
    # macro F1 over classes in y_true or y_pred: Basophil, Eosinophil, Lymphocyte, Monocyte
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0.0) / 4)


def test_majority_baseline_given_by_index_or_name():
    y_true = [0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 2, 2]
    assert classification_metrics(y_true, y_pred, NAMES3)["majority_baseline"] == pytest.approx(0.5)
    assert classification_metrics(y_true, y_pred, NAMES3, majority_class=1)["majority_baseline"] == pytest.approx(1 / 3)
    majority = classification_metrics(y_true, y_pred, NAMES3, majority_class="a")["majority_baseline"]
    assert majority == pytest.approx(1 / 6)


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError):
        classification_metrics([], [], NAMES3)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], NAMES3)
    with pytest.raises(ValueError):
        classification_metrics([0, 3], [0, 1], NAMES3)


def test_segmentation_metrics_tiny_masks():
    pred = np.zeros((3, 2, 2), bool)
    true = np.zeros((3, 2, 2), bool)
    pred[0] = [[1, 1], [0, 0]]
    true[0] = [[1, 0], [0, 0]]  # inter 1, |A|+|B| 3, union 2 -> dice 2/3, iou 1/2
    true[1] = [[1, 1], [1, 1]]  # pred empty -> 0, 0
    # image 2: both empty -> 1, 1
    m = segmentation_metrics(pred, true)
    assert m == {"dice": pytest.approx((2 / 3 + 0 + 1) / 3), "iou": pytest.approx((0.5 + 0 + 1) / 3), "n": 3}
    with pytest.raises(ValueError):
        segmentation_metrics(pred, true[:2])


def test_psnr_identical_and_known_mse():
    x = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 3, 4, 4))
    assert psnr(x, x) == 100.0
    assert psnr(x + 0.1, x) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(np.full((1, 1, 2, 2), 1.5), np.full((1, 1, 2, 2), 0.9)) == pytest.approx(20.0)  # clipped to 1
    assert psnr(x * 255 + 25.5, x * 255, data_range=255.0) == pytest.approx(20.0)
    assert type(psnr(x, x)) is float
    t = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = t + 0.05 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert psnr(noisy, t) == pytest.approx(psnr(noisy.numpy(), t.numpy()), rel=1e-6)  # tensors: same numbers


def test_mean_ci_matches_scipy_t_interval():
    values = [0.971, 0.975, 0.978, 0.969, 0.974]
    d = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert d["n"] == 5 and d["mean"] == pytest.approx(np.mean(values))
    assert d["low"] == pytest.approx(low) and d["high"] == pytest.approx(high)
    assert d["half_width"] == pytest.approx((high - low) / 2)
    single = mean_ci([0.5])
    assert single == {"mean": 0.5, "half_width": None, "low": None, "high": None, "n": 1}
    json.dumps(single)
    with pytest.raises(ValueError):
        mean_ci([])


def test_format_mean_ci():
    assert format_mean_ci({"mean": 0.97451, "half_width": 0.00312}) == "0.9745 ± 0.0031"
    assert format_mean_ci({"mean": 0.97451, "half_width": None}) == "0.9745"
    assert format_mean_ci({"mean": 0.97451, "half_width": math.nan}, digits=2) == "0.97"


def _pairs(both, a_only, b_only, neither):
    a = [1] * both + [1] * a_only + [0] * b_only + [0] * neither
    b = [1] * both + [0] * a_only + [1] * b_only + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_exact_branch():
    a, b = _pairs(50, 8, 2, 5)  # b + c = 10 < 25
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["method"]) == (8, 2, "exact binomial")
    # two-sided exact binomial: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * 56 / 1024
    assert r["p_value"] == pytest.approx(2 * 56 / 1024)


def test_mcnemar_chi2_branch():
    a, b = _pairs(100, 20, 10, 5)  # b + c = 30
    r = mcnemar(a, b)
    assert (r["b"], r["c"]) == (20, 10) and r["method"].startswith("chi-square")
    assert r["statistic"] == pytest.approx(81 / 30)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(81 / 30, 1))


def test_mcnemar_no_discordant_pairs():
    a, b = _pairs(10, 0, 0, 3)
    assert mcnemar(a, b)["p_value"] == 1.0


def test_paired_bootstrap_identical_vectors():
    a = np.random.default_rng(1).random(200) < 0.8
    r = paired_bootstrap(a, a, n_boot=500)
    assert r["diff"] == 0.0 and r["low"] == 0.0 and r["high"] == 0.0 and r["p_value"] == 1.0
    json.dumps(r)


def test_paired_bootstrap_clearly_better_model():
    a, b = _pairs(150, 30, 5, 15)
    r = paired_bootstrap(a, b, n_boot=2000, seed=3)
    assert r["diff"] == pytest.approx(25 / 200)
    assert r["low"] > 0 and r["low"] < r["diff"] < r["high"]
    assert r["p_value"] < 0.05
    rev = paired_bootstrap(b, a, n_boot=2000, seed=3)
    assert rev["diff"] == pytest.approx(-25 / 200) and rev["p_value"] < 0.05
    assert paired_bootstrap(a, b, n_boot=300, seed=7) == paired_bootstrap(a, b, n_boot=300, seed=7)


def test_describe_difference_sentences():
    test = {"diff": 0.008, "low": -0.003, "high": 0.019, "p_value": 0.16}
    s = describe_difference("with mask", "without mask", test)
    assert s == ("with mask vs without mask: +0.8 points (95 % CI \u22120.3 to +1.9), p = 0.16 \u2014 "
                 "no evidence of a difference at \u03b1 = 0.05 (which does not show that they are equal).")
    a, b = _pairs(150, 30, 5, 15)
    both = {**paired_bootstrap(a, b, n_boot=500), "mcnemar": mcnemar(a, b)}
    s = describe_difference("A", "B", both)
    assert "McNemar" in s and "chi-square" in s and "+12.5 points" in s
    assert s.endswith("evidence at \u03b1 = 0.05 that A scores higher than B.")
    s = describe_difference("A", "B", {**both, "diff": -both["diff"], "seeds": 1})
    assert "that A scores lower than B" in s and s.endswith("not training randomness.")
    s = describe_difference("A", "B", mcnemar(*_pairs(50, 8, 2, 5)))
    assert "McNemar (exact binomial)" in s and "no evidence of a difference" in s
    s = describe_difference("A", "B", {"diff": 0.02, "low": None, "high": None, "p_value": 0.5})
    assert "+2.0 points (no interval)" in s


# -- independent references: values worked out by hand, or by another library ---------------------------------


def test_psnr_is_the_mean_of_per_image_psnrs_worked_by_hand():
    """Two images with MSE 0.01 (20 dB) and 0.0001 (40 dB): the mean of the per-image PSNRs is 30 dB. The PSNR
    of the mean MSE (0.00505) would be 22.97 dB, a different number a reader could not reproduce per image."""
    target = np.random.default_rng(4).uniform(0.2, 0.7, size=(2, 3, 5, 5))  # no clipping at 1 below
    rec = target.copy()
    rec[0] += 0.1  # every pixel off by 0.1: MSE 0.01
    rec[1] += 0.01  # every pixel off by 0.01: MSE 0.0001
    assert psnr(rec, target) == pytest.approx(30.0, abs=1e-9)
    assert psnr(torch.from_numpy(rec), torch.from_numpy(target)) == pytest.approx(30.0, abs=1e-6)
    assert psnr(rec[:1], target[:1]) == pytest.approx(20.0) and psnr(rec[1:], target[1:]) == pytest.approx(40.0)
    # A perfect image counts at the 100 dB cap in the mean: (100 + 20) / 2.
    rec[1] = target[1]
    assert psnr(rec, target) == pytest.approx(60.0)


def test_segmentation_dice_and_iou_worked_by_hand_on_a_4x4_image():
    pred = np.zeros((1, 4, 4), bool)
    true = np.zeros((1, 4, 4), bool)
    pred[0, :2, :3] = True  # 6 pixels
    true[0, 1:3, 1:3] = True  # 4 pixels; overlap: row 1, columns 1-2 = 2 pixels; union 8
    m = segmentation_metrics(pred, true)
    assert m["dice"] == pytest.approx(2 * 2 / (6 + 4)) and m["iou"] == pytest.approx(2 / 8)
    # one image scoring 0.4 and one perfect: the mean over images, not the pooled pixel counts
    both = segmentation_metrics(np.r_[pred, true], np.r_[true, true])
    assert both["dice"] == pytest.approx((0.4 + 1.0) / 2) and both["iou"] == pytest.approx((0.25 + 1.0) / 2)


def _exact_mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact binomial p of McNemar's test, from binomial coefficients (no scipy)."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize("b,c", [(17, 7), (12, 12), (24, 0)])
def test_mcnemar_at_24_discordant_pairs_is_the_exact_binomial(b, c):
    r = mcnemar(*_pairs(30, b, c, 10))
    assert r["method"] == "exact binomial" and (r["b"], r["c"]) == (b, c)
    assert r["p_value"] == pytest.approx(_exact_mcnemar_p(b, c), rel=1e-12)
    assert r["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


@pytest.mark.parametrize("b,c", [(18, 7), (13, 12), (25, 0)])
def test_mcnemar_at_25_discordant_pairs_is_the_corrected_chi_square(b, c):
    r = mcnemar(*_pairs(30, b, c, 10))
    assert r["method"] == "chi-square with continuity correction"
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert r["statistic"] == pytest.approx(statistic)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(statistic, df=1), rel=1e-12)
    # chi-square with one degree of freedom is a squared standard normal: the same p from the normal tail
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(math.sqrt(statistic)), rel=1e-9)


@pytest.mark.parametrize("diffs", [[0.01, 0.03, 0.02], [0.05, -0.02, 0.01, 0.04], [-0.3, -0.1]])
def test_seed_t_test_p_matches_scipy_ttest_1samp(diffs):
    from wbclib.training.metrics import seed_t_interval

    r = seed_t_interval(diffs)
    ref = stats.ttest_1samp(diffs, 0.0)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert (r["low"], r["high"]) == (pytest.approx(low), pytest.approx(high))


# -- bootstraps calibrated against analytic standard errors and known cases ------------------------------------

Z_975 = stats.norm.ppf(0.975)


def test_paired_bootstrap_interval_matches_the_analytic_standard_error():
    """400 images, A alone right on 60, B alone on 20: per-image differences d in {+1, -1, 0}, mean 0.1,
    population variance 80/400 - 0.01 = 0.19. The bootstrap SE of a mean is sqrt(0.19 / 400) = 0.02179, so the
    95 % percentile interval is about 0.1 +- 1.96 x 0.02179 (the sample is large enough to be near normal)."""
    a, b = _pairs(250, 60, 20, 70)
    r = paired_bootstrap(a, b, n_boot=20000, seed=5)
    se = math.sqrt(0.19 / 400)
    assert r["diff"] == pytest.approx(0.1)
    assert (r["high"] - r["low"]) / (2 * Z_975) == pytest.approx(se, rel=0.06)
    assert (r["low"] + r["high"]) / 2 == pytest.approx(0.1, abs=0.004)
    # and the p-value: 2 x P(bootstrap mean <= 0) ~ 2 x Phi(-0.1 / se) = 4.5e-6, resolved as 0 at 20000
    assert r["p_value"] < 2e-3


def test_one_seed_bootstrap_with_a_single_discordant_image_has_a_large_p():
    """A alone is right on 1 of 10 images (the other 9 agree): a replicate's difference is <= 0 exactly when the
    10 draws miss that image, with chance 0.9^10 = 0.3487, so p = 2 x 0.3487 = 0.697 and the interval holds 0.
    A bootstrap that stopped resampling the images would give p = 0 here."""
    from wbclib.training.metrics import hierarchical_bootstrap

    a = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1], bool)
    b = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    expected = 2 * 0.9**10
    for r in (paired_bootstrap(a, b, n_boot=20000, seed=2), hierarchical_bootstrap([(a, b)], n_boot=20000, seed=2)):
        assert r["diff"] == pytest.approx(0.1)
        assert r["p_value"] == pytest.approx(expected, abs=0.025), r["method"]
        assert r["low"] == 0.0 and r["high"] == pytest.approx(0.3)  # 0.1 x Binomial(10, 0.1) percentiles
    s = describe_difference("A", "B", hierarchical_bootstrap([(a, b)], n_boot=5000, seed=0))
    assert "no evidence of a difference" in s and "p = 0.7" in s


def test_hierarchical_bootstrap_spread_matches_its_two_level_variance():
    """S seeds, each with its own images. A replicate averages S seeds drawn with replacement, each an image
    bootstrap of its own mean, so its variance is (1/S) x [Var_k(mu_k) + mean_k(sigma_k^2 / n_k)] (population
    variances). Four seeds of 300 images with known counts of +1 / -1 / 0 give the analytic SE to check."""
    from wbclib.training.metrics import hierarchical_bootstrap

    counts = [(60, 10), (30, 30), (90, 15), (45, 45)]  # (A alone right, B alone right) of 300 images
    pairs = [_pairs(150, p, q, 150 - p - q) for p, q in counts]
    mus = np.array([(p - q) / 300 for p, q in counts])
    within = np.array([(p + q) / 300 - ((p - q) / 300) ** 2 for p, q in counts]) / 300
    se = math.sqrt((mus.var() + within.mean()) / len(counts))
    r = hierarchical_bootstrap(pairs, n_boot=20000, seed=11)
    assert r["diff"] == pytest.approx(mus.mean())
    # the seed draws make the replicates lumpy (a few distinct seed multisets): compare the spread loosely
    assert (r["high"] - r["low"]) / (2 * Z_975) == pytest.approx(se, rel=0.15)
    # the images alone (no variation between seeds) would give a far narrower interval
    assert math.sqrt(within.mean() / len(counts)) < 0.5 * se
