"""Readers for the course datasets (WBC, CAM16, pRCC) and for any class-folder set, and where a run's data
lives (``data_root``: a user's copy, the embedded real cells or the synthetic stand-in) with its splits
(``build_splits``).

Every dataset is indexed and validated up front: before a single training step, each file is checked
(readable, not truncated, an image, its mask of the same size, its class folder known) and every problem
is reported in one error that lists the offending paths and the expected layout. Nothing is ever written
inside a data root.

Each item is a dict ``{"image", "label", "mask", "has_mask", "path"}``: ``label`` is -1 for unlabeled
images (pRCC) and ``mask`` an all-zero placeholder when ``has_mask`` is False, so one default collate serves
all datasets.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from wbclib import CAM16_CLASSES, NO_LABEL, WBC_CLASSES, WBC_SUBSETS, WbcError
from wbclib.core import config as cfg
from wbclib.data import transforms
from wbclib.data.sources import LAYOUT_FOLDERS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

LAYOUT_WBC = ("<root>/WBC_<n>/train/data/<Class>/<name>.jpg, masks in <root>/WBC_<n>/train/mask/<Class>/ with the "
              "image's file stem, validation in <root>/WBC_100/val/data/<Class>/ (or <root>/WBC_test/val/data/); "
              "classes " + ", ".join(WBC_CLASSES))
LAYOUT_CAM16 = ("<root>/CAM16_100cls_10mask/{train,val,test}/data/{normal,tumor}/<name>.jpg, masks in "
                "<root>/CAM16_100cls_10mask/train/mask/{normal,tumor}/")
PRCC_FOLDER = "pRCC_nolabel"
LAYOUT_PRCC = f"<root>/{PRCC_FOLDER}/**/<name>.jpg (any depth, no labels)"


class DatasetError(WbcError):
    """A data root that does not match the expected layout, or files that cannot be used."""


@dataclass(frozen=True)
class Record:
    """One image of a dataset: where it is, its class index (-1 if none) and its mask file (if any)."""

    path: Path
    label: int = NO_LABEL
    mask_path: Path | None = None


class Problems:
    """Collects what is wrong with a data tree, then raises one readable error (or skips the bad files)."""

    SHOWN = 20

    def __init__(self, where: Path, layout: str):
        self.where, self.layout, self.items = where, layout, []

    def add(self, path: Path, why: str) -> None:
        self.items.append((Path(path), why))

    def bad_paths(self) -> set[Path]:
        return {p for p, _ in self.items}

    def settle(self, skip_bad: bool) -> None:
        """Raise a :class:`DatasetError` listing every problem, or print how many files are skipped."""
        if not self.items:
            return
        kinds = sorted({why.split(":")[0] for _, why in self.items})
        head = (f"{len(self.items)} problem(s) in {self.where} ({', '.join(kinds)}); expected layout: "
                f"{self.layout}")
        if skip_bad:
            print(f"wbc: skipping {len(self.items)} bad file(s) under {self.where} ({', '.join(kinds)})",
                  file=sys.stderr)
            return
        lines = [f"  {p}: {why}" for p, why in self.items[: self.SHOWN]]
        more = len(self.items) - self.SHOWN
        if more > 0:
            lines.append(f"  ... and {more} more")
        raise DatasetError("\n".join([head, *lines, "  (pass --skip-bad to leave these files out)"]))


def canonical_class(name: str, classes: tuple[str, ...]) -> int | None:
    """Index of a folder name among ``classes``, case-insensitive, singular or plural ('Eosinophils')."""
    key = name.strip().lower()
    for i, c in enumerate(classes):
        if key in (c.lower(), c.lower() + "s", c.lower() + "es"):
            return i
    return None


def visible(path: Path) -> list[Path]:
    """The entries of a folder, sorted, without hidden files and Thumbs.db."""
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name not in ("Thumbs.db",))


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} does not exist or is not a folder; expected layout: {layout}")
    return path


def open_image(path: Path, draft_size: int | None = None, mode: str = "RGB") -> Image.Image:
    """Decode an image to RGB (or 'L'), converting grayscale, RGBA, palette and 16-bit images.

    With ``draft_size`` a JPEG is decoded directly at the smallest DCT scale whose shorter side is still
    >= draft_size (a cheap, high-quality downscale; the exact resize follows in :func:`resize_shorter`).
    """
    return _decode(path, draft_size, mode)[0]


def _decode(path: Path, draft_size: int | None, mode: str) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`open_image`, and the image's size in the file (before any reduced-scale decoding)."""
    img = Image.open(path)
    full = img.size
    if draft_size and img.format == "JPEG":
        w, h = img.size
        ratio = min(w, h) / draft_size
        img.draft("RGB" if mode == "RGB" and img.mode != "L" else img.mode, (int(w / ratio), int(h / ratio)))
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).astype(np.uint8), "L")
    if mode == "RGB" and img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return (img.convert(mode) if img.mode != mode else img), full


