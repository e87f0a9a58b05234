"""One preprocessing path: a full-size image reaches the network with the pixels of its `wbc prepare --size`
copy, so a model does not care whether its images were prepared first."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import shared_or_skip
from wbclib import WBC_CLASSES
from wbclib.core import config as cfg
from wbclib.data import datasets, images, layout, prepare, readers
from wbclib.results import evaluate
from wbclib.training import train


def _photo(path, size, seed):
    """A smooth, textured RGB 'photograph' saved as a full-size JPEG (what a microscope camera writes)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(7 * xx + seed) * 60 + 150, np.cos(5 * yy - seed) * 50 + 120,
                     np.sin(3 * (xx + yy)) * 40 + 170], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95, subsampling=0)
    return path


def _pixels(ds: datasets.CellDataset) -> dict[str, np.ndarray]:
    return {r.path.name: ds.load(i)[0].numpy() for i, r in enumerate(ds.records)}


@pytest.mark.parametrize("short", [96, 64])
def test_a_full_size_file_loads_with_the_pixels_of_its_prepared_copy(tmp_path, short):
    sizes = [(360, 363), (366, 369), (575, 575), (640, 480), (200, 130)]  # larger, wider, and one near the size
    for i, size in enumerate(sizes):
        _photo(tmp_path / "full" / WBC_CLASSES[i] / f"c{i}.jpg", size, seed=i)
    prepare.prepare("folders", tmp_path / "full", tmp_path / "prep", size=short, progress=False)
    full, _ = readers.folder_records(tmp_path / "full")
    prepped = list((tmp_path / "prep" / "WBC_100").glob("*/data/*/*.jpg"))  # one image per class: all train
    assert len(prepped) == len(sizes)
    direct = _pixels(datasets.CellDataset(full, WBC_CLASSES, resize=short))
    stored = {p.name: np.asarray(images.open_image(p)).transpose(2, 0, 1) for p in prepped}
    for name, pixels in direct.items():
        assert min(pixels.shape[1:]) == short
        assert pixels.shape == stored[name].shape, name
        assert np.abs(pixels.astype(int) - stored[name]).max() == 0, name  # the very same pixels
    # the prepared copies themselves are already at the scale: loading them again leaves them unchanged
    again, _ = readers.folder_records(tmp_path / "prep" / "WBC_100" / "train" / "data")
    for name, pixels in _pixels(datasets.CellDataset(again, WBC_CLASSES, resize=short)).items():
        assert np.array_equal(pixels, stored[name]), name


def test_without_the_jpeg_round_trip_the_pixels_differ(tmp_path):
    """The round trip is what makes them equal: a plain resize leaves the prepared copy's JPEG loss out."""
    _photo(tmp_path / "full" / "Basophil" / "a.jpg", (360, 363), seed=3)
    prepare.prepare("folders", tmp_path / "full", tmp_path / "prep", size=96, progress=False)
    full, _ = readers.folder_records(tmp_path / "full")
    stored = np.asarray(images.open_image(next((tmp_path / "prep" / "WBC_100").rglob("*.jpg")))).transpose(2, 0, 1)
    plain = datasets.CellDataset(full, WBC_CLASSES, resize=96, quality=None).load(0)[0].numpy()
    assert plain.shape == stored.shape and np.abs(plain.astype(int) - stored).mean() > 0.5


def test_masks_follow_the_image_to_its_scale(tmp_path):
    _photo(tmp_path / "set" / "data" / "Basophil" / "a.jpg", (360, 363), seed=1)
    cell = np.zeros((363, 360), np.uint8)
    cell[100:260, 90:270] = 255
    (tmp_path / "set" / "mask" / "Basophil").mkdir(parents=True)
    Image.fromarray(cell).save(tmp_path / "set" / "mask" / "Basophil" / "a.png")
    recs, _ = readers.folder_records(tmp_path / "set")
    image, mask = datasets.CellDataset(recs, WBC_CLASSES, resize=96).load(0)
    assert image.shape == (3, 97, 96) and mask.shape == (1, 97, 96)
    assert mask.float().mean().item() == pytest.approx(160 * 180 / (363 * 360), abs=0.02)


# -- a trained model on real cells -------------------------------------------------------------------------

#: Full-size PBC originals per class for the agreement test (those of the embedded validation cells).
PER_CLASS = 20


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The full-size originals (360 x 363 JPEGs) of the first embedded validation cells of every class."""
    pbc = shared_or_skip("pbc")
    index = {p.name: p for p in pbc.rglob("*.jpg")}
    out = tmp_path_factory.mktemp("originals") / "full"
    for folder in layout.visible(datasets.EMBEDDED / "WBC_100" / "val" / "data"):
        for f in layout.visible(folder)[:PER_CLASS]:
            (out / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(index[f.name], out / folder.name / f.name)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small model trained for 100 steps on the embedded WBC_10 cells (shorter side 96, crop 64)."""
    run = tmp_path_factory.mktemp("agree") / "run"
    config = cfg.from_profile("quick", subset=10, base_width=8, depth=2, min_steps=100, export_embeddings=False)
    train.fit(config, run, progress=False, log=lambda s: None)
    return run


def _predictions(out) -> dict[str, tuple[str, np.ndarray]]:
    """File name -> (predicted class, class probabilities) from an evaluation's predictions.csv."""
    return {row["path"].split("/")[-1]: (row["predicted_class"], np.array([float(row[f"p_{c}"]) for c in WBC_CLASSES]))
            for row in csv.DictReader((out / "predictions.csv").open())}


def test_full_size_and_prepared_images_get_the_same_predictions(model, originals, tmp_path):
    prepare.prepare("folders", originals, tmp_path / "prep", size=96, progress=False)
    prepped = tmp_path / "prepped"  # the prepared copies of all of them, in one class-folder set
    for f in (tmp_path / "prep" / "WBC_100").glob("*/data/*/*.jpg"):
        (prepped / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, prepped / f.parent.name / f.name)
    direct = evaluate.evaluate(model, originals, tmp_path / "a")
    prepared = evaluate.evaluate(model, prepped, tmp_path / "b")
    a, b = _predictions(tmp_path / "a"), _predictions(tmp_path / "b")
    assert len(a) == len(b) == 5 * PER_CLASS and set(a) == set(b)
    agree = np.mean([a[k][0] == b[k][0] for k in a])
    assert agree >= 0.99, f"predictions agree on {agree:.1%} of images"
    assert abs(direct["balanced_accuracy"] - prepared["balanced_accuracy"]) <= 0.02
    assert direct["balanced_accuracy"] > 0.4  # a model that tells the classes apart (chance: 0.2)
    probs_a, probs_b = np.stack([a[k][1] for k in sorted(a)]), np.stack([b[k][1] for k in sorted(a)])
    assert probs_a.std(0).max() > 1e-3  # the model's answers depend on the image: the comparison means something
    assert np.abs(probs_a - probs_b).max() < 1e-3  # and both paths give it the same answers, not just classes
