"""Mask-guided test-time rescale: a cell brought to the share of the frame the training cells cover."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_wbc_tree, write_image
from wbclib import WBC_CLASSES, cli
from wbclib.core import config as cfg
from wbclib.data import datasets, readers, transforms
from wbclib.results import rescale
from wbclib.training import train
from wbclib.training.runtime import Runtime

VIOLET, WHITE = (120, 60, 200), (235, 230, 225)


def disc_image(size=96, radius=24.0, centre=(40.0, 44.0)) -> torch.Tensor:
    """A violet disc of ``radius`` around ``centre`` (x, y) on a pale background, (3, size, size) uint8."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    img = torch.empty((3, size, size), dtype=torch.uint8)
    for c in range(3):
        img[c] = torch.where(inside, VIOLET[c], WHITE[c])
    return img


def violet(img: torch.Tensor) -> torch.Tensor:
    return (img[2].int() - img[1].int()) > 70


def test_share_and_factor_of_a_known_disc():
    mask = violet(disc_image(64, 16, (40, 24)))
    # By hand: a disc of radius 16 covers pi 16^2 / 64^2 = 0.196 of a 64-pixel frame, its box 33 x 33 pixels.
    assert rescale.cell_share(mask) == pytest.approx(math.pi * 16 ** 2 / 64 ** 2, rel=0.02)
    assert rescale.cell_share(mask, "box") == pytest.approx(33 * 33 / 64 ** 2)
    assert rescale.centroid(mask) == pytest.approx((40, 24), abs=0.01)
    # To cover the share of a disc of radius 8 (pi 8^2 / 64^2) it must shrink by sqrt(64 / 256) = 0.5.
    target = math.pi * 8 ** 2 / 64 ** 2
    assert rescale.scale_factor(rescale.cell_share(mask), target) == pytest.approx(0.5, abs=0.01)
    assert rescale.scale_factor(0.01, 0.45) == 2.0  # sqrt(45) = 6.7, clamped to the upper limit
    assert rescale.scale_factor(1.0, 0.05) == 0.5  # sqrt(0.05) = 0.22, clamped to the lower limit
    assert rescale.scale_factor(0.0, 0.45) == 1.0  # no cell found: left as it is
    assert rescale.cell_share(torch.zeros(8, 8)) == 0.0 and rescale.centroid(torch.zeros(8, 8)) is None


def test_zoom_puts_the_cell_in_the_middle_at_the_new_size_and_fills_with_the_background():
    img = disc_image(96, 16, (30, 60))
    out = rescale.zoom(img, 0.5, (30, 60))
    assert out.shape == img.shape and out.dtype == torch.uint8
    cell = violet(out)
    assert cell.sum() == pytest.approx(math.pi * 8 ** 2, rel=0.15)  # radius 16 -> 8
    assert rescale.centroid(cell) == pytest.approx((47.5, 47.5), abs=0.6)  # at the frame's centre
    assert out[:, 0, 0].tolist() == list(WHITE) and out[:, -1, -1].tolist() == list(WHITE)  # padded as background
    bigger = violet(rescale.zoom(img, 2.0, (30, 60)))
    assert bigger.sum() == pytest.approx(math.pi * 32 ** 2, rel=0.05)
    assert rescale.centroid(bigger) == pytest.approx((47.5, 47.5), abs=0.6)


class DiscModel(torch.nn.Module):
    """Stands in for a trained model: its mask head marks the violet pixels, its classifier says class 0."""

    def forward(self, images):
        cell = (images[:, 2] - images[:, 1]) > 70 / 255
        mask_logits = torch.where(cell, 10.0, -10.0)[:, None].expand(-1, len(WBC_CLASSES), -1, -1)
        return SimpleNamespace(mask_logits=mask_logits, class_logits=torch.zeros(len(images), len(WBC_CLASSES)))