# -- the one resize rule: `wbc prepare --size` writes it to disk, the loaders apply it to full-size files ------

#: JPEG quality that ``wbc prepare`` writes its images at unless told otherwise (``--quality``).
PREPARED_QUALITY = 90


def target_size(size: tuple[int, int], short: int | None) -> tuple[int, int]:
    """(width, height) of an image of ``size`` once its shorter side is ``short`` (the longer side rounded to
    the nearest pixel); ``size`` itself when ``short`` is None."""
    w, h = size
    if short is None:
        return w, h
    if w <= h:
        return short, max(1, int(h * short / w + 0.5))
    return max(1, int(w * short / h + 0.5)), short


def resize_shorter(img: Image.Image, full: tuple[int, int], short: int | None) -> Image.Image:
    """Resize ``img`` to :func:`target_size` of ``full``, its size before any reduced-scale (draft) decoding,
    with PIL's Lanczos filter. Unchanged when it already has that size."""
    size = target_size(full, short)
    return img if img.size == size else img.resize(size, Image.LANCZOS)


def load_image(path: Path, resize: int | None = None, quality: int | None = PREPARED_QUALITY) -> Image.Image:
    """Decode an image to RGB the way ``wbc prepare --size resize --quality quality`` stores it.

    Without ``resize``, the image as it is. With it, an image whose shorter side is not ``resize`` is decoded
    at the smallest JPEG scale still at least that large, resized by :func:`resize_shorter`, and passed through
    a JPEG of ``quality`` (None: not), so that a full-size file reaches the network with the very pixels its
    prepared copy has. An image already at that scale (a prepared one) is left as it is.
    """
    img, full = _decode(path, resize, "RGB")
    if resize is None or target_size(full, resize) == full:
        return img
    img = resize_shorter(img, full, resize)
    if quality is None:
        return img
    return Image.open(io.BytesIO(transforms.jpeg_bytes(img, quality))).convert("RGB")


