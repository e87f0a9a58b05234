"""Shared fixtures: tiny data trees written in a temporary folder, and the real sets in ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
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


#: Config overrides that make every run of a study tiny (seconds each).
TINY = ["--set", "epochs=1", "--set", "input_size=32", "--set", "resize=48", "--set", "base_width=4", "--set",
        "depth=2", "--set", "batch_size=4", "--set", "min_steps=0"]


def wbc(args, tmp_path, timeout=900):
    """The ``wbc`` command in a subprocess, with its synthetic-data cache in ``tmp_path``."""
    env = {**os.environ, "WBC_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "wbclib.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory):
    """The whole chain at a tiny size, once per session: every run of the grid on the synthetic stand-in, an
    external set, the analysis, the walkthrough (20 steps) and the book, built in its own folder.
    Returns (tmp folder, book root, the finished process)."""
    from wbclib.data import synth

    tmp_path = tmp_path_factory.mktemp("tiny-study")
    book = tmp_path / "book"
    external = tmp_path / "external"  # any class-folder set: here a second synthetic validation set
    synth.generate(tmp_path / "other", scale=0.003, seed=1, progress=False)
    (tmp_path / "other" / "WBC_100" / "val" / "data").rename(external)
    p = wbc(["study", "--data", "synthetic", "--runs-dir", str(tmp_path / "runs"), "--book-root", str(book),
             "--set", "synthetic_scale=0.003", "--external", str(external), "--walkthrough-steps", "20", *TINY],
            tmp_path, timeout=1500)
    return tmp_path, book, p


# -- killing a training run and resuming it ----------------------------------------------------------------------

class Killed(Exception):
    """Raised from a run's log to stop it at a chosen line, as a kill would (after what that line reports)."""


def killed_at(prefix: str):
    """A log function that kills the run at its first line starting with ``prefix`` (e.g. ``"epoch 2/"``: after
    epoch 2's checkpoint and history were written)."""
    def log(line: str) -> None:
        if line.startswith(prefix):
            raise Killed
    return log


def comparable(run_dir: Path):
    """What a run leaves that must not depend on interruptions: its history (but wall times), its metrics (but
    timings and provenance) and its exported embeddings."""
    import json

    import pandas as pd

    h = pd.read_csv(run_dir / "history.csv").drop(columns="seconds")
    m = json.loads((run_dir / "metrics.json").read_text())
    for k in ("wall_time_s", "timing_s", "run"):
        m.pop(k)
    with np.load(run_dir / "embeddings.npz") as z:
        emb = {k: z[k] for k in z.files}
    return h, m, emb


def assert_same_outcome(full: Path, resumed: Path) -> None:
    """Two runs of one config ended exactly alike: the same history, metrics and embeddings."""
    import pandas as pd

    (hf, mf, ef), (hr, mr, er) = comparable(full), comparable(resumed)
    pd.testing.assert_frame_equal(hf, hr, check_exact=True)
    assert mf == mr
    assert ef.keys() == er.keys() and all(np.array_equal(ef[k], er[k]) for k in ef)
