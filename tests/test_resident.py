"""Decoded data resident on the device (``resident: on``), tested on the CPU: the batches a run trains on, their
randomness, and a killed and resumed run that ends exactly where an uninterrupted one ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from conftest import Killed, assert_same_outcome, killed_at, make_wbc_tree
from wbclib import WBC_CLASSES
from wbclib.core import config as cfg
from wbclib.data import datasets
from wbclib.training import resident, runs, runtime, train

CPU = torch.device("cpu")


def keyed_tree(root: Path, per_class: int = 2, size: int = 48) -> Path:
    """Lossless (PNG) WBC images whose mask is exactly 'red channel >= 128', so that a mask that followed its
    image's every geometric step can be recognised in any crop; a validation set of JPEGs beside them."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(WBC_CLASSES):
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for kind, img in (("data", Image.fromarray(arr)), ("mask", Image.fromarray(
                    np.where(arr[..., 0] >= 128, 255, 0).astype(np.uint8)))):
                if kind == "mask" and i:
                    continue  # one masked image per class
                path = root / f"WBC_100/train/{kind}/{cls}/img_{c}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
    make_wbc_tree(root / "jpeg", per_class=1, val_per_class=1, size=(size, size))
    (root / "jpeg" / "WBC_100" / "val").rename(root / "WBC_100" / "val")
    return root


def config_for(root: Path, **kw) -> cfg.RunConfig:
    base = dict(data_root=str(root), input_size=32, resize=None, base_width=4, depth=2, batch_size=4, epochs=3,
                lr=1e-2, min_steps=0, color_jitter=0.0, rot90=True, resident="on", device="cpu")
    return cfg.from_profile("quick", **{**base, **kw})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return keyed_tree(tmp_path_factory.mktemp("data") / "root")


def batches(config: cfg.RunConfig, root: Path, seed: int, epochs: int = 1) -> list[dict]:
    splits = datasets.build_splits(config, root)
    generator = torch.Generator()
    train_batches, _ = resident.loaders(splits, config, 4, CPU, generator, None, 0, lambda line: None)
    out = []
    for epoch in range(1, epochs + 1):
        generator.manual_seed(train.epoch_seed(seed, epoch))  # what the trainer does at each epoch's start
        out += list(train_batches)
    return out


def test_batches_are_the_cpu_loaders_dicts_and_masks_follow_their_image_exactly(root):
    config = config_for(root)
    got = batches(config, root, seed=0, epochs=2)
    assert len(got) == 2 * 3  # 10 images at batch 4
    masked_seen = 0
    for b in got:
        n = len(b["label"])
        assert b["image"].shape == (n, 3, 32, 32) and b["image"].dtype == torch.float32
        assert b["image"].is_contiguous(memory_format=torch.channels_last)
        assert 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
        assert b["mask"].shape == (n, 1, 32, 32) and b["mask"].dtype == torch.uint8
        assert set(b["mask"].unique().tolist()) <= {0, 1}
        assert b["label"].dtype == torch.long and b["has_mask"].dtype == torch.bool and len(b["path"]) == n
        has = b["has_mask"]
        # the mask is "red >= 128" of the very pixels the crop shows, after every flip and transpose
        expected = (b["image"][:, :1] >= 128 / 255).to(torch.uint8)
        assert torch.equal(b["mask"][has], expected[has])
        assert not b["mask"][~has].any()
        masked_seen += int(has.sum())
    assert masked_seen == 2 * 5


def symmetry_of(crop: np.ndarray, image: np.ndarray) -> tuple[int, bool] | None:
    """Which of the eight symmetries of the square (rotation k, flipped) turns some window of ``image`` into
    ``crop`` (H, W, C arrays)."""
    s = crop.shape[0]
    for k in range(4):
        for flipped in (False, True):
            t = np.rot90(crop, -k)
            t = t[:, ::-1] if flipped else t
            for y in range(image.shape[0] - s + 1):
                for x in range(image.shape[1] - s + 1):
                    if np.array_equal(image[y:y + s, x:x + s], t):
                        return k, flipped
    return None