def check_image(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None. Decodes at a reduced scale to catch truncation."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file: empty"
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"unreadable or truncated image: {reason}"
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None


def scan_class_folders(data_dir: Path, classes: tuple[str, ...], problems: Problems,
                       mask_dir: Path | None = None, check: bool = True) -> list[Record]:
    """Index ``data_dir/<Class>/*`` (and masks in ``mask_dir/<Class>/`` paired by file stem)."""
    records: list[Record] = []
    for folder in visible(data_dir):
        if not folder.is_dir():
            continue  # loose files beside the class folders (README, labels.csv) are not part of the set
        label = canonical_class(folder.name, classes)
        if label is None:
            problems.add(folder, f"unknown class folder: expected one of {', '.join(classes)}")
            continue
        masks: dict[str, Path] = {}
        mask_folder = _find_class_folder(mask_dir, folder.name, classes) if mask_dir else None
        if mask_folder is not None:
            for m in visible(mask_folder):
                if m.suffix.lower() in IMAGE_EXTENSIONS:
                    masks[m.stem] = m
                else:
                    problems.add(m, "not an image: unexpected file among masks")
        stems = set()
        for f in visible(folder):
            if f.is_dir() or f.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.add(f, "not an image: expected .jpg/.png/.bmp/.tif files")
                continue
            stems.add(f.stem)
            records.append(Record(f, label, masks.get(f.stem)))
        for stem, m in masks.items():
            if stem not in stems:
                problems.add(m, "mask without image: no image with this file stem")
    if mask_dir is not None and mask_dir.is_dir():
        for folder in visible(mask_dir):
            if folder.is_dir() and canonical_class(folder.name, classes) is None:
                problems.add(folder, f"unknown class folder: expected one of {', '.join(classes)}")
    if check:
        check_records(records, problems)
    return records


def _find_class_folder(parent: Path, name: str, classes: tuple[str, ...]) -> Path | None:
    if not parent.is_dir():
        return None
    target = canonical_class(name, classes)
    for d in visible(parent):
        if d.is_dir() and canonical_class(d.name, classes) == target:
            return d
    return None


def check_records(records: list[Record], problems: Problems) -> None:
    """Decode every image and mask header; report unreadable files and masks whose size differs."""
    for r in records:
        why = check_image(r.path)
        if why:
            problems.add(r.path, why)
            continue
        if r.mask_path is not None:
            why = check_image(r.mask_path)
            if why:
                problems.add(r.mask_path, why)
            elif image_size(r.mask_path) != image_size(r.path):
                problems.add(r.mask_path, f"mask size differs: mask {image_size(r.mask_path)} vs image "
                                          f"{image_size(r.path)}")


def finish(records: list[Record], problems: Problems, skip_bad: bool, what: str) -> list[Record]:
    """Raise or skip what is wrong; refuse an empty split."""
    problems.settle(skip_bad)
    bad = problems.bad_paths()
    records = [r if r.mask_path not in bad else Record(r.path, r.label, None) for r in records
               if r.path not in bad and r.path.parent not in bad]
    if not records:
        raise DatasetError(f"empty split: no usable image in {problems.where} ({what}); expected layout: "
                           f"{problems.layout}")
    return records


class CellDataset(Dataset):
    """Records + a joint transform -> items ``{"image", "label", "mask", "has_mask", "path"}``.

    Args:
        records: the indexed files.
        classes: class names (index order).
        transform: a torchvision v2 transform applied jointly to ``tv_tensors.Image`` and ``tv_tensors.Mask``.
        mask_threshold: a mask pixel >= this value is cell (128 for the course's JPEG masks).
        resize: bring every image to this shorter side as ``wbc prepare --size`` does (:func:`load_image`;
            masks by nearest neighbour to the same size); None keeps the native resolution.
        root: the folder paths are reported relative to.
        quality: the JPEG quality of :func:`load_image`'s round trip after a resize (None: none).
    """

    def __init__(self, records: list[Record], classes: tuple[str, ...], transform=None, mask_threshold: int = 128,
                 resize: int | None = None, root: Path | None = None, quality: int | None = PREPARED_QUALITY):
        self.records, self.classes, self.transform = records, tuple(classes), transform
        self.mask_threshold, self.resize, self.root, self.quality = mask_threshold, resize, root, quality

    def __len__(self) -> int:
        return len(self.records)

    def with_records(self, records: list[Record]) -> CellDataset:
        """The same classes, transform and image handling over other records."""
        return CellDataset(records, self.classes, self.transform, self.mask_threshold, self.resize, self.root,
                           self.quality)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records])

    @property
    def num_masks(self) -> int:
        return sum(r.mask_path is not None for r in self.records)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (3, H, W) uint8 and binary mask (1, H, W) of record ``i`` at the dataset's scale, before the
        transform. The mask is thresholded at full resolution and resized by nearest neighbour, as
        ``wbc prepare`` does."""
        r = self.records[i]
        img = load_image(r.path, self.resize, self.quality)
        image = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        if r.mask_path is not None:
            m = open_image(r.mask_path, mode="L")
            if m.size != img.size:
                m = m.resize(img.size, Image.NEAREST)
            mask = torch.from_numpy(np.array(m, dtype=np.uint8) >= self.mask_threshold).to(torch.uint8)[None]
        else:
            mask = torch.zeros((1, *image.shape[1:]), dtype=torch.uint8)
        return image, mask

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        image, mask = self.load(i)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        else:
            image = image.float() / 255
        return {"image": image.as_subclass(torch.Tensor), "label": r.label,
                "mask": mask.as_subclass(torch.Tensor), "has_mask": r.mask_path is not None,
                "path": str(r.path.relative_to(self.root) if self.root else r.path)}


def wbc_records(root: Path, subset: int, split: str, skip_bad: bool = False, check: bool = True) -> list[Record]:
    """WBC_<subset>/train (with masks) or the shared validation set WBC_100/val (also WBC_test/val)."""
    root = require_dir(Path(root), "data root", LAYOUT_WBC)
    if subset not in WBC_SUBSETS:
        raise DatasetError(f"WBC subset must be one of {WBC_SUBSETS}, got {subset}")
    if split == "train":
        base = require_dir(root / f"WBC_{subset}" / "train", f"WBC_{subset} training split", LAYOUT_WBC)
        data_dir, mask_dir = require_dir(base / "data", "training images", LAYOUT_WBC), base / "mask"
    elif split == "val":
        candidates = [root / "WBC_100" / "val" / "data", root / "WBC_test" / "val" / "data"]
        data_dir = next((c for c in candidates if c.is_dir()), None)
        if data_dir is None:
            raise DatasetError(f"validation set not found: neither {candidates[0]} nor {candidates[1]} exists; "
                               f"expected layout: {LAYOUT_WBC}")
        mask_dir = None
    else:
        raise ValueError(f"WBC split must be 'train' or 'val', got {split!r}")
    problems = Problems(data_dir, LAYOUT_WBC)
    records = scan_class_folders(data_dir, WBC_CLASSES, problems, mask_dir if mask_dir else None, check)
    return finish(records, problems, skip_bad, f"WBC_{subset} {split}")


def cam16_records(root: Path, split: str, skip_bad: bool = False, check: bool = True) -> list[Record]:
    """CAM16_100cls_10mask/<split>/data/{normal,tumor} with masks from <split>/mask when present."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"CAM16 split must be train, val or test, got {split!r}")
    root = require_dir(Path(root), "data root", LAYOUT_CAM16)
    base = require_dir(root / "CAM16_100cls_10mask" / split, f"CAM16 {split} split", LAYOUT_CAM16)
    data_dir = require_dir(base / "data", f"CAM16 {split} images", LAYOUT_CAM16)
    problems = Problems(data_dir, LAYOUT_CAM16)
    records = scan_class_folders(data_dir, CAM16_CLASSES, problems, base / "mask", check)
    return finish(records, problems, skip_bad, f"CAM16 {split}")