def _disc_dataset(tmp_path, radius, centre):
    from PIL import Image

    path = tmp_path / "disc.png"
    Image.fromarray(disc_image(96, radius, centre).permute(1, 2, 0).numpy()).save(path)
    return datasets.CellDataset([readers.Record(path, 0)], WBC_CLASSES, transforms.eval_transform(64), resize=None)


@pytest.mark.parametrize("iterations, share", [(1, 0.139), (2, 0.110)])
def test_rescaled_images_show_the_cell_at_the_target_share(tmp_path, iterations, share):
    """A disc of radius 40 fills most of the 64-pixel crop; a target of 0.110 (radius 12) needs 0.3. One pass
    under-corrects (the crop shows only part of the disc, share 0.973: factor sqrt(0.110 / 0.973) = 0.337 ->
    radius 13.5, share 0.139); a second pass measures again and lands on the target."""
    ds = _disc_dataset(tmp_path, 40, (47.5, 47.5))
    config = SimpleNamespace(input_size=64, resize=None)
    rt = Runtime.plain("cpu")
    rule = rescale.Rule(target=math.pi * 12 ** 2 / 64 ** 2, low=0.25, iterations=iterations)
    out = rescale.rescaled_dataset(DiscModel(), ds, config, rt, lambda d: DataLoader(d, batch_size=4), rule)
    crop = out[0]["image"]  # the 64-pixel crop the classifier sees, 0-1 floats
    cell = (crop[2] - crop[1]) > 70 / 255
    assert rescale.cell_share(cell) == pytest.approx(share, abs=0.01)
    assert rescale.centroid(cell) == pytest.approx((31.5, 31.5), abs=1)
    assert out[0]["mask"].shape == (1, 64, 64)


def test_rescaled_dataset_centres_an_off_centre_cell(tmp_path):
    ds = _disc_dataset(tmp_path, 16, (36, 56))
    config = SimpleNamespace(input_size=64, resize=None)
    rt = Runtime.plain("cpu")
    rule = rescale.Rule(target=math.pi * 24 ** 2 / 64 ** 2)  # radius 16 -> 24: enlarged 1.5x
    out = rescale.rescaled_dataset(DiscModel(), ds, config, rt, lambda d: DataLoader(d, batch_size=4), rule)
    assert out.params[0][0] == pytest.approx(1.5, abs=0.02)
    crop = out[0]["image"]
    cell = (crop[2] - crop[1]) > 70 / 255
    assert rescale.centroid(cell) == pytest.approx((31.5, 31.5), abs=1)
    assert rescale.cell_share(cell) == pytest.approx(math.pi * 24 ** 2 / 64 ** 2, rel=0.05)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rescale")
    root = make_wbc_tree(base / "data", per_class=3, val_per_class=1, size=(48, 48))
    config = cfg.from_profile("quick", data_root=str(root), input_size=32, resize=40, base_width=4, depth=2,
                              batch_size=4, epochs=1, min_steps=0)
    train.fit(config, base / "run", progress=False, log=lambda s: None)
    return base / "run"


def test_evaluate_and_predict_rescale_to_mask_switch(tiny_run, tmp_path, capsys):
    for i, cls in enumerate(WBC_CLASSES):
        write_image(tmp_path / "set" / cls / f"{cls}.jpg", size=(60, 64), seed=i)
    assert cli.main(["evaluate", "--checkpoint", str(tiny_run), "--data", str(tmp_path / "set"), "--out",
                     str(tmp_path / "e"), "--rescale-to-mask", "--adabn", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rescale-to-mask: " in out and "of 5 images rescaled" in out and "adabn:" in out
    m = (tmp_path / "e" / "metrics.json").read_text()
    assert '"rescale"' in m and '"median_factor"' in m
    assert cli.main(["predict", "--checkpoint", str(tiny_run), str(tmp_path / "set"), "--rescale-to-mask",
                     "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,") and len(lines) == 6
