"""``wbc prepare``: public layouts in, the course layout out; nested subsets, masks, refusals, determinism."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_or_skip, write_image, write_mask
from wbclib import WBC_CLASSES, WBC_SUBSETS, WbcError
from wbclib.cli import main
from wbclib.data import prepare, readers
from wbclib.data.readers import DatasetError

PBC = "PBC_dataset_normal_DIB"


def run(source, from_dir, out, **kwargs) -> dict:
    return prepare.prepare(source, from_dir, out, progress=False, **kwargs)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def names(folder: Path) -> set[str]:
    """'<Class>/<file stem>' of every file below ``folder``."""
    return {f"{p.parent.name}/{p.stem}" for p in folder.rglob("*") if p.is_file()}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


#: PBC's upstream folders and the prefixes of their file names (three classes outside the course's five).
PBC_PREFIXES = {"basophil": "BA", "eosinophil": "EO", "lymphocyte": "LY", "monocyte": "MO", "neutrophil": "SNE",
                "erythroblast": "ERB", "ig": "MY", "platelet": "PLATELET"}


def pbc_tree(tmp_path: Path, per_class: int = 4, others: int = 0, size=(60, 50)) -> Path:
    """A hand-made PBC release: ``PBC_dataset_normal_DIB/<lower-case class>/<PREFIX>_<n>.jpg`` and a
    PROVENANCE.md; ``per_class`` images in each of the five classes, ``others`` in each of the other three."""
    dst = tmp_path / "pbc"
    for k, (folder, prefix) in enumerate(PBC_PREFIXES.items()):
        n = per_class if readers.canonical_class(folder, WBC_CLASSES) is not None else others
        for i in range(n):
            write_image(dst / PBC / folder / f"{prefix}_{1000 + 37 * i}.jpg", size, seed=100 * k + i)
    (dst / "PROVENANCE.md").write_text("# PBC dataset (hand-made stand-in for the tests)\n")
    return dst


def segwbc_arranged(root: Path, counts=(2, 3, 4, 5, 6), size=(40, 40)) -> Path:
    """segwbc arranged in class folders: ``dataset2/{data,mask}/<Class>/NNN.bmp|png``, masks holding the
    nucleus (255), the cytoplasm (128) and stray background values; the cell is pixel > 64."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[4:-4, 4:-4], mask[12:-12, 12:-12], mask[0, 0] = 128, 255, 50
    n = 0
    for cls, k in zip(WBC_CLASSES, counts):
        for _ in range(k):
            n += 1
            write_image(root / "dataset2" / "data" / cls / f"{n:03d}.bmp", size, seed=500 + n, fmt="BMP")
            (root / "dataset2" / "mask" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, "L").save(root / "dataset2" / "mask" / cls / f"{n:03d}.png")
    return root


def folders_tree(root: Path, counts=(3, 3, 3, 3, 3), size=(40, 40), masks: bool = True) -> Path:
    """``data/<Class>`` (+ a mask for each class's first image in ``mask/<Class>``), or plain class folders."""
    for c, (cls, n) in enumerate(zip(WBC_CLASSES, counts)):
        for i in range(n):
            write_image(root / ("data" if masks else "") / cls / f"{cls[:2]}{i}.png", size, seed=c * 50 + i)
        if masks and n:
            write_mask(root / "mask" / cls / f"{cls[:2]}0.png", size, box=(5, 5, size[0] - 5, size[1] - 5))
    return root


# ------------------------------------------------------------------------------------------- the full PBC


@pytest.fixture(scope="module")
def pbc_full(tmp_path_factory):
    src = shared_or_skip("pbc")
    out = tmp_path_factory.mktemp("pbc-full") / "course"
    return out, run("pbc", src, out, size=48)