def prcc_records(root: Path, split: str, val_every: int = 10, skip_bad: bool = False,
                 check: bool = True, folder: str = PRCC_FOLDER) -> list[Record]:
    """Every image under ``pRCC_nolabel/`` (or another tile ``folder`` of the root, e.g. ``smears_nolabel``),
    recursively, unlabeled. Every ``val_every``-th file in sorted order is held out for validation (10 %, as in
    the report; the last file when there are fewer), the rest is the training split."""
    if split not in ("train", "val"):
        raise ValueError(f"pRCC split must be 'train' or 'val', got {split!r}")
    layout = LAYOUT_PRCC.replace(PRCC_FOLDER, folder)
    root = require_dir(Path(root), "data root", layout)
    base = require_dir(root / folder, "pretraining tile folder", layout)
    problems = Problems(base, layout)
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name in ("Thumbs.db",):
                continue
            f = Path(dirpath) / name
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
            else:
                problems.add(f, "not an image: expected .jpg/.png/.bmp/.tif files")
    files.sort()
    held = set(range(val_every - 1, len(files), val_every)) or ({len(files) - 1} if len(files) > 1 else set())
    chosen = [f for i, f in enumerate(files) if (i in held) == (split == "val")]
    records = [Record(f) for f in chosen]
    if check:
        check_records(records, problems)
    return finish(records, problems, skip_bad, f"pRCC {split}")


