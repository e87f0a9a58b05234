"""``wbc prepare ebhi`` and ``wbc prepare camelyon16``: the histology sets of the pretraining chain, on small
hand-made trees (no ``../shared``), then once on the shared copies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_or_skip, write_image
from wbclib import CAM16_CLASSES, WbcError
from wbclib.data import datasets, prepare, readers, sources
from wbclib.data.readers import DatasetError

EBHI = ("Normal", "Polyp", "Low-grade IN", "High-grade IN", "Adenocarcinoma")


def run(source, from_dir, out, **kwargs) -> dict:
    return prepare.prepare(source, from_dir, out, progress=False, **kwargs)


def grey_label(path: Path, size=(32, 32), value=200, box=(4, 4, 20, 20)) -> Path:
    """A grey label like EBHI-Seg's: ``value`` inside ``box``, 0 outside, one anti-aliased pixel of 127."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    arr[0, 0] = 127  # below the threshold of 128: background
    Image.fromarray(arr, "L").save(path)
    return path


def ebhi_tree(root: Path, counts=(4, 6, 3, 5, 5), size=(32, 32)) -> Path:
    """``EBHI-SEG/<Class>/{image,label}/<name>.png`` with a PROVENANCE.md beside it."""
    for c, (cls, n) in enumerate(zip(EBHI, counts)):
        for i in range(n):
            write_image(root / "EBHI-SEG" / cls / "image" / f"GT{c}-{i:03d}.png", size, seed=10 * c + i)
            grey_label(root / "EBHI-SEG" / cls / "label" / f"GT{c}-{i:03d}.png", size)
    (root / "PROVENANCE.md").write_text("# ebhi-seg — test copy\n")
    return root


def camelyon_tree(root: Path, size=(40, 40)) -> Path:
    """Two slides' outlines and patches named by slide and corner, in the layout of the shared copy."""
    notes = {"Tumor_001": {"positive": [{"name": "a", "vertices": [[1010, 2010], [1019, 2010], [1019, 2019],
                                                                   [1010, 2019]]}],
                           "negative": [{"name": "b", "vertices": [[1012, 2012], [1013, 2012], [1013, 2013],
                                                                   [1012, 2013]]}]},
             "Tumor_004": {"positive": [], "negative": []}}
    (root / "annotations").mkdir(parents=True)
    for slide, outline in notes.items():
        (root / "annotations" / f"{slide}.json").write_text(json.dumps(outline))
    patches = root / "sample_patches_256"
    write_image(patches / "tumor" / "tumor_001_1000_2000.png", size, seed=1)
    write_image(patches / "tumor" / "tumor_001_1005_2000.png", size, seed=2)
    write_image(patches / "normal" / "tumor_004_500_600.png", size, seed=3)
    write_image(patches / "normal" / "tumor_001_5000_9000.png", size, seed=4)
    (root / "PROVENANCE.md").write_text("# camelyon16-patches — test copy\n")
    (root / "LICENSE.source.md").write_text("CC0\n")
    return root


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ the registry


def test_every_source_has_a_reader_a_layout_and_terms():
    for name, row in sources.SOURCES.items():
        assert sources.reader_of(name) in prepare.READERS, name
        assert row.layout and row.license and row.citation
    assert set(sources.named_by("SOURCE")) == {"pbc", "raabin", "segwbc", "folders", "ebhi", "camelyon16"}
    assert sources.named_by("--cam16") == ("ebhi",)