@pytest.mark.slow
def test_pbc_counts_and_left_out_classes(pbc_full):
    out, summary = pbc_full
    expected = {"WBC_1/train": 3, "WBC_10/train": 32, "WBC_50/train": 160, "WBC_100/train": 320, "WBC_100/val": 80}
    for key, per_class in expected.items():
        assert {c: v["images"] for c, v in summary["counts"][key].items()} == dict.fromkeys(WBC_CLASSES, per_class)
    assert summary["left_out"] == {"erythroblast": 12, "ig": 12, "platelet": 12}
    info = manifest(out)
    assert info["left_out"] == summary["left_out"] and info["skipped"] == []
    assert info["sources"][0]["license"] == "CC BY 4.0" and "Data in Brief" in info["sources"][0]["citation"]
    assert (out / "licenses" / "pbc-PROVENANCE.md").is_file()
    assert "NOT the course data" in (out / "PROVENANCE.md").read_text()
    for n in WBC_SUBSETS:  # the course readers take it as it is
        assert len(readers.wbc_records(out, n, "train")) == 5 * expected[f"WBC_{n}/train"]
        assert len(readers.wbc_records(out, n, "val")) == 400
    with Image.open(next((out / "WBC_100/val/data/Monocyte").iterdir())) as img:
        assert min(img.size) == 48


@pytest.fixture(scope="module")
def pbc_small(tmp_path_factory):
    """A hand-made PBC of 25 images per class (and 3 in each class outside the five), prepared at 48 px:
    per class 5 validation images (20 %) and 20 training images, of which WBC_1, WBC_10, WBC_50 take 1, 2, 10."""
    src = pbc_tree(tmp_path_factory.mktemp("pbc-small"), per_class=25, others=3)
    out = tmp_path_factory.mktemp("pbc-small-out") / "course"
    return src, out, run("pbc", src, out, size=48)


def test_pbc_counts_and_left_out_classes_on_a_hand_made_tree(pbc_small):
    src, out, summary = pbc_small
    expected = {"WBC_1/train": 1, "WBC_10/train": 2, "WBC_50/train": 10, "WBC_100/train": 20, "WBC_100/val": 5}
    for key, per_class in expected.items():
        assert {c: v["images"] for c, v in summary["counts"][key].items()} == dict.fromkeys(WBC_CLASSES, per_class)
    assert summary["left_out"] == {"erythroblast": 3, "ig": 3, "platelet": 3}
    for n in WBC_SUBSETS:  # the course readers take it as it is
        assert len(readers.wbc_records(out, n, "train")) == 5 * expected[f"WBC_{n}/train"]
    with Image.open(next((out / "WBC_100/val/data/Monocyte").iterdir())) as img:
        assert img.size == (58, 48)  # 60 x 50, shorter side to 48, aspect kept
    assert (out / "licenses" / "pbc-PROVENANCE.md").read_text() == (src / "PROVENANCE.md").read_text()


def test_pbc_subsets_are_nested_and_val_is_disjoint(pbc_small):
    src, out, _ = pbc_small
    subsets = {n: names(out / f"WBC_{n}/train/data") for n in WBC_SUBSETS}
    for small, large in itertools.pairwise(WBC_SUBSETS):
        assert subsets[small] < subsets[large]
    for name in subsets[1]:
        cls, stem = name.split("/")
        assert (out / f"WBC_1/train/data/{cls}/{stem}.jpg").read_bytes() == \
            (out / f"WBC_100/train/data/{cls}/{stem}.jpg").read_bytes()
    val = names(out / "WBC_100/val/data")
    assert len(val) == 25 and not val & subsets[100]
    upstream = {f"{p.parent.name}/{p.stem}".lower() for p in (src / PBC).rglob("*.jpg")}
    assert {n.lower() for n in val | subsets[100]} <= upstream  # names and classes kept
    assert len(upstream) == 5 * 25 + 3 * 3 and len(val | subsets[100]) == 125


def test_manifest_hashes_every_file(pbc_small):
    _, out, _ = pbc_small
    files = manifest(out)["files"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"manifest.json"}
    assert all(hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha for rel, sha in files.items())
    assert "**pbc**" in (out / "LICENSE.md").read_text() and "CC BY 4.0" in (out / "LICENSE.md").read_text()
    info = manifest(out)
    assert info["sources"][0]["license"] == "CC BY 4.0" and "Data in Brief" in info["sources"][0]["citation"]
    assert "NOT the course data" in (out / "PROVENANCE.md").read_text() and info["skipped"] == []


# -------------------------------------------------------------------------------- determinism, refusals


