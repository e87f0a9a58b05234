"""Shared fixtures: tiny data trees written in a temporary folder, and the real sets in ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbclib import WBC_CLASSES

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image(path: Path, size=(64, 64), seed=0, mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def write_mask(path: Path, size=(64, 64), box=(16, 16, 48, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr, "L").save(path)
    return path


def make_wbc_tree(root: Path, per_class: int = 2, val_per_class: int = 1, size=(64, 64), subsets=(100,)) -> Path:
    """WBC_<n>/train/{data,mask}/<Class> and WBC_100/val/data/<Class>, with a mask for each class's first image."""
    for n in subsets:
        for c, cls in enumerate(WBC_CLASSES):
            for i in range(per_class):
                write_image(root / f"WBC_{n}/train/data/{cls}/img_{c}_{i}.jpg", size, seed=c * 100 + i)
                if i == 0:
                    write_mask(root / f"WBC_{n}/train/mask/{cls}/img_{c}_{i}.jpg", size)
    for c, cls in enumerate(WBC_CLASSES):
        for i in range(val_per_class):
            write_image(root / f"WBC_100/val/data/{cls}/val_{c}_{i}.jpg", size, seed=1000 + c * 100 + i)
    return root


@pytest.fixture
def wbc_tree(tmp_path) -> Path:
    return make_wbc_tree(tmp_path / "root")


def shared_or_skip(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real test images not available: {path} is absent (the ../shared folder beside the checkout)")
    return path