def test_the_cli_offers_the_registry_and_help_does_not_import_torch():
    code = "import sys; from wbclib import cli; cli.parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
    bad = subprocess.run([sys.executable, "-m", "wbclib.cli", "prepare", "nosuch", "--from", ".", "--out", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "ebhi" in bad.stderr and "camelyon16" in bad.stderr


# ------------------------------------------------------------------------------------------------ ebhi


def test_ebhi_split_masks_and_tiles(tmp_path):
    src, out = ebhi_tree(tmp_path / "ebhi"), tmp_path / "out"
    summary = run("ebhi", src, out, split=(50, 25, 25), mask_fraction=0.5)
    counts = summary["counts"]
    # normal = Normal 4 + Polyp 6 = 10, tumor = High-grade 5 + Adenocarcinoma 5 = 10: test and val 25 % of 10 each,
    # 2.5 rounded up to 3, the other 4 train
    for cls in CAM16_CLASSES:
        assert counts["CAM16_100cls_10mask/test"][cls] == {"images": 3, "masks": 3}  # every test image keeps its mask
        assert counts["CAM16_100cls_10mask/val"][cls] == {"images": 3, "masks": 0}
        assert counts["CAM16_100cls_10mask/train"][cls] == {"images": 4, "masks": 2}  # half of the training share
    assert counts["pRCC_nolabel"]["unlabelled"]["images"] == 3 and summary["left_out"] == {}
    # the course reader takes it as it is; the splits are disjoint and cover every grouped image once
    seen = []
    for split in ("train", "val", "test"):
        recs = readers.cam16_records(out, split)
        seen += [r.path.name for r in recs]
        assert sum(r.mask_path is not None for r in recs) == {"train": 4, "val": 0, "test": 6}[split]
    assert len(seen) == len(set(seen)) == 20
    assert all(n.split("-GT")[0] in ("normal", "polyp", "high-grade-in", "adenocarcinoma") for n in seen)
    assert len(readers.prcc_records(out, "train")) + len(readers.prcc_records(out, "val")) == 3
    # grey labels thresholded at 128: the box is cell, the anti-aliased 127 is not
    mask = next((out / "CAM16_100cls_10mask/test/mask/tumor").iterdir())
    arr = np.asarray(Image.open(mask))
    assert arr[0, 0] == 0 and arr[10, 10] == 255 and set(np.unique(arr)) == {0, 255}
    info = json.loads((out / "manifest.json").read_text())
    assert info["sources"][0]["license"] == "CC BY 4.0" and "Frontiers in Medicine" in info["sources"][0]["citation"]
    assert (out / "licenses" / "ebhi-PROVENANCE.md").is_file()


def test_ebhi_is_deterministic_and_the_seed_changes_the_split(tmp_path):
    src = ebhi_tree(tmp_path / "ebhi")
    a, b, c = (run("ebhi", src, tmp_path / n, seed=s)["manifest"] for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert Path(a).read_bytes() == Path(b).read_bytes()
    assert files(tmp_path / "a") == files(tmp_path / "b")
    split = lambda m: {k: v for k, v in json.loads(Path(m).read_text())["files"].items() if "test/data" in k}  # noqa: E731
    assert split(a) != split(c)


def test_ebhi_grouping_option(tmp_path):
    src = ebhi_tree(tmp_path / "ebhi")
    summary = run("ebhi", src, tmp_path / "out", grouping="normal=Normal,tumor=Adenocarcinoma")
    totals = {c: sum(summary["counts"][f"CAM16_100cls_10mask/{s}"][c]["images"] for s in ("train", "val", "test"))
              for c in CAM16_CLASSES}
    assert totals == {"normal": 4, "tumor": 5}
    assert summary["left_out"] == {"High-grade IN": 5, "Low-grade IN": 3, "Polyp": 6}
    assert not (tmp_path / "out" / "pRCC_nolabel").exists()


@pytest.mark.parametrize("grouping, says", [
    ("normal=Normal", "needs both"),
    ("normal=Normal,tumor=Normal", "more than one group"),
    ("benign=Normal,tumor=Polyp", "expects normal="),
    ("normal=Normal,tumor=Nosuch", "no class folder 'Nosuch'"),
])
def test_ebhi_refuses_a_bad_grouping(tmp_path, grouping, says):
    src = ebhi_tree(tmp_path / "ebhi")
    with pytest.raises(WbcError, match=says):
        run("ebhi", src, tmp_path / "out", grouping=grouping)
    assert not (tmp_path / "out").exists()


def test_ebhi_refuses_an_image_without_its_label_and_skips_it_on_request(tmp_path):
    src = ebhi_tree(tmp_path / "ebhi")
    lost = src / "EBHI-SEG" / "Polyp" / "label" / "GT1-002.png"
    lost.unlink()
    (src / "EBHI-SEG" / "Polyp" / "image" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        run("ebhi", src, tmp_path / "out")
    text = str(err.value)
    assert "GT1-002.png" in text and "no mask" in text and "notes.txt" in text and "EBHI-SEG/<Class>" in text
    assert not (tmp_path / "out").exists()
    summary = run("ebhi", src, tmp_path / "out", skip_bad=True)
    assert summary["skipped"] == 2
    # a tile of the unlabelled group needs no label
    (src / "EBHI-SEG" / "Low-grade IN" / "label" / "GT2-000.png").unlink()
    assert run("ebhi", src, tmp_path / "again", skip_bad=True)["counts"]["pRCC_nolabel"]["unlabelled"]["images"] == 3


@pytest.mark.parametrize("option, value, says", [
    ("split", (70, 30), "TRAIN:VAL:TEST"), ("split", (0, 10, 90), "TRAIN:VAL:TEST"),
    ("mask_fraction", 1.5, "--mask-fraction"),
])
def test_ebhi_refuses_bad_split_options(tmp_path, option, value, says):
    with pytest.raises(WbcError, match=says):
        run("ebhi", ebhi_tree(tmp_path / "ebhi"), tmp_path / "out", **{option: value})


def test_a_histology_set_beside_a_wbc_pool(tmp_path, wbc_tree):
    """The embedded default in small: cells, the CAM16 stage from EBHI, H&E tiles and smear tiles beside them."""
    pool = tmp_path / "pool"
    for cls_dir in (wbc_tree / "WBC_100/train/data").iterdir():
        for f in cls_dir.iterdir():
            (pool / cls_dir.name).mkdir(parents=True, exist_ok=True)
            (pool / cls_dir.name / f.name).write_bytes(f.read_bytes())
    smears = tmp_path / "smears"
    write_image(smears / "photo.jpg", (80, 40))
    out = tmp_path / "out"
    summary = run("folders", pool, out, cam16=("ebhi", ebhi_tree(tmp_path / "ebhi")), smear_tiles=smears)
    assert {"WBC_100/train", "CAM16_100cls_10mask/train", "pRCC_nolabel", "smears_nolabel"} <= set(summary["counts"])
    assert len(readers.prcc_records(out, "train", folder="smears_nolabel")) + len(
        readers.prcc_records(out, "val", folder="smears_nolabel")) == 2
    roles = [s["role"] for s in json.loads((out / "manifest.json").read_text())["sources"]]
    assert roles == ["main", "cam16", "tiles"]
    with pytest.raises(WbcError, match="--smear-tiles"):
        run("folders", pool, tmp_path / "both", cam16=("ebhi", tmp_path / "ebhi"), tiles=smears)


# ------------------------------------------------------------------------------------------ camelyon16


def test_drawn_mask_equals_the_hand_computed_one():
    # a 10 x 10 square outline with corners (10, 10) and (19, 19) relative to the patch, minus a 2 x 2 hole;
    # PIL fills boundary pixels, so the square covers rows and columns 10..19, the hole 12..13
    square = ((1010, 2010), (1019, 2010), (1019, 2019), (1010, 2019))
    hole = ((1012, 2012), (1013, 2012), (1013, 2013), (1012, 2013))
    got = prepare.draw_outline((1000, 2000), (24, 24), [square], [hole])
    want = np.zeros((24, 24), bool)
    want[10:20, 10:20] = True
    want[12:14, 12:14] = False
    assert got.shape == (24, 24) and np.array_equal(got, want)
    # clipped to the patch: a patch whose corner lies inside the square sees its lower-right part only
    clipped = prepare.draw_outline((1015, 2015), (8, 8), [square], [])
    want = np.zeros((8, 8), bool)
    want[:5, :5] = True
    assert np.array_equal(clipped, want)
    # a triangle: the lower-left half of a 5 x 5 square, diagonal included
    tri = prepare.draw_outline((0, 0), (5, 5), [((0, 0), (0, 4), (4, 4))], [])
    assert np.array_equal(tri, np.tril(np.ones((5, 5), bool)))


def test_camelyon16_patches_become_a_test_set_with_drawn_masks(tmp_path):
    src, out = camelyon_tree(tmp_path / "c16"), tmp_path / "out"
    summary = run("camelyon16", src, out)
    assert summary["counts"]["camelyon16"] == {"normal": {"images": 2, "masks": 2}, "tumor": {"images": 2, "masks": 2}}
    records, base = readers.folder_records(out, CAM16_CLASSES)  # what `wbc evaluate --data OUT` reads
    assert base == out / "data" and len(records) == 4 and all(r.mask_path is not None for r in records)
    mask = np.asarray(Image.open(out / "mask" / "tumor" / "tumor_001_1000_2000.png")) > 127
    want = np.zeros((40, 40), bool)
    want[10:20, 10:20] = True
    want[12:14, 12:14] = False
    assert np.array_equal(mask, want)
    shifted = np.asarray(Image.open(out / "mask" / "tumor" / "tumor_001_1005_2000.png")) > 127
    assert np.array_equal(shifted[:, :15], want[:, 5:20]) and not shifted[:, 15:].any()
    for name in ("tumor_004_500_600", "tumor_001_5000_9000"):  # far from any outline: empty
        assert not np.asarray(Image.open(out / "mask" / "normal" / f"{name}.png")).any()
    info = json.loads((out / "manifest.json").read_text())
    assert info["sources"][0]["license"].startswith("CC0") and "GigaScience" in info["sources"][0]["citation"]
    assert (out / "licenses" / "camelyon16-LICENSE.source.md").is_file()


def test_camelyon16_refuses_a_patch_without_slide_corner_or_outlines(tmp_path):
    src = camelyon_tree(tmp_path / "c16")
    write_image(src / "sample_patches_256" / "tumor" / "patch7.png", (40, 40))
    write_image(src / "sample_patches_256" / "tumor" / "tumor_099_10_20.png", (40, 40))
    with pytest.raises(DatasetError) as err:
        run("camelyon16", src, tmp_path / "out")
    text = str(err.value)
    assert "patch7.png" in text and "gives no slide and corner" in text
    assert "tumor_099_10_20.png" in text and "no outlines for slide tumor_099" in text
    assert not (tmp_path / "out").exists()
    assert run("camelyon16", src, tmp_path / "out", skip_bad=True)["skipped"] == 2
    (src / "annotations" / "Tumor_001.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not an outline file"):
        run("camelyon16", src, tmp_path / "again")


def test_camelyon16_as_an_external_set_of_a_wbc_pool(tmp_path, wbc_tree):
    pool = tmp_path / "pool"
    for f in (wbc_tree / "WBC_100/train/data").rglob("*.jpg"):
        (pool / f.parent.name).mkdir(parents=True, exist_ok=True)
        (pool / f.parent.name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    run("folders", pool, out, external={"camelyon16": camelyon_tree(tmp_path / "c16")})
    assert datasets.external_sets(CAM16_CLASSES, out) == [out / "external" / "camelyon16"]
    assert datasets.external_sets(root=out) == []  # not a set of white blood cells


def test_cli_prepare_camelyon16(tmp_path):
    src, out = camelyon_tree(tmp_path / "c16"), tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", "prepare", "camelyon16", "--from", str(src), "--out",
                           str(out), "--size", "24", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "camelyon16" in done.stdout and "tumor" in done.stdout
    with Image.open(next((out / "data" / "tumor").iterdir())) as img:
        assert img.size == (24, 24)


# ------------------------------------------------------------------------------------- the shared copies


@pytest.mark.slow
def test_shared_copies_prepare_as_documented(tmp_path):
    ebhi, c16 = shared_or_skip("ebhi-seg"), shared_or_skip("camelyon16-patches")
    summary = run("ebhi", ebhi, tmp_path / "ebhi", size=48)
    totals = {c: sum(summary["counts"][f"CAM16_100cls_10mask/{s}"][c]["images"] for s in ("train", "val", "test"))
              for c in CAM16_CLASSES}
    assert totals == {"normal": 76 + 150, "tumor": 120 + 200}
    assert summary["counts"]["pRCC_nolabel"]["unlabelled"]["images"] == 150
    summary = run("camelyon16", c16, tmp_path / "c16", size=48)
    assert summary["counts"]["camelyon16"]["tumor"]["images"] == 44
    masks = tmp_path / "c16" / "mask"
    tumour = np.mean([(np.asarray(Image.open(p)) > 127).mean() for p in (masks / "tumor").iterdir()])
    normal = np.mean([(np.asarray(Image.open(p)) > 127).mean() for p in (masks / "normal").iterdir()])
    assert tumour > 0.8 and normal == 0.0  # as the copy's PROVENANCE.md says: about 92 % and 0 %