def test_same_seed_same_tree_other_seed_other_split(tmp_path):
    src = pbc_tree(tmp_path, per_class=10, others=2)
    before = snapshot(src)
    run("pbc", src, tmp_path / "a")
    run("pbc", src, tmp_path / "b")
    run("pbc", src, tmp_path / "c", seed=1)
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert manifest(tmp_path / "a")["files"] != manifest(tmp_path / "c")["files"]
    assert names(tmp_path / "a/WBC_100/val") != names(tmp_path / "c/WBC_100/val")
    run("pbc", src / PBC, tmp_path / "d")  # the upstream folder itself is accepted too
    same = {k: v for k, v in manifest(tmp_path / "a")["files"].items() if k != "PROVENANCE.md"}  # names the path
    assert same.items() <= manifest(tmp_path / "d")["files"].items()
    assert snapshot(src) == before  # nothing written into the source
    for f in (tmp_path / "a/WBC_100").rglob("*.jpg"):  # without --size a JPEG is copied as it is
        assert f.read_bytes() == (src / PBC / f.parent.name.lower() / f.name).read_bytes()


def test_refusals_name_the_path_and_write_nothing(tmp_path):
    src = pbc_tree(tmp_path, per_class=2)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    masks = folders_tree(tmp_path / "masks")
    cases = [
        (dict(source="pbc", from_dir=src, out=busy), "not empty", busy),
        (dict(source="pbc", from_dir=src, out=src / "course"), "inside the source", src),
        (dict(source="pbc", from_dir=src, out=masks / "x" / "course", masked=("folders", masks)),
         "inside the source", masks),
        (dict(source="pbc", from_dir=tmp_path / "absent", out=tmp_path / "o"), "not found", tmp_path / "absent"),
        (dict(source="pbc", from_dir=busy, out=tmp_path / "o"), "expected layout (pbc)", busy),
        (dict(source="raabin", from_dir=src, out=tmp_path / "o"), "no Train folder", src),
        (dict(source="segwbc", from_dir=src, out=tmp_path / "o"), "expected layout (segwbc)", src),
        (dict(source="folders", from_dir=busy, out=tmp_path / "o"), "no image found", busy),
    ]
    before = snapshot(tmp_path)
    for kwargs, words, path in cases:
        with pytest.raises(DatasetError) as err:
            run(**kwargs)
        message = str(err.value)
        assert words in message and str(path) in message and "\n" not in message, message
    assert snapshot(tmp_path) == before
    with pytest.raises(WbcError, match="already used"):
        run("raabin", src, tmp_path / "o", external={"TestA": masks})


