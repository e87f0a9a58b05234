"""Indexing a data tree into records, checked up front: before a single training step, each file is checked
(readable, not truncated, an image, its mask of the same size, its class folder known) and every problem is
reported in one error that lists the offending paths and the expected layout. Nothing is ever written inside a
data root."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from wbclib import CAM16_CLASSES, NO_LABEL, WBC_CLASSES, WBC_SUBSETS, WbcError
from wbclib.data import layout
from wbclib.data.images import check_image, image_size
from wbclib.data.layout import (
    IMAGE_EXTENSIONS,
    LAYOUT_CAM16,
    LAYOUT_FOLDERS,
    LAYOUT_PRCC,
    LAYOUT_WBC,
    PRCC_FOLDER,
    visible,
)


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


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} does not exist or is not a folder; expected layout: {layout}")
    return path


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


def wbc_records(root: Path, subset: int, split: str, skip_bad: bool = False, check: bool = True) -> list[Record]:
    """WBC_<subset>/train (with masks) or the shared validation set WBC_100/val (also WBC_test/val)."""
    root = require_dir(Path(root), "data root", LAYOUT_WBC)
    if subset not in WBC_SUBSETS:
        raise DatasetError(f"WBC subset must be one of {WBC_SUBSETS}, got {subset}")
    if split == "train":
        base = require_dir(layout.wbc_split(root, subset, "train"), f"WBC_{subset} training split", LAYOUT_WBC)
        data_dir, mask_dir = require_dir(layout.images(base), "training images", LAYOUT_WBC), layout.masks(base)
    elif split == "val":
        candidates = layout.wbc_val_candidates(root)
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
    base = require_dir(layout.cam16_split(root, split), f"CAM16 {split} split", LAYOUT_CAM16)
    data_dir = require_dir(layout.images(base), f"CAM16 {split} images", LAYOUT_CAM16)
    problems = Problems(data_dir, LAYOUT_CAM16)
    records = scan_class_folders(data_dir, CAM16_CLASSES, problems, layout.masks(base), check)
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
    data_dir, mask_dir = layout.arranged(require_dir(Path(data_dir), "image folder", LAYOUT_FOLDERS))
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


def holds_classes(folder: Path, classes: tuple[str, ...]) -> bool:
    """Whether a class-folder set's class folders are all of ``classes`` (e.g. a CAM16 normal/tumor set)."""
    names = layout.class_folder_names(folder)
    return bool(names) and all(canonical_class(n, classes) is not None for n in names)