def test_crops_are_windows_of_their_image_under_all_eight_symmetries_or_the_four_flips(root):
    seen = {}
    for rot90 in (True, False):
        config = config_for(root, input_size=16)
        config = config.replace(rot90=rot90)
        splits = datasets.build_splits(config, root)
        images = {str(r.path.relative_to(root)): np.array(Image.open(r.path)) for r in splits.train.records}
        found = set()
        for b in batches(config, root, seed=3, epochs=4):
            for img, path in zip(b["image"], b["path"]):
                crop = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                sym = symmetry_of(crop, images[path])
                assert sym is not None, f"a crop of {path} is no window of it"
                found.add(sym)
        seen[rot90] = found
    assert len(seen[True]) == 8
    assert seen[False] == {(0, False), (2, False), (0, True), (2, True)}  # flips only: no quarter turn


def test_same_seed_same_batches_other_seed_other_batches(root):
    config = config_for(root, color_jitter=0.2, hue_jitter=0.05)
    a, b, c = (batches(config, root, seed) for seed in (0, 0, 1))
    assert all(torch.equal(x["image"], y["image"]) and x["path"] == y["path"] for x, y in zip(a, b))
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_colour_jitter_is_torchvisions_per_image():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    gen = torch.Generator().manual_seed(5)
    out = resident.colour_jitter(x, 0.0, 0.2, gen)  # hue only: the first draw is each image's shift
    shifts = -0.2 + 0.4 * torch.rand(6, generator=torch.Generator().manual_seed(5))
    for i in range(6):
        assert torch.allclose(out[i], F.adjust_hue(x[i], float(shifts[i])), atol=1e-5)
    gen = torch.Generator().manual_seed(6)
    out = resident.colour_jitter(x, 0.3, 0.0, gen)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1 and not torch.equal(out, x)
    one = resident.colour_jitter(x[:1].expand(64, -1, -1, -1), 0.3, 0.0, torch.Generator().manual_seed(7))
    assert len({round(float(v), 4) for v in one.mean(dim=(1, 2, 3))}) > 32  # each image its own factors


def test_validation_batches_equal_the_cpu_loaders(root):
    config = config_for(root)
    splits = datasets.build_splits(config, root)
    _, val = resident.loaders(splits, config, 3, CPU, torch.Generator(), None, 0, lambda line: None)
    rt = runtime.Runtime.from_config(config)
    cpu = list(runtime.make_loader(splits.val, config.replace(batch_size=3), rt))
    mine = list(val)
    assert len(mine) == len(cpu) == 2
    for a, b in zip(mine, cpu):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["path"] == list(b["path"]) and torch.equal(a["label"], b["label"])


def test_cpu_only_switches_and_auto_on_a_cpu_keep_the_cpu_loader(root):
    splits = datasets.build_splits(config_for(root), root)
    lines = []
    assert resident.loaders(splits, config_for(root, blur=1.0, zoom=[0.9, 1.1]), 4, CPU, torch.Generator(), None,
                            0, lines.append) is None
    assert lines == ["resident: off, zoom, blur augment on the CPU only; the CPU loader serves this run"]
    assert resident.loaders(splits, config_for(root, resident="auto"), 4, CPU, torch.Generator(), None, 0,
                            lines.append) is None and len(lines) == 1
    with pytest.raises(cfg.ConfigError, match="resident must be one of"):
        config_for(root, resident="yes")


def test_killed_and_resumed_resident_run_ends_exactly_like_an_uninterrupted_one(root, tmp_path):
    config = config_for(root, color_jitter=0.1)
    lines = []
    train.fit(config, tmp_path / "full", progress=False, log=lines.append)
    assert any(s.startswith("resident: 10 training images at 48x48 and 5 validation images at 32x32") for s in lines)

    with pytest.raises(Killed):
        train.fit(config, tmp_path / "cut", progress=False, log=killed_at("epoch 2/"))
    assert runs.load_checkpoint(tmp_path / "cut")["epoch"] == 2
    train.fit(config, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    assert_same_outcome(tmp_path / "full", tmp_path / "cut")
    wf, wc = (runs.load_checkpoint(tmp_path / d)["model"] for d in ("full", "cut"))
    assert all(torch.equal(wf[k], wc[k]) for k in wf)