def test_bad_files_raise_one_error_or_are_skipped(tmp_path):
    src = pbc_tree(tmp_path, per_class=4)
    folder = src / PBC / "monocyte"
    (folder / "MO_empty.jpg").write_bytes(b"")
    good = sorted(folder.glob("*.jpg"))[-1].read_bytes()
    (folder / "MO_cut.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        run("pbc", src, out, size=32)
    message = str(err.value)
    assert "3 problem(s)" in message and "expected layout" in message and "--skip-bad" in message
    assert all(n in message for n in ("MO_empty.jpg", "MO_cut.jpg", "notes.txt"))
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    summary = run("pbc", src, out, size=32, skip_bad=True)
    assert {Path(s["path"]).name for s in manifest(out)["skipped"]} == {"MO_empty.jpg", "MO_cut.jpg", "notes.txt"}
    mono = summary["counts"]["WBC_100/train"]["Monocyte"]["images"] + \
        summary["counts"]["WBC_100/val"]["Monocyte"]["images"]
    assert mono == 4 and summary["skipped"] == 3


def test_a_failure_midway_leaves_no_trace(tmp_path, monkeypatch):
    src = folders_tree(tmp_path / "set")
    encode, calls = prepare._encode, []

    def failing(*args):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        return encode(*args)

    monkeypatch.setattr(prepare, "_encode", failing)
    with pytest.raises(OSError, match="disk full"):
        run("folders", src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


# ------------------------------------------------------------------------------------------------- masks


def test_masked_segwbc_joins_training_and_is_held_out(tmp_path):
    """Masked cells per class 2, 3, 4, 5, 6: 30 % of each class, at least 1 and at most n - 1, is held out
    (1, 1, 1, 2, 2 = 7 cells); the other 13 join training, spread so that WBC_1 has a mask in every class."""
    seg = segwbc_arranged(tmp_path / "segwbc")
    (seg / "LICENSE.source.txt").write_text("GPL-3.0 (hand-made stand-in)\n")
    (seg / "PROVENANCE.md").write_text("# segwbc (hand-made stand-in)\n")
    before = snapshot(seg)
    out = tmp_path / "out"
    summary = run("pbc", pbc_tree(tmp_path, per_class=6), out, size=32, masked=("segwbc", seg / "dataset2"))
    assert snapshot(seg) == before
    for n in WBC_SUBSETS:
        records = readers.wbc_records(out, n, "train")
        masked = [r for r in records if r.mask_path is not None]
        assert {r.label for r in masked} == set(range(5))  # every class has a mask, WBC_1 included
        for r in masked:
            assert r.mask_path.stem == r.path.stem and r.mask_path.parent.name == r.path.parent.name
            with Image.open(r.path) as img, Image.open(r.mask_path) as m:
                assert m.size == img.size and m.mode == "L"
                arr = np.asarray(m)
                assert set(np.unique(arr).tolist()) == {0, 255}
                assert arr[0, 0] == 0 and arr[m.size[1] // 2, m.size[0] // 2] == 255  # stray 50 is background
    assert all(r.mask_path is not None for r in readers.wbc_records(out, 1, "train"))
    assert not any(n.split("/")[1].startswith("segwbc-") for n in names(out / "WBC_100/val"))
    held, _ = readers.folder_records(out / "external" / "segwbc")
    assert [sum(r.label == c for r in held) for c in range(5)] == [1, 1, 1, 2, 2]
    assert all(r.mask_path is not None for r in held)
    held_names = {f"{WBC_CLASSES[r.label]}/{r.path.stem}" for r in held}
    assert not held_names & names(out / "WBC_100/train/data")
    assert sum(v["masks"] for v in summary["counts"]["WBC_100/train"].values()) == 13
    info = manifest(out)
    assert info["sources"][1]["license"] == "GPL-3.0" and "Micron" in info["sources"][1]["citation"]
    assert {"licenses/segwbc-LICENSE.source.txt", "licenses/segwbc-PROVENANCE.md"} <= set(info["files"])


def test_the_shared_segwbc_as_masked_set(tmp_path):
    """The real segwbc dataset 2 (100 cells): 31 held out (30 % of each class, at least 1), 69 train."""
    seg = shared_or_skip("segwbc") / "dataset2"
    out = tmp_path / "out"
    summary = run("pbc", pbc_tree(tmp_path, per_class=3), out, size=32, masked=("segwbc", seg))
    held, _ = readers.folder_records(out / "external" / "segwbc")
    assert len(held) == 31 and all(r.mask_path is not None for r in held)
    assert sum(v["masks"] for v in summary["counts"]["WBC_100/train"].values()) == 69
    assert {"licenses/segwbc-LICENSE.source.txt", "licenses/segwbc-PROVENANCE.md"} <= set(manifest(out)["files"])


def test_segwbc_source_attaches_its_masks(tmp_path):
    out = tmp_path / "out"
    summary = run("segwbc", shared_or_skip("segwbc") / "dataset2", out, size=48)
    train = readers.wbc_records(out, 100, "train")
    assert len(train) == sum(v["images"] for v in summary["counts"]["WBC_100/train"].values()) == 80
    assert all(r.mask_path is not None and r.path.stem.startswith("segwbc-d2-") for r in train)
    assert len(readers.wbc_records(out, 100, "val")) == 20  # 1 + 2 + 7 + 3 + 7


def _segwbc_upstream(root: Path) -> Path:
    """Two tiny 'Dataset <n>' folders with NNN.bmp + NNN.png and their label CSVs (CRLF, like upstream)."""
    labels = {1: [1, 2, 3, 4, 5, 1], 2: [1, 4, 3, 2, 5, 2]}
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35], mask[15:25, 15:25], mask[0, 0], mask[37, 37] = 128, 255, 7, 50  # strays: background
    for d, lab in labels.items():
        rows = ["image ID,class label" if d == 1 else "image ID,class"]
        for i, label in enumerate(lab, 1):
            write_image(root / f"Dataset {d}" / f"{i:03d}.bmp", (40, 40), seed=10 * d + i)
            Image.fromarray(mask, "L").save(root / f"Dataset {d}" / f"{i:03d}.png")
            rows.append(f"{i},{label}")
        (root / f"Class Labels of Dataset {d}.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return root


def test_segwbc_upstream_layout(tmp_path):
    out = tmp_path / "out"
    summary = run("segwbc", _segwbc_upstream(tmp_path / "segwbc"), out)
    written = names(out / "WBC_100/train/data") | names(out / "WBC_100/val/data")
    assert {n.split("/")[1] for n in written} == {f"segwbc-d{d}-{i:03d}" for d in (1, 2) for i in range(1, 7)}
    assert "Neutrophil/segwbc-d1-001" in written and "Neutrophil/segwbc-d2-001" in written
    assert "Basophil/segwbc-d1-005" in written and "Eosinophil/segwbc-d2-002" in written
    assert summary["counts"]["WBC_100/val"]["Neutrophil"]["images"] == 1
    expected = np.zeros((40, 40), np.uint8)
    expected[5:35, 5:35] = 255  # nucleus and cytoplasm: pixel > 64
    for m in (out / "WBC_100/train/mask").rglob("*.png"):
        assert np.array_equal(np.asarray(Image.open(m)), expected)
        assert (out / "WBC_100/train/data" / m.parent.name / f"{m.stem}.jpg").is_file()


def test_size_keeps_aspect_and_masks_follow(tmp_path):
    out = tmp_path / "out"
    run("folders", folders_tree(tmp_path / "set", size=(90, 60)), out, size=30)
    images = list((out / "WBC_100").rglob("data/*/*"))
    assert images and all(p.suffix == ".jpg" and Image.open(p).size == (45, 30) for p in images)
    masks = list((out / "WBC_100/train/mask").rglob("*.png"))
    assert len(masks) == 5
    for m in masks:
        arr = np.asarray(Image.open(m))
        assert arr.shape == (30, 45) and set(np.unique(arr).tolist()) == {0, 255}
        assert Image.open(out / "WBC_100/train/data" / m.parent.name / f"{m.stem}.jpg").size == (45, 30)


def test_balanced_and_per_class_caps(tmp_path):
    src = folders_tree(tmp_path / "set", counts=(3, 6, 9, 9, 9), masks=False)
    totals = {}
    for name, kwargs in (("bal", {"balanced": True}), ("cap", {"per_class": 5}), ("all", {})):
        counts = run("folders", src, tmp_path / name, size=16, **kwargs)["counts"]
        totals[name] = [counts["WBC_100/train"][c]["images"] + counts["WBC_100/val"][c]["images"]
                        for c in WBC_CLASSES]
    assert totals == {"bal": [3] * 5, "cap": [3, 5, 5, 5, 5], "all": [3, 6, 9, 9, 9]}


# ------------------------------------------------------------------------------- other sources and sets


def test_raabin_release_with_test_sets(tmp_path):
    root = tmp_path / "Raabin-WBC"
    for split, n in (("Train", 5), ("testa", 2), ("TestB", 1)):
        for c, cls in enumerate(WBC_CLASSES):
            for i in range(n):
                write_image(root / split / cls.lower() / f"{split}_{c}_{i}.jpg", (50, 50), seed=100 * c + i)
    out = tmp_path / "out"
    summary = run("raabin", root, out, size=32)
    assert {c: v["images"] for c, v in summary["counts"]["WBC_100/train"].items()} == dict.fromkeys(WBC_CLASSES, 4)
    assert {c: v["images"] for c, v in summary["counts"]["WBC_100/val"].items()} == dict.fromkeys(WBC_CLASSES, 1)
    test_a, _ = readers.folder_records(out / "external" / "TestA")
    test_b, _ = readers.folder_records(out / "external" / "TestB")
    assert len(test_a) == 10 and len(test_b) == 5
    assert sorted(p.name for p in (out / "external" / "TestA").iterdir()) == list(WBC_CLASSES)
    assert manifest(out)["sources"][0]["kind"] == "raabin"


def test_external_sets_keep_their_structure(tmp_path):
    out = tmp_path / "out"
    src = folders_tree(tmp_path / "pool")
    run("folders", src, out, external={"lab": folders_tree(tmp_path / "lab"),
                                       "plain": folders_tree(tmp_path / "plain", masks=False)})
    lab, lab_dir = readers.folder_records(out / "external" / "lab")
    plain, plain_dir = readers.folder_records(out / "external" / "plain")
    assert lab_dir.name == "data" and sum(r.mask_path is not None for r in lab) == 5 and len(lab) == 15
    assert plain_dir == out / "external" / "plain" and len(plain) == 15
    assert [s["role"] for s in manifest(out)["sources"]] == ["main", "external", "external"]


def test_tiles_from_smear_photographs(tmp_path):
    smears = tmp_path / "smears" / "JPEGImages"
    smears.mkdir(parents=True)
    yy, xx = np.mgrid[0:480, 0:640]
    photos = []
    for k in range(3):  # smooth 640 x 480 photographs (JPEG keeps them close to their pixels)
        rgb = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy + 80 * k) % 256], -1).astype(np.uint8)
        photos.append(smears / f"smear{k}.jpg")
        Image.fromarray(rgb, "RGB").save(photos[-1], quality=95)
    pool = folders_tree(tmp_path / "pool", masks=False)
    out = tmp_path / "out"
    run("folders", pool, out, tiles=tmp_path / "smears")
    tiles = sorted((out / "pRCC_nolabel").iterdir())
    assert [t.name for t in tiles] == [f"{p.stem}_t{k}.jpg" for p in photos for k in (0, 1)]
    assert all(Image.open(t).size == (320, 320) for t in tiles)
    photo = np.asarray(Image.open(photos[0]).convert("RGB"), dtype=float)  # 640 x 480: two centred squares
    tile = np.asarray(Image.open(tiles[1]), dtype=float)
    assert np.abs(tile - photo[80:400, 320:640]).mean() < 8
    assert len(readers.prcc_records(out, "train")) + len(readers.prcc_records(out, "val")) == 6
    small = tmp_path / "small"
    run("folders", pool, small, tiles=tmp_path / "smears", size=64, tiles_per_image=1)
    assert [Image.open(t).size for t in sorted((small / "pRCC_nolabel").iterdir())] == [(64, 64)] * 3


