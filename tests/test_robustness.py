"""Robustness: the image-quality augmentation switches and the perturbed evaluation of a trained model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from conftest import make_wbc_tree, write_image
from wbclib import WBC_CLASSES, cli
from wbclib.core import config as cfg
from wbclib.data import transforms
from wbclib.results import evaluate, robustness
from wbclib.training import train


def _cell_image(h=96, w=97):
    img = torch.full((3, h, w), 230, dtype=torch.uint8)
    img[:, 30:66, 30:66] = torch.tensor([120, 60, 160], dtype=torch.uint8)[:, None, None]  # a violet "cell"
    return tv_tensors.Image(img), tv_tensors.Mask((img[:1] < 200).to(torch.uint8))


def test_image_quality_switches_are_off_by_default_and_parse_from_set():
    c = cfg.from_profile("quick")
    assert (c.jpeg_quality, c.blur, c.resample) == (None, 0.0, None)
    names = [type(t).__name__ for t in transforms.train_transform(64, 96).transforms]
    assert "RandomApply" not in names  # nothing but the profile's own steps
    a = cli.parser().parse_args(["train", "--run-dir", "r", "--set", "jpeg_quality=[30, 95]", "--set", "blur=1.0",
                                 "--set", "resample=[0.5, 1]"])
    c = cli.config_from_args(a)
    assert (c.jpeg_quality, c.blur, c.resample) == ([30, 95], 1.0, [0.5, 1])
    for bad in ({"jpeg_quality": [95, 30]}, {"jpeg_quality": [0, 90]}, {"blur": -1}, {"resample": [0.5, 2]}):
        with pytest.raises(cfg.ConfigError):
            cfg.from_profile("quick", **bad)


@pytest.mark.parametrize("switch", [{"jpeg_quality": [30, 40]}, {"blur": 1.5}, {"resample": [0.4, 0.5]}])
def test_each_image_quality_switch_changes_about_half_the_images_and_never_the_mask(switch):
    steps = transforms.train_transform(64, 96, **switch).transforms
    degrade = [t for t in steps if isinstance(t, v2.RandomApply)]
    assert len(degrade) == 1 and steps[0] is degrade[0]  # first, at the scale the images arrive with
    img, mask = _cell_image()
    changed = 0
    for i in range(40):
        torch.manual_seed(i)
        out, m = degrade[0](img, mask)
        assert out.shape == img.shape and out.dtype == torch.uint8 and torch.equal(m, mask)
        changed += int(not torch.equal(out, img))
    assert 8 <= changed <= 32, changed  # DEGRADE_P = 0.5 of 40 draws
    out, m = transforms.train_transform(64, 96, **switch)(img, mask)
    assert out.shape == (3, 64, 64) and m.shape == (1, 64, 64)


def test_shrink_enlarge_keeps_the_size_and_softens_edges():
    img, mask = _cell_image()
    out, m = transforms.ShrinkEnlarge(0.4, 0.4, modes=(v2.InterpolationMode.BILINEAR,))(img, mask)
    assert out.shape == img.shape and torch.equal(m, mask)
    edge = (out[0, 48, 26:34].int() - img[0, 48, 26:34].int()).abs()
    assert edge.max() > 10  # the sharp edge of the cell is now a ramp


def test_every_perturbation_keeps_image_and_mask_together():
    img, mask = _cell_image()
    for kind, level in robustness.levels():
        out, m = robustness.perturbation(kind, level)(img, mask)
        assert out.dtype == torch.uint8 and out.shape[-2:] == m.shape[-2:]
        if kind == "scale":
            assert abs(out.shape[-1] - 97 * level) <= 1
        elif kind != "none":
            assert out.shape == img.shape and not torch.equal(out, img), (kind, level)
    with pytest.raises(ValueError, match="unknown perturbation"):
        robustness.perturbation("fog", 1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("robust")
    root = make_wbc_tree(base / "data", per_class=3, val_per_class=1, size=(48, 48))
    config = cfg.from_profile("quick", data_root=str(root), input_size=32, resize=40, base_width=4, depth=2,
                              batch_size=4, epochs=1, min_steps=0, jpeg_quality=[50, 90], blur=0.8,
                              resample=[0.5, 1.0])
    train.fit(config, base / "run", progress=False, log=lambda s: None)
    return base / "run"


def test_perturbed_metrics_score_the_set_as_evaluate_does_then_each_perturbation(run, tmp_path):
    for i, cls in enumerate(WBC_CLASSES):
        for j in range(2):
            write_image(tmp_path / "set" / cls / f"{cls}_{j}.jpg", size=(60, 64), seed=10 * i + j)
    res = robustness.perturbed_metrics(run, tmp_path / "set")
    assert len(res) == len(robustness.levels()) and set(res["n"]) == {10}
    clean = evaluate.evaluate(run, tmp_path / "set", tmp_path / "out")
    assert res.iloc[0]["perturbation"] == "none"
    assert res.iloc[0]["balanced_accuracy"] == pytest.approx(clean["balanced_accuracy"])
    assert res["balanced_accuracy"].between(0, 1).all()
    runs = pd.DataFrame([{"run": "a-s0", "setting": "a", "seed": 0, "path": str(run)}])
    first = robustness.evaluate_runs(runs, tmp_path / "set")
    assert (run / "robustness-pbc.csv").is_file()
    again = robustness.evaluate_runs(runs, tmp_path / "set")  # from the kept file
    pd.testing.assert_frame_equal(first.drop(columns="level"), again.drop(columns="level"))


def test_the_table_gives_a_seed_interval_per_setting_and_level():
    rows = []
    for seed, acc in ((0, 0.9), (1, 0.8)):
        for kind, level in robustness.levels(["jpeg"]):
            rows.append({"perturbation": kind, "level": level, "balanced_accuracy": acc - (0 if level is None else
                         (100 - level) / 1000), "setting": "bn", "seed": seed})
    table = robustness.table(pd.DataFrame(rows))
    assert list(table.columns) == ["perturbation", "level", "bn (2 seeds)"]
    assert table.iloc[0]["bn (2 seeds)"].startswith("0.850 [")  # mean of 0.9 and 0.8 with an interval
    assert len(table) == 1 + len(robustness.PERTURBATIONS["jpeg"][1])
