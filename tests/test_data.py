"""Readers: exact layouts, every broken input gets its message, real sets load, joint augmentation aligns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from conftest import make_wbc_tree, shared_or_skip, write_image, write_mask
from wbclib import WBC_CLASSES
from wbclib.data import datasets, images, readers, transforms
from wbclib.data.readers import DatasetError


def test_wbc_layout(wbc_tree):
    train = readers.wbc_records(wbc_tree, 100, "train")
    val = readers.wbc_records(wbc_tree, 100, "val")
    assert len(train) == 10 and len(val) == 5
    assert sorted({r.label for r in train}) == [0, 1, 2, 3, 4]
    masked = [r for r in train if r.mask_path is not None]
    assert len(masked) == 5
    assert all(r.mask_path.stem == r.path.stem and r.mask_path.parent.name == r.path.parent.name for r in masked)
    assert all(WBC_CLASSES[r.label] == r.path.parent.name for r in train)


def test_validation_set_is_shared_and_found_as_wbc_test(tmp_path):
    root = make_wbc_tree(tmp_path, subsets=(10,))  # only WBC_10 train + WBC_100/val
    assert len(readers.wbc_records(root, 10, "val")) == 5
    (root / "WBC_100").rename(root / "WBC_test")
    assert len(readers.wbc_records(root, 10, "val")) == 5


def test_class_names_case_and_plural(tmp_path):
    for i, name in enumerate(["basophils", "EOSINOPHIL", "Lymphocytes", "monocyte", "Neutrophils"]):
        write_image(tmp_path / "set" / name / f"a{i}.png", seed=i)
    recs, _ = readers.folder_records(tmp_path / "set")
    assert sorted(r.label for r in recs) == [0, 1, 2, 3, 4]


def test_item_contract_and_default_collate(wbc_tree):
    recs = readers.wbc_records(wbc_tree, 100, "train")
    ds = datasets.CellDataset(recs, WBC_CLASSES, transforms.build(32, 48, train=True), root=wbc_tree)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (10, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["mask"].shape == (10, 1, 32, 32)
    assert batch["has_mask"].sum() == 5
    assert batch["mask"][~batch["has_mask"]].sum() == 0
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    assert batch["path"][0].startswith("WBC_100/train/data/")


def test_cam16_and_prcc_layouts(tmp_path):
    base = tmp_path / "CAM16_100cls_10mask"
    for split in ("train", "val", "test"):
        for c in ("normal", "tumor"):
            for i in range(2):
                write_image(base / split / "data" / c / f"{split}_{c}_{i}.jpg", seed=i)
    write_mask(base / "train/mask/tumor/train_tumor_0.jpg")
    write_mask(base / "train/mask/normal/train_normal_0.jpg", box=(0, 0, 0, 0))
    train = readers.cam16_records(tmp_path, "train")
    assert len(train) == 4 and sum(r.mask_path is not None for r in train) == 2
    assert {r.label for r in train if r.path.parent.name == "tumor"} == {1}
    assert len(readers.cam16_records(tmp_path, "test")) == 4
    for i in range(20):
        write_image(tmp_path / "pRCC_nolabel" / f"b{i % 2}" / f"{i}_{i}_2000.jpg", seed=i)
    tr, va = readers.prcc_records(tmp_path, "train"), readers.prcc_records(tmp_path, "val")
    assert len(tr) == 18 and len(va) == 2 and not {r.path for r in tr} & {r.path for r in va}
    assert all(r.label == -1 for r in tr)


# -- every broken input produces its message --------------------------------------------------------------

def _expect(exc_info, *fragments):
    msg = str(exc_info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in message:\n{msg}"
    assert "expected layout" in msg


def test_missing_root_and_subset(tmp_path):
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(tmp_path / "nope", 100, "train")
    _expect(e, "data root not found", "nope")
    make_wbc_tree(tmp_path, subsets=(100,))
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(tmp_path, 10, "train")
    _expect(e, "WBC_10 training split not found")


def test_zero_byte_truncated_and_non_image(wbc_tree):
    d = wbc_tree / "WBC_100/train/data"
    (d / "Basophil/empty.jpg").write_bytes(b"")
    good = (d / "Eosinophil/img_1_0.jpg").read_bytes()
    (d / "Eosinophil/cut.jpg").write_bytes(good[: len(good) // 2])
    (d / "Monocyte/notes.txt").write_text("hello")
    (d / "Monocyte/fake.png").write_text("not a png")
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(wbc_tree, 100, "train")
    _expect(e, "empty.jpg: zero-byte", "cut.jpg: unreadable or truncated", "notes.txt: not an image",
            "fake.png: unreadable", "4 problem(s)")


def test_unknown_class_mask_without_image_and_size_mismatch(wbc_tree):
    d = wbc_tree / "WBC_100/train"
    write_image(d / "data/Platelet/p.jpg")
    write_mask(d / "mask/Basophil/orphan.jpg")
    write_mask(d / "mask/Lymphocyte/img_2_0.jpg", size=(32, 32), box=(0, 0, 8, 8))
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(wbc_tree, 100, "train")
    _expect(e, "Platelet: unknown class folder", "orphan.jpg: mask without image", "img_2_0.jpg: mask size differs")


def test_empty_split(tmp_path):
    for cls in WBC_CLASSES:
        (tmp_path / f"WBC_100/train/data/{cls}").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(tmp_path, 100, "train")
    _expect(e, "empty split")


def test_long_lists_are_cut_at_twenty(wbc_tree):
    for i in range(25):
        (wbc_tree / f"WBC_100/train/data/Basophil/e{i:02d}.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as e:
        readers.wbc_records(wbc_tree, 100, "train")
    msg = str(e.value)
    assert "25 problem(s)" in msg and "... and 5 more" in msg and msg.count(": zero-byte") == 20


def test_skip_bad_leaves_bad_files_out(wbc_tree, capsys):
    (wbc_tree / "WBC_100/train/data/Basophil/empty.jpg").write_bytes(b"")
    recs = readers.wbc_records(wbc_tree, 100, "train", skip_bad=True)
    assert len(recs) == 10
    assert "skipping 1 bad file" in capsys.readouterr().err


def test_nothing_is_written_inside_the_data_root(wbc_tree):
    before = sorted((p, p.stat().st_mtime_ns) for p in wbc_tree.rglob("*"))
    recs = readers.wbc_records(wbc_tree, 100, "train")
    ds = datasets.CellDataset(recs, WBC_CLASSES, transforms.build(32, None, True))
    _ = [ds[i] for i in range(len(ds))]
    assert sorted((p, p.stat().st_mtime_ns) for p in wbc_tree.rglob("*")) == before


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_odd_image_modes_become_rgb(tmp_path, mode):
    p = tmp_path / "x.png"
    if mode == "I;16":
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(p)
    else:
        write_image(p, mode=mode)
    img = images.open_image(p)
    assert img.mode == "RGB" and img.size == (64, 64)
    if mode == "I;16":
        assert np.asarray(img).max() > 200  # scaled down from 16 bits, not clipped to white or black


def test_three_channel_masks_and_threshold(tmp_path):
    root = tmp_path / "set"
    write_image(root / "data/Basophil/a.bmp")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32] = 128
    arr[:, 48:] = 255
    (root / "mask/Basophil").mkdir(parents=True)
    Image.fromarray(arr).save(root / "mask/Basophil/a.png")
    recs, _ = readers.folder_records(root)
    for thr, frac in [(128, 0.5 + 16 / 64), (200, 16 / 64), (64, 0.5 + 16 / 64)]:
        _, mask = datasets.CellDataset(recs, WBC_CLASSES, mask_threshold=thr).load(0)
        assert mask.float().mean().item() == pytest.approx(frac)


# -- augmentation -----------------------------------------------------------------------------------------

def test_joint_flips_and_crop_keep_image_and_mask_aligned():
    """The mask is derived from the image (bright pixels); after any augmentation it must still match."""
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 80, 100, dtype=torch.uint8)
    img[:, 10:30, 5:60] = 255
    img[:, 50:75, 70:90] = 255
    mask = (img[:1] > 0).to(torch.uint8)
    tf = transforms.train_transform(48, resize=None)
    for i in range(20):
        torch.manual_seed(i)
        out_img, out_mask = tf(tv_tensors.Image(img), tv_tensors.Mask(mask))
        assert out_img.shape == (3, 48, 48) and out_mask.shape == (1, 48, 48)
        assert torch.equal((out_img[0] > 0.5), out_mask[0].bool())
    _ = g


def test_crop_and_padding_when_smaller():
    img = tv_tensors.Image(torch.randint(0, 255, (3, 144, 150), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(1, 144, 150, dtype=torch.uint8))
    out, m = transforms.eval_transform(96)(img, mask)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32 and m.dtype == torch.uint8
    assert torch.allclose(out, img[:, 24:120, 27:123].float() / 255)  # the centre, not a resize
    small = tv_tensors.Image(torch.full((3, 40, 50), 200, dtype=torch.uint8))
    out, m = transforms.train_transform(64)(small, tv_tensors.Mask(torch.ones(1, 40, 50, dtype=torch.uint8)))
    assert out.shape == (3, 64, 64) and m.sum() == 40 * 50


def test_jpeg_draft_decoding_matches_the_resize(tmp_path):
    p = write_image(tmp_path / "big.jpg", size=(575, 575))
    img = images.open_image(p, draft_size=144)
    assert min(img.size) >= 144 and min(img.size) < 575


# -- the real sets in ../shared ---------------------------------------------------------------------------

def test_segwbc_loads_with_labels_and_masks():
    root = shared_or_skip("segwbc")
    recs, _ = readers.folder_records(root / "dataset1")
    assert len(recs) == 300 and all(r.mask_path is not None for r in recs)
    counts = np.bincount([r.label for r in recs], minlength=5)
    assert counts.tolist() == [1, 22, 53, 48, 176]
    assert all(r.mask_path.stem == r.path.stem and r.mask_path.suffix == ".png" for r in recs)
    ds = datasets.CellDataset(recs, WBC_CLASSES, mask_threshold=64)
    _, mask = ds.load(0)
    frac = mask.float().mean().item()
    assert 0.05 < frac < 0.9  # cell = nucleus + cytoplasm at threshold 64
    _, nucleus = datasets.CellDataset(recs, WBC_CLASSES, mask_threshold=192).load(0)
    assert nucleus.sum() < mask.sum()
    recs2, _ = readers.folder_records(root / "dataset2")
    assert np.bincount([r.label for r in recs2], minlength=5).tolist() == [3, 12, 37, 15, 33]


def test_bccd_loads_with_labels():
    root = shared_or_skip("bccd")
    before = {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}
    recs, _ = readers.folder_records(root)
    assert np.bincount([r.label for r in recs], minlength=5).tolist() == [3, 88, 33, 20, 207]
    assert all(r.mask_path is None for r in recs)
    ds = datasets.CellDataset(recs, WBC_CLASSES, transforms.build(96, 144, False), resize=144)
    item = ds[0]
    assert item["image"].shape == (3, 96, 96) and not item["has_mask"]
    assert {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written or touched