def folder_records(data_dir: Path, classes: tuple[str, ...] = WBC_CLASSES, skip_bad: bool = False,
                   check: bool = True) -> tuple[list[Record], Path]:
    """Any class-folder set: ``<dir>/<Class>/*``, or ``<dir>/data/<Class>/*`` with ``<dir>/mask/<Class>/*``.

    Returns the records and the folder holding the class folders.
    """
    data_dir = require_dir(Path(data_dir), "image folder", LAYOUT_FOLDERS)
    mask_dir = None
    if (data_dir / "data").is_dir():
        data_dir, mask_dir = data_dir / "data", data_dir / "mask"
    problems = Problems(data_dir, LAYOUT_FOLDERS)
    records = scan_class_folders(data_dir, classes, problems, mask_dir, check)
    return finish(records, problems, skip_bad, "class folders"), data_dir


def fingerprint(records: list[Record], root: Path) -> dict:
    """File count and a hash of the sorted relative paths and sizes: identifies the data a run saw."""
    h = hashlib.sha256()
    entries = []
    for r in records:
        for p in (r.path, r.mask_path):
            if p is not None:
                entries.append(f"{p.relative_to(root) if p.is_relative_to(root) else p}\t{p.stat().st_size}")
    for line in sorted(entries):
        h.update(line.encode() + b"\n")
    return {"files": len(entries), "sha256": h.hexdigest()}


# -- where a run's data lives, and its splits --------------------------------------------------------------

def cache_dir() -> Path:
    """Where derived data (the synthetic stand-in) is cached: $WBC_CACHE or ~/.cache/wbc-study."""
    return Path(os.environ.get("WBC_CACHE") or Path.home() / ".cache" / "wbc-study")


def synthetic_root(config: cfg.RunConfig, progress: bool = False) -> Path:
    """Generate (once) and return the synthetic stand-in of the course data that ``config`` asks for."""
    from wbclib.data import synth

    scale, seed = config.synthetic_scale, config.synthetic_seed
    cam = config.synthetic_cam16_scale or scale
    root = cache_dir() / f"synthetic-scale{scale:g}-cam16-{cam:g}-seed{seed}"
    synth.generate(root, scale=scale, seed=seed, progress=progress, cam16_scale=cam)
    return root


#: The real cells that ship with the project (made by `wbc prepare`; see embedded/README.md).
EMBEDDED = Path(__file__).resolve().parents[2] / "embedded"


def embedded_root() -> Path:
    """The embedded real data set, or a clear error where this installation lacks it."""
    if not (EMBEDDED / "manifest.json").is_file():
        raise DatasetError(f"the embedded real data is not at {EMBEDDED} (it ships with a checkout of the "
                                "project); pass --data-root PATH for your own copy or --data synthetic")
    return EMBEDDED


def external_sets(classes: tuple[str, ...] = WBC_CLASSES, root: Path | None = None) -> list[Path]:
    """The labelled sets that ship with the embedded data (``external/<name>/``) whose class folders are of
    ``classes`` (the WBC cells, or the CAM16 classes of the CAMELYON16 patches): evaluated by default."""
    folder = (EMBEDDED if root is None else Path(root)) / "external"
    sets = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [p for p in sets if holds_classes(p, classes)]


def holds_classes(folder: Path, classes: tuple[str, ...]) -> bool:
    """Whether a class-folder set's class folders are all of ``classes`` (e.g. a CAM16 normal/tumor set)."""
    names = class_folder_names(folder)
    return bool(names) and all(canonical_class(n, classes) is not None for n in names)


def class_folder_names(folder: Path) -> list[str]:
    """The class folders of a class-folder set (``<dir>/<Class>`` or ``<dir>/data/<Class>``); none if missing."""
    folder = Path(folder)
    base = folder / "data" if (folder / "data").is_dir() else folder
    return [d.name for d in visible(base) if d.is_dir()] if base.is_dir() else []


def embedded_external_sets() -> list[Path]:
    """The embedded external sets of white blood cells (see :func:`external_sets`)."""
    return external_sets(WBC_CLASSES)