def test_tile_boxes():
    assert prepare.tile_boxes(640, 480) == [(0, 80, 320, 400), (320, 80, 640, 400)]
    assert prepare.tile_boxes(1000, 300) == [(50, 0, 350, 300), (350, 0, 650, 300), (650, 0, 950, 300)]
    assert prepare.tile_boxes(1, 10) == []


def test_cli_prepare(tmp_path, capsys):
    src, out = folders_tree(tmp_path / "set"), tmp_path / "out"
    args = ["prepare", "folders", "--from", str(src), "--out", str(out), "--size", "32", "--seed", "3"]
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WBC_1/train" in done.stdout and str(out / "manifest.json") in done.stdout
    assert manifest(out)["arguments"]["seed"] == 3
    capsys.readouterr()
    assert main(args) == 2  # the same command again, in this process: the folder is no longer empty
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wbc: error:") and str(out) in lines[0]


@pytest.mark.slow
def test_prepared_pbc_trains_and_its_val_folder_evaluates(tmp_path):
    """`wbc prepare pbc` -> `wbc train --data-root` -> `wbc evaluate` on the prepared val folder, as a user would."""
    src, out = pbc_tree(tmp_path, per_class=6, others=2), tmp_path / "pbc-course"

    def wbc(*args):
        return subprocess.run([sys.executable, "-m", "wbclib.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600)

    done = wbc("prepare", "pbc", "--from", src, "--out", out, "--size", "40", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "erythroblast 2" in done.stdout  # the non-WBC classes are named in the summary
    tiny = ["--set", "input_size=32", "--set", "resize=none", "--set", "depth=2", "--set", "base_width=4",
            "--set", "min_steps=0"]
    done = wbc("train", "--data-root", out, "--subset", 100, "--epochs", 1, "--run-dir", tmp_path / "run",
               "--no-progress", *tiny)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["n"] == 5
    done = wbc("evaluate", "--checkpoint", tmp_path / "run", "--data", out / "WBC_100" / "val", "--out",
               tmp_path / "eval", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 5


def test_pbc_source_needs_pbcs_own_folder(tmp_path):
    """A class-folder set that is not PBC is refused as `pbc` (its manifest would credit PBC's license)."""
    src = folders_tree(tmp_path / "other", masks=False)
    with pytest.raises(DatasetError, match="use the 'folders' source"):
        run("pbc", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
