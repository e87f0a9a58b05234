"""Tests of the synthetic stand-in for the course data (wbclib.data.synth)."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbclib import CAM16_CLASSES, WBC_CLASSES, WbcError
from wbclib.data import synth

SCALE = 0.01
SUBSETS = ("WBC_1", "WBC_10", "WBC_50", "WBC_100")
PCT = {"WBC_1": 1, "WBC_10": 10, "WBC_50": 50, "WBC_100": 100}
CAM = "CAM16_100cls_10mask"

# The course table (shared/reference/course-data.md).
TRAIN = dict(zip(WBC_CLASSES, (176, 618, 2015, 466, 5172)))
VAL = dict(zip(WBC_CLASSES, (36, 126, 412, 95, 1059)))
CAM_COUNTS = {"train": (379, 378), "val": (54, 54), "test": (108, 108)}


def expected_counts(scale: float) -> dict:
    """The documented formula, written out independently of the implementation."""
    exp = {}
    for c in WBC_CLASSES:
        n100 = max(1, round(TRAIN[c] * scale))
        for s in SUBSETS:
            n = n100 if s == "WBC_100" else max(1, n100 * PCT[s] // 100)
            exp[(s, "train", c)] = (n, n // 10)
        exp[("WBC_100", "val", c)] = (max(1, round(VAL[c] * scale)), 0)
    for split, ns in CAM_COUNTS.items():
        for c, n in zip(CAM16_CLASSES, ns):
            k = max(1, round(n * scale))
            exp[(CAM, split, c)] = (k, max(1, k // 10) if split == "train" else 0)
    return exp


def jpgs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.glob("*.jpg")} if folder.is_dir() else {}


def all_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, synth.generate(root, scale=SCALE, seed=0, progress=False)


def test_planned_counts_reproduce_the_course_table():
    counts = synth.planned_counts(1.0)
    table = {  # WBC_<pct>: (data, mask) per class, from the course specification
        "WBC_100": [(176, 17), (618, 61), (2015, 201), (466, 46), (5172, 517)],
        "WBC_50": [(88, 8), (309, 30), (1007, 100), (233, 23), (2586, 258)],
        "WBC_10": [(17, 1), (61, 6), (201, 20), (46, 4), (517, 51)],
        "WBC_1": [(1, 0), (6, 0), (20, 2), (4, 0), (51, 5)],
    }
    for subset, rows in table.items():
        got = [(counts[subset]["train"][c]["data"], counts[subset]["train"][c]["mask"]) for c in WBC_CLASSES]
        assert got == rows, subset
    assert sum(v["data"] for v in counts["WBC_100"]["val"].values()) == 1728
    assert counts[CAM]["train"]["normal"] == {"data": 379, "mask": 37}
    assert counts[CAM]["train"]["tumor"] == {"data": 378, "mask": 37}
    assert counts[CAM]["test"]["tumor"]["data"] == 108
    assert counts["pRCC_nolabel"] == {"data": 1419, "side": 2000}
    for key, (n, m) in expected_counts(0.37).items():
        got = synth.planned_counts(0.37)[key[0]][key[1]][key[2]]
        assert (got["data"], got["mask"]) == (n, m), key


def test_layout_and_counts(tree):
    root, info = tree
    assert info["generator"] == "wbclib.synth" and info["version"] == 1
    assert info["scale"] == SCALE and info["seed"] == 0
    assert json.loads((root / "SYNTHETIC.json").read_text()) == info
    assert not (root / ".synth-incomplete").exists()
    for (ds, split, c), (n, m) in expected_counts(SCALE).items():
        assert len(jpgs(root / ds / split / "data" / c)) == n, (ds, split, c)
        assert len(jpgs(root / ds / split / "mask" / c)) == m, (ds, split, c)
        assert info["counts"][ds][split][c] == {"data": n, "mask": m}
        if split == "train":
            assert (root / ds / split / "mask" / c).is_dir()  # present even when empty
    for s in SUBSETS[:-1]:
        assert not (root / s / "val").exists()
    assert not (root / "WBC_100" / "val" / "mask").exists()
    for split in ("val", "test"):
        assert not (root / CAM / split / "mask").exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([*SUBSETS, CAM, "pRCC_nolabel", "SYNTHETIC.json"])
    # pRCC: tiles in subfolders (found recursively), Raabin-like WBC names
    tiles = sorted((root / "pRCC_nolabel").rglob("*.jpg"))
    assert len(tiles) == max(2, round(1419 * SCALE)) == info["counts"]["pRCC_nolabel"]["data"]
    assert not list((root / "pRCC_nolabel").glob("*.jpg"))
    assert all(re.fullmatch(r"\d+_\d+_2000\.jpg", p.name) for p in tiles)
    assert len({p.name for p in tiles}) == len(tiles)
    names = [
        p.name
        for c in WBC_CLASSES
        for sub in ("train", "val")
        for p in (root / "WBC_100" / sub / "data" / c).glob("*.jpg")
    ]
    assert all(re.fullmatch(r"20\d{6}_\d{6}_\d\.jpg", n) for n in names)
    assert len(set(names)) == len(names)  # unique across classes and splits


def test_subsets_are_nested_with_identical_bytes(tree):
    root, _ = tree
    for c in WBC_CLASSES:
        for kind in ("data", "mask"):
            sets = [jpgs(root / s / "train" / kind / c) for s in SUBSETS]
            for small, big in pairwise(sets):
                assert set(small) <= set(big), (c, kind)
                for name, p in small.items():
                    assert p.read_bytes() == big[name].read_bytes()
        # the validation set is not part of the training subsets
        val = set(jpgs(root / "WBC_100" / "val" / "data" / c))
        assert not val & set(jpgs(root / "WBC_100" / "train" / "data" / c))


def test_every_mask_has_its_image(tree):
    root, _ = tree
    masks = list(root.glob("*/train/mask/*/*.jpg"))
    assert masks
    for m in masks:
        assert (m.parent.parent.parent / "data" / m.parent.name / m.name).is_file(), m


def test_image_sizes_and_modes(tree):
    root, info = tree
    for p in root.glob("WBC_100/*/data/*/*.jpg"):
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (575, 575) and im.mode == "RGB", p
    for p in root.glob(f"{CAM}/*/data/*/*.jpg"):
        with Image.open(p) as im:
            assert im.size == (384, 384) and im.mode == "RGB", p
    side = info["counts"]["pRCC_nolabel"]["side"]
    assert side == 576
    for p in (root / "pRCC_nolabel").rglob("*.jpg"):
        with Image.open(p) as im:
            assert im.size == (side, side) and im.mode == "RGB", p


def _binary(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        a = np.asarray(im.convert("L"))
    grey = ((a > 40) & (a < 215)).mean()
    assert grey < 0.02, (p, grey)  # near-binary: only JPEG ringing at the edges
    return a >= 128


def test_masks_are_binary_and_cover_the_cell(tree):
    root, _ = tree
    for p in root.glob("WBC_100/train/mask/*/*.jpg"):
        m = _binary(p)
        assert m.shape == (575, 575)
        assert m[287, 287], p  # the leukocyte is centred (jitter < its radius)
        assert 0.015 < m.mean() < 0.4, p
    for p in (root / CAM / "train" / "mask" / "normal").glob("*.jpg"):
        assert not _binary(p).any(), p
    tumor = list((root / CAM / "train" / "mask" / "tumor").glob("*.jpg"))
    assert tumor
    for p in tumor:
        m = _binary(p)
        assert m.shape == (384, 384) and 0.01 < m.mean() < 0.9, p


def test_deterministic_and_seed_dependent(tree, tmp_path):
    root, info = tree
    again = synth.generate(tmp_path / "same", scale=SCALE, seed=0, progress=False, workers=1)
    assert again == info
    a, b = all_files(root), all_files(tmp_path / "same")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes(), k
    synth.generate(tmp_path / "other", scale=SCALE, seed=1, progress=False)
    for kind in ("WBC_100/train/data/Neutrophil", f"{CAM}/test/data/tumor", "pRCC_nolabel/batch_01"):
        first = min((root / kind).glob("*.jpg"))
        other = min((tmp_path / "other" / kind).glob("*.jpg"))
        assert first.read_bytes() != other.read_bytes(), kind
    # one generator per image: an image does not depend on what else was drawn before it
    im1, m1 = synth.render_wbc("Neutrophil", np.random.default_rng([0, 1, 4, 3]))
    synth.render_wbc("Basophil", np.random.default_rng(5))
    im2, m2 = synth.render_wbc("Neutrophil", np.random.default_rng([0, 1, 4, 3]))
    assert im1.tobytes() == im2.tobytes() and m1.tobytes() == m2.tobytes()


def test_second_call_is_a_no_op(tree):
    root, info = tree
    before = {k: p.stat().st_mtime_ns for k, p in all_files(root).items()}
    assert synth.generate(root, scale=SCALE, seed=0, progress=False) == info
    after = {k: p.stat().st_mtime_ns for k, p in all_files(root).items()}
    assert after == before


def test_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(WbcError) as err:
        synth.generate(out, scale=SCALE, progress=False)
    assert "\n" not in str(err.value)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    # a folder that merely looks like the layout, without marker or sentinel, is not ours either
    (out / "notes.txt").unlink()
    (out / "WBC_100").mkdir()
    with pytest.raises(WbcError):
        synth.generate(out, scale=SCALE, progress=False)
    assert (out / "WBC_100").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WbcError):
        synth.generate(f, scale=SCALE, progress=False)
    for bad in (0, -1, float("nan"), "big"):
        with pytest.raises(WbcError):
            synth.generate(tmp_path / "new", scale=bad, progress=False)
    with pytest.raises(WbcError):
        synth.generate(tmp_path / "new", scale=SCALE, seed=-3, progress=False)


def test_interrupted_run_is_regenerated(tmp_path):
    out = tmp_path / "partial"
    (out / "WBC_100" / "train" / "data" / "Basophil").mkdir(parents=True)
    (out / "WBC_100" / "train" / "data" / "Basophil" / "junk.jpg").write_bytes(b"not a jpeg")
    (out / ".synth-incomplete").write_text("")
    info = synth.generate(out, scale=0.001, seed=0, progress=False)
    assert not (out / ".synth-incomplete").exists()
    assert not (out / "WBC_100" / "train" / "data" / "Basophil" / "junk.jpg").exists()
    assert synth.read_marker(out) == info
    # another scale replaces a finished synthetic tree of its own
    info2 = synth.generate(out, scale=0.002, seed=0, progress=False)
    assert info2["scale"] == 0.002 and synth.read_marker(out) == info2


def _cell_colour(cls: str, i: int) -> np.ndarray:
    im, mask = synth.render_wbc(cls, np.random.default_rng([123, 9, WBC_CLASSES.index(cls), i]))
    m = np.asarray(mask) > 128
    return np.asarray(im, dtype=np.float64)[m].mean(0)


def test_classes_differ_in_the_cell_region():
    # fixed seeds: deterministic, so not flaky; per-class mean colour over a few images
    means = {c: np.mean([_cell_colour(c, i) for i in range(6)], 0) for c in WBC_CLASSES}
    for i, a in enumerate(WBC_CLASSES):
        for b in WBC_CLASSES[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 10.0, (a, b, means[a], means[b])
    # and the cell differs from the background
    im, mask = synth.render_wbc("Lymphocyte", np.random.default_rng(7))
    a, m = np.asarray(im, dtype=np.float64), np.asarray(mask) > 128
    assert np.linalg.norm(a[m].mean(0) - a[~m].mean(0)) > 30


def _generate_tiny(out: str) -> dict:
    return synth.generate(out, scale=0.001, seed=0, progress=False, workers=1)


def test_concurrent_calls_generate_once(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = str(tmp_path / "shared")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        infos = list(ex.map(_generate_tiny, [out, out]))
    assert infos[0] == infos[1] == synth.read_marker(out)
    assert not (tmp_path / "shared" / ".synth-incomplete").exists()
    n = sum(v["data"] for c in ("train", "val") for v in infos[0]["counts"]["WBC_100"][c].values())
    assert len(list((tmp_path / "shared" / "WBC_100").rglob("data/*/*.jpg"))) == n