#: The folder each stage reads in a data root, and what the embedded data holds there, in words (Markdown).
STAGE_FOLDERS = {"wbc": "WBC_100", "cam16": "CAM16_100cls_10mask", "prcc": PRCC_FOLDER}
SOURCE_WORDS = {
    "embedded": "real cells embedded in the project (`embedded/`): PBC images (Acevedo et al., 2020; CC BY 4.0) "
                "with expert-masked segwbc cells (Zheng et al., 2018; GPL-3.0) as the masked share; not the "
                "course data",
    "embedded-cam16": "real H&E colon-biopsy tiles of EBHI-Seg (Shi et al., 2023; CC BY 4.0) embedded in the "
                      "project, normal and polyp against high-grade neoplasia and adenocarcinoma, with their gland "
                      "masks, instead of the course's CAMELYON16 lymph-node patches; the real CAMELYON16 patches "
                      "(CC0) are its second test set",
    "embedded-prcc": "real, unlabelled H&E tiles of EBHI-Seg's low-grade neoplasia class (CC BY 4.0) embedded in "
                     "the project, instead of pRCC kidney tissue",
    "embedded-prcc-smears_nolabel": "real, unlabelled tiles of BCCD blood-smear photographs (MIT) embedded in the "
                                    "project, instead of pRCC kidney tissue",
    "synthetic": "the **synthetic stand-in** (`wbc synth`): procedurally drawn images, not real cells",
    "data-root": "the course data given with `--data-root`",
}


def describe_source(source: str, dataset: str, folder: str = PRCC_FOLDER) -> str:
    """The words of :data:`SOURCE_WORDS` for one dataset (and tile folder) read from one data source."""
    return SOURCE_WORDS.get(f"{source}-{dataset}-{folder}", SOURCE_WORDS.get(f"{source}-{dataset}",
                                                                             SOURCE_WORDS[source]))


def data_source(config: cfg.RunConfig) -> str:
    """Where a run's images come from: 'data-root' (a user's copy), 'embedded' (the real images shipped with the
    project, where it holds the run's stage) or 'synthetic'."""
    if config.data_root:
        return "data-root"
    folder = config.prcc_folder if config.dataset == "prcc" else STAGE_FOLDERS[config.dataset]
    if config.data == "embedded" and (EMBEDDED / folder).is_dir():
        return "embedded"
    return "synthetic"


def data_root(config: cfg.RunConfig, progress: bool = False) -> Path:
    source = data_source(config)
    if source == "data-root":
        return Path(config.data_root).expanduser()
    if source == "embedded":
        return embedded_root()
    return synthetic_root(config, progress)


@dataclass
class Splits:
    """The datasets of one run: ``train``, ``val`` (watched every epoch) and ``report`` (the reported split)."""

    train: CellDataset
    val: CellDataset
    report: CellDataset
    report_name: str
    classes: tuple[str, ...]
    root: Path
    records: list


def build_splits(config: cfg.RunConfig, root: Path, check: bool = True) -> Splits:
    """Index and validate (``check``: decode every file) each split a run needs, before any training starts."""
    skip, classes = config.skip_bad, config.classes
    if config.dataset == "wbc":
        tr = wbc_records(root, config.subset, "train", skip, check)
        va = wbc_records(root, config.subset, "val", skip, check)
        rep, rep_name = va, "val"
    elif config.dataset == "cam16":
        tr = cam16_records(root, "train", skip, check)
        va = cam16_records(root, "val", skip, check)
        rep, rep_name = cam16_records(root, "test", skip, check), "test"
    else:
        tr = prcc_records(root, "train", skip_bad=skip, check=check, folder=config.prcc_folder)
        va = prcc_records(root, "val", skip_bad=skip, check=check, folder=config.prcc_folder)
        rep, rep_name = va, "val"
    if not config.masks:
        tr = [Record(r.path, r.label, None) for r in tr]

    def make(records, train):
        tf = transforms.build(config.input_size, config.resize, train, config.rot90, config.color_jitter,
                              config.hue_jitter, config.zoom, config.jpeg_quality, config.blur, config.resample)
        return CellDataset(records, classes, tf, config.mask_threshold, config.resize, root, config.resize_quality)

    report = make(rep, False)
    val = report if rep is va else make(va, False)
    return Splits(make(tr, True), val, report, rep_name, classes, root, [*tr, *va, *(rep if rep is not va else [])])
