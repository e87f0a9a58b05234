"""Turn a public white-blood-cell dataset into the course layout (``wbc prepare``).

Sources (the first argument of ``wbc prepare``):

* ``pbc``: the PBC dataset as released, ``<dir>/PBC_dataset_normal_DIB/<lower-case class>/*.jpg``. Its
  classes outside the five (erythroblast, ig, platelet, ...) are left out and counted.
* ``raabin``: Raabin-WBC's release, ``<dir>/Train/<Class>/`` (the pool), and optionally ``TestA/`` and
  ``TestB/``, which become the external sets ``external/TestA/`` and ``external/TestB/``.
* ``segwbc``: the segwbc crops with expert nucleus/cytoplasm masks, as released (``Dataset <n>/NNN.bmp`` +
  ``NNN.png`` labelled by ``Class Labels of Dataset <n>.csv``) or arranged in class folders
  (``dataset<n>/{data,mask}/<Class>/``). The cell mask is nucleus plus cytoplasm: pixel > 64.
* ``folders``: any class-folder set, scanned exactly as :func:`wbclib.data.readers.folder_records` scans it.
* ``ebhi``: EBHI-Seg's colon biopsy tiles with gland/lesion masks (``EBHI-SEG/<Class>/{image,label}/``): two
  groups of its classes become the CAM16 stage's ``normal`` / ``tumor`` (``--grouping``), a third the
  unlabelled tiles of the reconstruction stage.
* ``camelyon16``: real CAMELYON16 patches (``<slide>_<x>_<y>.png``) with tumour masks drawn from their slides'
  outlines: a CAM16-class test set.

Each source is one row of :data:`SOURCES` (its layout, license, citation, reader and the roles it can take):
adding a source is adding a row and its reader.

What is written under ``--out`` (the course layout of :mod:`wbclib.data.layout`, and more)::

    WBC_<n>/train/data/<Class>/<name>.jpg    n in WBC_SUBSETS, nested: WBC_1 ⊂ WBC_10 ⊂ WBC_50 ⊂ WBC_100
    WBC_<n>/train/mask/<Class>/<name>.png    binary 0/255 masks, same stem as their image
    WBC_100/val/data/<Class>/<name>.jpg      the shared validation split
    external/<NAME>/...                      class-folder sets kept apart from training
    pRCC_nolabel/<stem>_t<k>.jpg             square tiles of whole smear photographs (--tiles), or the
                                             unlabelled class of a histology set (--cam16)
    smears_nolabel/<stem>_t<k>.jpg           smear-photograph tiles beside H&E ones (--smear-tiles)
    CAM16_100cls_10mask/{train,val,test}/data/{normal,tumor}/<name>.jpg, masks in train/mask (a share) and
                                             test/mask (all)         a histology set (ebhi, --cam16)
    external/<NAME>/data/{normal,tumor} + mask/   a CAM16-class test set (camelyon16)
    manifest.json, PROVENANCE.md, LICENSE.md, licenses/

Every choice follows from ``--seed``; the same command gives a byte-identical tree. All source files are
checked before anything is written (one error lists the bad ones), nothing is ever written inside a source,
and the tree is built in a hidden sibling folder that is renamed to ``--out`` only once it is complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from wbclib import CAM16_CLASSES, WBC_CLASSES, WBC_SUBSETS, WbcError, __version__
from wbclib.core.storage import write_json
from wbclib.data import layout
from wbclib.data.images import check_image, image_size, open_image, resize_shorter
from wbclib.data.layout import IMAGE_EXTENSIONS, LAYOUT_FOLDERS, visible
from wbclib.data.readers import DatasetError, Problems, Record, canonical_class, check_records, scan_class_folders
from wbclib.data.sources import CAM16_SPLIT, EBHI_GROUPING, PBC_FOLDER, SOURCES, named_by, reader_of
from wbclib.data.transforms import jpeg_bytes

RAABIN_TESTS = ("TestA", "TestB")
#: segwbc label CSVs: 1=neutrophil 2=lymphocyte 3=monocyte 4=eosinophil 5=basophil
SEGWBC_LABELS = {1: "Neutrophil", 2: "Lymphocyte", 3: "Monocyte", 4: "Eosinophil", 5: "Basophil"}
#: Where each tile option's tiles go: the reconstruction stage's folder, or the blood-smear tiles beside it.
#: The training subsets nested inside WBC_100/train, as the plan's keys write them.
_NESTED = {layout.wbc_split(Path(), p, "train").as_posix() for p in WBC_SUBSETS if p != 100}
TILE_FOLDERS = {"--tiles": layout.PRCC_FOLDER, "--smear-tiles": layout.SMEAR_FOLDER}


def _terms(dataset: str) -> tuple[str, str]:
    """(license, citation) of a source."""
    return SOURCES[dataset].license, SOURCES[dataset].citation


@dataclass(frozen=True)
class Item:
    """One image to write: its source file, class (None for tiles), output stem, mask and crop box."""

    path: Path
    cls: str | None
    name: str
    mask: Path | None = None
    cut: int = 127  # a mask pixel above this is cell
    box: tuple[int, int, int, int] | None = None
    src: int = 0  # index of its Source
    outline: tuple | None = None  # a mask drawn from polygons: (corner, size, positive, negative); see draw_outline

    @property
    def masked(self) -> bool:
        return self.mask is not None or self.outline is not None


@dataclass(frozen=True)
class Options:
    """How the pool is split and how images are written (see :func:`prepare`)."""

    seed: int = 0
    val_fraction: float = 0.2
    per_class: int | None = None
    balanced: bool = False
    masked_held_out: float = 0.3
    tiles_per_image: int | None = None
    size: int | None = None
    quality: int = 90
    skip_bad: bool = False
    grouping: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a histology set's groups (see parse_grouping)
    split: tuple[int, int, int] = CAM16_SPLIT
    mask_fraction: float = 0.1


@dataclass
class Source:
    """One source folder and what was read from it."""

    role: str  # main (a WBC pool), masked, external, tiles, cam16
    kind: str  # its row of wbclib.data.sources.SOURCES
    option: str  # the command-line option that named it
    given: str  # its path as given
    name: str = ""  # the external set's name
    index: int = 0
    dataset: str = "folders"  # its row of SOURCES for the license and citation
    items: list[Item] = field(default_factory=list)
    externals: dict[str, list[Item]] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    license_dirs: list[Path] = field(default_factory=list)
    license_files: list[str] = field(default_factory=list)
    taken: dict[str, int] = field(default_factory=dict)
    unlabelled: list[Item] = field(default_factory=list)  # a histology set's tiles for the reconstruction stage

    def __post_init__(self):
        self.root = Path(self.given)
        self.layout = SOURCES[self.kind].layout
        self.problems = Problems(self.root, self.layout)
        self.dataset = self.kind

    def layout_error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.option} {self.given}: {what}; expected layout ({self.kind}): {self.layout}")


@dataclass
class Plan:
    """Where each item goes (image folder, mask folder or None) and the counts per split and class."""

    jobs: dict[Item, list[tuple[str, str | None]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def add(self, item: Item, key: str, image_dir: str, mask_dir: str | None, source: Source) -> None:
        mask_dir = mask_dir if item.masked else None
        self.jobs.setdefault(item, []).append((image_dir, mask_dir))
        count = self.counts.setdefault(key, {}).setdefault(item.cls or "unlabelled", {"images": 0, "masks": 0})
        count["images"] += 1
        count["masks"] += mask_dir is not None
        if key not in _NESTED:  # an image of WBC_1, 10 or 50 is counted once, under WBC_100
            source.taken[key] = source.taken.get(key, 0) + 1


# ---------------------------------------------------------------------------------------------- the entry


def prepare(source: str, from_dir: str | Path, out: str | Path, *, seed: int = 0, val_fraction: float = 0.2,
            per_class: int | None = None, balanced: bool = False,
            masked: tuple[str, str | Path] | None = None, masked_held_out: float = 0.3,
            external: Mapping[str, str | Path] | None = None, tiles: str | Path | None = None,
            tiles_per_image: int | None = None, size: int | None = None, quality: int = 90,
            skip_bad: bool = False, progress: bool | None = None, cam16: tuple[str, str | Path] | None = None,
            smear_tiles: str | Path | None = None, grouping: str = EBHI_GROUPING,
            split: tuple[int, int, int] = CAM16_SPLIT, mask_fraction: float = 0.1) -> dict:
    """Write the course layout under ``out`` from the ``source`` dataset in ``from_dir``.

    Args:
        source: a row of :data:`wbclib.data.sources.SOURCES` that the command may name: a WBC pool (``pbc``,
            ``raabin``, ``segwbc``, ``folders``), a histology set (``ebhi``: the CAM16 stage and the
            reconstruction stage's tiles) or a CAM16-class test set (``camelyon16``: written as ``data/`` and
            ``mask/`` at the top of ``out``).
        seed: every random choice (split, subset order) follows from it.
        val_fraction: share of each class of the pool that becomes the validation split.
        per_class: at most this many images per class in the pool (the first after the seeded shuffle).
        balanced: cap every class of the pool at the size of the smallest. Both caps apply to the pool of
            ``from_dir`` only; the training share of ``masked`` is added on top.
        masked: ``(kind, folder)`` of an extra labelled set with masks (kind ``segwbc`` or ``folders``); a
            share ``masked_held_out`` per class becomes ``external/<kind>/``, the rest joins training.
        external: ``{name: folder}`` sets copied to ``external/<name>/``: class-folder sets, or, where the name
            is ``camelyon16``, CAMELYON16 patches with their drawn tumour masks.
        tiles: folder of whole photographs cut into square tiles for ``pRCC_nolabel/``, at most
            ``tiles_per_image`` per photograph.
        cam16: ``(kind, folder)`` of a histology set (kind ``ebhi``) for ``CAM16_100cls_10mask/`` and, unless
            ``tiles`` is given, ``pRCC_nolabel/``.
        smear_tiles: like ``tiles``, into ``smears_nolabel/`` (blood-smear tiles beside H&E ones).
        grouping: which classes of the histology set become ``normal``, ``tumor`` and the tiles
            (``normal=A+B,tumor=C+D,tiles=E``; ``tiles=`` may be left out).
        split: train / val / test percentages of each class of the histology set.
        mask_fraction: share of each class of the histology set's training split that keeps its mask (the
            test split keeps every mask, so that mask Dice is measured on masks no run trained on).
        size: shorter side of every written image (None: keep the size; JPEGs are then copied as they are).
        quality: JPEG quality of re-encoded images.
        skip_bad: leave unusable source files out instead of raising one error that lists them.
        progress: a progress bar while writing (None: only when stderr is a terminal).

    Returns:
        A summary: ``out``, ``manifest`` (its path), ``counts``, ``left_out``, ``skipped`` (the number of
        bad files left out), ``files`` (the number written) and ``sources``.

    Raises:
        DatasetError: ``out`` is not empty, overlaps a source, or a source is missing, has another layout
            or holds bad files (without ``skip_bad``). Nothing is written then.
    """
    opts = _options(seed, val_fraction, per_class, balanced, masked_held_out, tiles_per_image, size, quality,
                    skip_bad, grouping, split, mask_fraction)
    external = dict(external or {})
    sources = _sources(source, from_dir, masked, external, tiles, cam16, smear_tiles)
    out = Path(out)
    _refuse_out(out, sources)
    for s in sources:
        _read(s, opts)
    skipped = _settle(sources, opts.skip_bad)
    plan = _plan(sources, opts)
    args = _arguments(source, from_dir, masked, external, tiles, cam16, smear_tiles, opts)
    manifest = _build(out, plan, sources, args, skipped, opts, progress)
    return {"out": str(out), "manifest": str(out / "manifest.json"), "counts": manifest["counts"],
            "left_out": manifest["left_out"], "skipped": len(skipped), "files": len(manifest["files"]),
            "sources": manifest["sources"]}


def split_pair(text: str, option: str) -> tuple[str, str]:
    """``'NAME=DIR'`` -> ``('NAME', 'DIR')`` (the folder may itself contain '=')."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path:
        raise WbcError(f"{option} expects NAME=DIR, got {text!r}")
    return name.strip(), path


def tile_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping squares of side min(height, width // 2) across a photograph, vertically centred."""
    side = min(height, width // 2)
    if side < 1:
        return []
    count = width // side
    x0, y0 = (width - count * side) // 2, (height - side) // 2
    return [(x0 + k * side, y0, x0 + (k + 1) * side, y0 + side) for k in range(count)]


# ---------------------------------------------------------------------------------- options and refusals


def _options(seed, val_fraction, per_class, balanced, masked_held_out, tiles_per_image, size, quality,
             skip_bad, grouping=EBHI_GROUPING, split=CAM16_SPLIT, mask_fraction=0.1) -> Options:
    if not 0 < val_fraction < 1:
        raise WbcError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0 <= masked_held_out < 1:
        raise WbcError(f"--masked-held-out must be in [0, 1), got {masked_held_out}")
    for flag, value in (("--per-class", per_class), ("--tiles-per-image", tiles_per_image), ("--size", size)):
        if value is not None and value < 1:
            raise WbcError(f"{flag} must be a positive integer, got {value}")
    if not 1 <= quality <= 100:
        raise WbcError(f"--quality must be between 1 and 100, got {quality}")
    if not 0 <= mask_fraction <= 1:
        raise WbcError(f"--mask-fraction must be in [0, 1], got {mask_fraction}")
    split = tuple(split)
    if len(split) != 3 or any(not isinstance(v, int) or v < 0 for v in split) or min(split[0], split[2]) < 1:
        raise WbcError(f"--split expects TRAIN:VAL:TEST percentages (whole numbers, train and test above 0), "
                       f"got {':'.join(map(str, split))}")
    return Options(int(seed), float(val_fraction), per_class, bool(balanced), float(masked_held_out),
                   tiles_per_image, size, int(quality), bool(skip_bad), parse_grouping(grouping), split,
                   float(mask_fraction))


def parse_grouping(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``'normal=Normal+Polyp,tumor=High-grade IN+Adenocarcinoma,tiles=Low-grade IN'`` -> the groups, each a
    target (normal, tumor, tiles) and the source classes it takes; a class may be in one group only."""
    groups, seen = {}, set()
    for part in (p for p in text.split(",") if p.strip()):
        target, sep, names = part.partition("=")
        target, classes = target.strip(), tuple(n.strip() for n in names.split("+") if n.strip())
        if not sep or target not in (*CAM16_CLASSES, "tiles") or not classes or target in groups:
            raise WbcError(f"--grouping expects normal=A+B,tumor=C+D[,tiles=E] (each once), got {text!r}")
        twice = seen.intersection(classes)
        if twice:
            raise WbcError(f"--grouping names {', '.join(sorted(twice))} in more than one group")
        seen.update(classes)
        groups[target] = classes
    if not all(c in groups for c in CAM16_CLASSES):
        raise WbcError(f"--grouping needs both normal= and tumor=, got {text!r}")
    return tuple(groups.items())


def _sources(source, from_dir, masked, external, tiles, cam16=None, smear_tiles=None) -> list[Source]:
    if source not in named_by("SOURCE"):
        raise WbcError(f"unknown source {source!r}: choose one of {', '.join(named_by('SOURCE'))}")
    stage = SOURCES[source].stage
    role = {"wbc": "main", "cam16": "cam16", "cam16-test": "external"}[stage]
    sources = [Source(role, source, "--from", str(from_dir))]
    taken = set(RAABIN_TESTS) if source == "raabin" else set()
    if stage != "wbc" and masked is not None:
        raise WbcError(f"--masked adds cells with masks to a WBC pool; {source} is not one")
    if masked is not None:
        kind, path = masked
        if kind not in named_by("--masked"):
            raise WbcError(f"--masked kind must be one of {', '.join(named_by('--masked'))}, got {kind!r}")
        sources.append(Source("masked", kind, "--masked", str(path), name=kind))
        taken.add(kind)
    if cam16 is not None:
        kind, path = cam16
        if kind not in named_by("--cam16") or stage == "cam16":
            raise WbcError(f"--cam16 kind must be one of {', '.join(named_by('--cam16'))}, got {kind!r}"
                           + (f" (and {source} is a histology set already)" if stage == "cam16" else ""))
        sources.append(Source("cam16", kind, "--cam16", str(path), name=kind))
    for name, path in external.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in taken:
            raise WbcError(f"--external name {name!r} is not a plain folder name or is already used "
                           f"({', '.join(sorted(taken)) or 'none yet'})")
        taken.add(name)
        kind = name if name in named_by("--external") else "folders"
        sources.append(Source("external", kind, "--external", str(path), name=name))
    histology = any(s.role == "cam16" for s in sources)
    for option, path in (("--tiles", tiles), ("--smear-tiles", smear_tiles)):
        if path is not None:
            sources.append(Source("tiles", "tiles", option, str(path), name=TILE_FOLDERS[option]))
    if histology and tiles is not None:
        raise WbcError("--tiles and a histology set both fill pRCC_nolabel/: give blood-smear photographs with "
                       "--smear-tiles (into smears_nolabel/) instead")
    for i, s in enumerate(sources):
        s.index = i
    return sources


def _refuse_out(out: Path, sources: list[Source]) -> None:
    """Refuse a non-empty --out, an --out that overlaps a source, and a missing source folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"--out {out} exists and is not empty: give a new or empty folder")
    target = out.resolve()
    for s in sources:
        root = s.root.resolve()
        if target.is_relative_to(root):
            raise DatasetError(f"--out {out} lies inside the source folder {s.given} ({s.option}): "
                               "nothing is ever written inside a source")
        if root.is_relative_to(target):
            raise DatasetError(f"the source folder {s.given} ({s.option}) lies inside --out {out}")
    for s in sources:
        if not s.root.is_dir():
            raise s.layout_error("not found or not a folder")


# ------------------------------------------------------------------------------------------------ readers


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _course_class(name: str) -> str | None:
    i = canonical_class(name, WBC_CLASSES)
    return None if i is None else WBC_CLASSES[i]


def _read(s: Source, opts: Options) -> None:
    reader = reader_of(s.kind)
    READERS[reader](s, opts)
    if reader != "tiles":  # tiles are cut from checked photographs and named uniquely by their reader
        s.items = _unique([replace(i, src=s.index) for i in s.items])
        s.unlabelled = _unique([replace(i, src=s.index) for i in s.unlabelled])
        s.externals = {k: _unique([replace(i, src=s.index) for i in v]) for k, v in s.externals.items()}
        for items in [s.items, s.unlabelled, *s.externals.values()]:
            check_records([Record(i.path, 0, i.mask) for i in items], s.problems)
    if s.role == "external":
        s.externals, s.items = {s.name: s.items}, []
    if s.kind in ("folders", "tiles"):
        s.dataset = _guess_dataset(s.root, s.kind)
    if not s.items and not s.unlabelled and not any(s.externals.values()) and not s.problems.items:
        raise s.layout_error("no image found")


def _class_tree(base: Path, s: Source, left_prefix: str = "", name_prefix: str = "") -> list[Item]:
    """``base/<class>/*``: the five classes become items, other class folders are counted as left out."""
    items = []
    for folder in (d for d in visible(base) if d.is_dir()):
        cls = _course_class(folder.name)
        files = visible(folder)
        if cls is None:
            key = left_prefix + folder.name.lower()
            s.left_out[key] = s.left_out.get(key, 0) + sum(_is_image(f) for f in files)
            continue
        for f in files:
            if _is_image(f):
                items.append(Item(f, cls, name_prefix + f.stem))
            else:
                s.problems.add(f, "not an image: expected .jpg/.png/.bmp/.tif files")
    return items


def _read_pbc(s: Source, opts: Options) -> None:
    base = s.root / PBC_FOLDER if (s.root / PBC_FOLDER).is_dir() else s.root
    if base.name != PBC_FOLDER:  # the PBC license and citation go into the manifest: only for PBC's own folder
        raise s.layout_error(f"no {PBC_FOLDER} folder (for another class-folder set, use the 'folders' source)")
    if not any(d.is_dir() and _course_class(d.name) for d in visible(base)):
        raise s.layout_error("no class folder of basophil, eosinophil, lymphocyte, monocyte or neutrophil")
    s.license_dirs = [s.root] if base != s.root else [s.root, s.root.parent]
    s.items = _class_tree(base, s)


def _read_raabin(s: Source, opts: Options) -> None:
    parts = {d.name.lower(): d for d in visible(s.root) if d.is_dir()}
    if "train" not in parts:
        raise s.layout_error("no Train folder")
    s.items = _class_tree(parts["train"], s)
    for name in RAABIN_TESTS:
        if name.lower() in parts:
            s.externals[name] = _class_tree(parts[name.lower()], s, left_prefix=f"{name}/")
    s.license_dirs = [s.root]


def _read_segwbc(s: Source, opts: Options) -> None:
    if layout.images(s.root).is_dir():  # one arranged dataset folder
        s.items = _segwbc_arranged(s.root, s)
        s.license_dirs = [s.root, s.root.parent]
        return
    folders = [d for d in visible(s.root) if d.is_dir()]
    arranged = [d for d in folders if layout.images(d).is_dir()]
    upstream = [d for d in folders if re.fullmatch(r"dataset\s*\d+", d.name.lower()) and d not in arranged]
    if arranged:
        s.items = [i for d in arranged for i in _segwbc_arranged(d, s)]
    elif upstream:
        s.items = [i for d in upstream for i in _segwbc_upstream(d, s)]
    else:
        raise s.layout_error("neither 'Dataset <n>' nor 'dataset<n>/data' folders")
    s.license_dirs = [s.root]


def _dataset_tag(name: str) -> str:
    digits = re.search(r"(\d+)\s*$", name)
    return f"d{digits.group(1)}" if digits else re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _segwbc_arranged(folder: Path, s: Source) -> list[Item]:
    records = scan_class_folders(layout.images(folder), WBC_CLASSES, s.problems, layout.masks(folder), check=False)
    prefix = f"segwbc-{_dataset_tag(folder.name)}-"
    return [Item(r.path, WBC_CLASSES[r.label], prefix + r.path.stem, r.mask_path, cut=64) for r in records]


def _segwbc_upstream(folder: Path, s: Source) -> list[Item]:
    """``Dataset <n>/NNN.bmp`` (image) + ``NNN.png`` (mask), classes from ``Class Labels of Dataset <n>.csv``."""
    table = s.root / f"Class Labels of {folder.name}.csv"
    if not table.is_file():
        raise s.layout_error(f"class labels {table} not found")
    labels = _segwbc_labels(table, s.problems)
    prefix, items = f"segwbc-{_dataset_tag(folder.name)}-", []
    for f in visible(folder):
        if not _is_image(f) or not f.stem.isdigit():
            s.problems.add(f, "not an image: expected NNN.bmp images and NNN.png masks")
        elif f.suffix.lower() != ".png":
            cls = labels.get(int(f.stem))
            if cls is None:
                s.problems.add(f, f"no class label: image ID {int(f.stem)} is not in {table.name}")
                continue
            mask = f.with_suffix(".png")
            items.append(Item(f, cls, prefix + f.stem, mask if mask.is_file() else None, cut=64))
    return items


def _segwbc_labels(table: Path, problems: Problems) -> dict[int, str]:
    labels = {}
    with open(table, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or not row[0].strip().isdigit():
                continue  # the header or an empty line
            value = row[1].strip()
            if not value.isdigit() or int(value) not in SEGWBC_LABELS:
                problems.add(table, f"unknown class label: {value!r} for image ID {row[0].strip()} (expected 1-5)")
                continue
            labels[int(row[0])] = SEGWBC_LABELS[int(value)]
    return labels


def _read_folders(s: Source, opts: Options) -> None:
    """As :func:`wbclib.data.readers.folder_records` scans: ``<dir>/<Class>/*`` or ``<dir>/data`` + ``<dir>/mask``."""
    data_dir, mask_dir = layout.arranged(s.root)
    s.problems = Problems(data_dir, LAYOUT_FOLDERS)
    records = scan_class_folders(data_dir, WBC_CLASSES, s.problems, mask_dir, check=False)
    s.items = [Item(r.path, WBC_CLASSES[r.label], r.path.stem, r.mask_path) for r in records]
    s.license_dirs = [s.root]


def _read_tiles(s: Source, opts: Options) -> None:
    per_image = opts.tiles_per_image
    photos = sorted(p for p in s.root.rglob("*") if _is_image(p)
                    and not any(part.startswith(".") for part in p.relative_to(s.root).parts))
    items = []
    for f in photos:
        why = check_image(f)
        if why:
            s.problems.add(f, why)
            continue
        boxes = tile_boxes(*image_size(f))[:per_image]
        items += [Item(f, None, f"{f.stem}_t{k}", box=box, src=s.index) for k, box in enumerate(boxes)]
    s.items = _unique(items)
    s.license_dirs = [s.root]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _read_ebhi(s: Source, opts: Options) -> None:
    """``EBHI-SEG/<Class>/image/<name>.png`` with its mask ``label/<name>.png``; the grouped classes become
    ``normal`` / ``tumor`` items (with their masks), the ``tiles`` group unlabelled items, the rest is counted."""
    base = s.root / "EBHI-SEG" if (s.root / "EBHI-SEG").is_dir() else s.root
    folders = {d.name: d for d in visible(base) if d.is_dir()}
    groups = dict(opts.grouping)
    missing = [c for names in groups.values() for c in names if c not in folders]
    if missing:
        raise s.layout_error(f"no class folder {', '.join(repr(m) for m in missing)} in {base} (found: "
                             f"{', '.join(sorted(folders)) or 'none'})")
    for cls, folder in folders.items():
        target = next((t for t, names in groups.items() if cls in names), None)
        if target is None:
            s.left_out[cls] = sum(_is_image(f) for f in visible(folder / "image")) if (folder / "image").is_dir() \
                else 0
            continue
        if not (folder / "image").is_dir():
            raise s.layout_error(f"no image folder in {folder}")
        for f in visible(folder / "image"):
            if not _is_image(f):
                s.problems.add(f, "not an image: expected .png/.jpg files")
                continue
            label = folder / "label" / f.name
            if target == "tiles":
                s.unlabelled.append(Item(f, None, f"{_slug(cls)}-{f.stem}"))
            elif not label.is_file():
                s.problems.add(f, f"no mask: expected {label} (the same name in label/)")
            else:
                s.items.append(Item(f, target, f"{_slug(cls)}-{f.stem}", label))
    s.license_dirs = [s.root] if base != s.root else [s.root, s.root.parent]


#: A CAMELYON16 patch's name: its slide (e.g. tumor_001) and its top-left corner in level-0 pixels.
CAMELYON16_NAME = re.compile(r"(?P<slide>[A-Za-z]+_\d+)_(?P<x>\d+)_(?P<y>\d+)")


def _read_camelyon16(s: Source, opts: Options) -> None:
    """``sample_patches_256/{normal,tumor}/<slide>_<x>_<y>.png``; each patch's tumour mask is drawn from its
    slide's outlines in ``annotations/<Slide>.json`` (positive polygons minus negative ones, clipped to the
    patch). A patch whose name gives no slide and corner, or whose slide has no outlines, is refused."""
    base = s.root / "sample_patches_256" if (s.root / "sample_patches_256").is_dir() else s.root
    notes = next((d for d in (s.root / "annotations", base.parent / "annotations") if d.is_dir()), None)
    if notes is None:
        raise s.layout_error(f"no annotations folder beside {base}")
    outline_files = {f.stem.lower(): f for f in visible(notes) if f.suffix.lower() == ".json"}
    slides: dict[str, list | None] = {}
    for cls in CAM16_CLASSES:
        folder = base / cls
        if not folder.is_dir():
            raise s.layout_error(f"no {cls} folder in {base}")
        for f in visible(folder):
            if not _is_image(f):
                s.problems.add(f, "not an image: expected <slide>_<x>_<y>.png patches")
                continue
            m = CAMELYON16_NAME.fullmatch(f.stem)
            if m is None:
                s.problems.add(f, "the name gives no slide and corner: expected <slide>_<x>_<y>.png, "
                                  "e.g. tumor_001_69916_134313.png")
                continue
            slide = m["slide"].lower()
            if slide not in slides:
                slides[slide] = _load_outlines(outline_files.get(slide), s)
            if slides[slide] is None:
                s.problems.add(f, f"no outlines for slide {m['slide']}: expected {notes}/{m['slide'].title()}.json")
                continue
            size = image_size(f)
            if size is None:
                s.problems.add(f, "unreadable image")
                continue
            corner = (int(m["x"]), int(m["y"]))
            s.items.append(Item(f, cls, f.stem, outline=_clip_outline(corner, size, *slides[slide])))
    s.license_dirs = [s.root] if base != s.root else [s.root, s.root.parent]


def _load_outlines(path: Path | None, s: Source) -> list | None:
    """A slide's outlines as (positive, negative) lists of vertex tuples, or None (missing or unreadable)."""
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
        return [[tuple((float(x), float(y)) for x, y in poly["vertices"]) for poly in raw.get(key, [])]
                for key in ("positive", "negative")]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        s.problems.add(path, f"not an outline file ({type(exc).__name__}): expected "
                             '{"positive": [{"vertices": [[x, y], ...]}], "negative": [...]}')
        return None


def _clip_outline(corner, size, positive, negative) -> tuple:
    """The outline of one patch: only the polygons whose bounding box meets the patch are kept."""
    x0, y0 = corner
    x1, y1 = x0 + size[0], y0 + size[1]

    def meets(poly):
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        return min(xs) < x1 and max(xs) >= x0 and min(ys) < y1 and max(ys) >= y0

    return (tuple(corner), tuple(size), tuple(p for p in positive if meets(p)), tuple(p for p in negative if meets(p)))


def draw_outline(corner: tuple[int, int], size: tuple[int, int], positive, negative) -> np.ndarray:
    """The (height, width) boolean mask of a patch whose top-left corner is ``corner`` in the slide's pixels:
    inside a positive polygon and not inside a negative one (PIL's polygon fill: boundary pixels are inside)."""
    from PIL import ImageDraw

    x0, y0 = corner
    canvas = Image.new("L", tuple(size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygons, fill in ((positive, 255), (negative, 0)):
        for poly in polygons:
            if len(poly) >= 3:
                draw.polygon([(x - x0, y - y0) for x, y in poly], fill=fill)
    return np.asarray(canvas) > 127


def _guess_dataset(root: Path, fallback: str) -> str:
    """A known dataset by the folder's name or the title of its PROVENANCE.md; else ``fallback``."""
    words = [root.name.lower()]
    provenance = root / "PROVENANCE.md"
    if provenance.is_file():
        title = provenance.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].split()
        words += [w.lower() for w in title[1:2]]
    return next((w for w in words if w in SOURCES), fallback)


#: The reader of each row of :data:`wbclib.data.sources.SOURCES` (``sources.reader_of``).
READERS = {"pbc": _read_pbc, "raabin": _read_raabin, "segwbc": _read_segwbc, "folders": _read_folders,
           "tiles": _read_tiles, "ebhi": _read_ebhi, "camelyon16": _read_camelyon16}


def _unique(items: list[Item]) -> list[Item]:
    """Give items of the same class the same output name no more than once (``name-2``, ``name-3``, ...)."""
    seen, result = set(), []
    for item in items:
        name, k = item.name, 1
        while (item.cls, name.lower()) in seen:
            k += 1
            name = f"{item.name}-{k}"
        seen.add((item.cls, name.lower()))
        result.append(item if name == item.name else replace(item, name=name))
    return result


def _settle(sources: list[Source], skip_bad: bool) -> list[dict]:
    """One error for every bad file of every source, or leave them out; returns the skipped files."""
    errors = []
    for s in sources:
        try:
            s.problems.settle(skip_bad)
        except DatasetError as exc:
            errors.append(str(exc))
    if errors:
        raise DatasetError("\n".join(errors))
    skipped = []
    for s in sources:
        bad = s.problems.bad_paths()
        s.items, s.unlabelled = _drop_bad(s.items, bad), _drop_bad(s.unlabelled, bad)
        s.externals = {k: _drop_bad(v, bad) for k, v in s.externals.items()}
        skipped += [{"path": str(p), "why": why} for p, why in s.problems.items]
        if not s.items and not s.unlabelled and not any(s.externals.values()):
            raise s.layout_error("no usable image left")
    return skipped


def _drop_bad(items: list[Item], bad: set[Path]) -> list[Item]:
    return [replace(i, mask=None) if i.mask in bad else i for i in items
            if i.path not in bad and i.path.parent not in bad]


# --------------------------------------------------------------------------------------------- the split


def _shuffled(items: list[Item], seed: int, purpose: str, cls: str) -> list[Item]:
    ordered = sorted(items, key=lambda i: (i.name, str(i.path)))
    random.Random(f"{seed}/{purpose}/{cls}").shuffle(ordered)
    return ordered


def _share(n: int, fraction: float) -> int:
    """round(fraction * n), but at least 1 and at most n - 1 when n >= 2 (0 when n < 2)."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(fraction * n + 0.5)))


def _split_pool(items: list[Item], opts: Options) -> tuple[dict, dict]:
    """Per class: shuffle, cap (--per-class, --balanced), then the first share is validation."""
    pool = {c: _shuffled([i for i in items if i.cls == c], opts.seed, "pool", c) for c in WBC_CLASSES}
    cap = opts.per_class
    if opts.balanced:
        smallest = min((len(v) for v in pool.values() if v), default=0)
        cap = smallest if cap is None else min(cap, smallest)
    train, val = {}, {}
    for c, items_c in pool.items():
        items_c = items_c[:cap] if cap is not None else items_c
        k = _share(len(items_c), opts.val_fraction)
        val[c], train[c] = items_c[:k], items_c[k:]
    return train, val


def _spread_masks(items: list[Item]) -> list[Item]:
    """Masked items at evenly spaced places, the first place included; the others keep their order."""
    masked = [i for i in items if i.masked]
    plain = iter(i for i in items if not i.masked)
    if not masked:
        return items
    slots = {k * len(items) // len(masked) for k in range(len(masked))}
    masked_iter = iter(masked)
    return [next(masked_iter) if pos in slots else next(plain) for pos in range(len(items))]


def _rel(path: Path) -> str:
    """A folder of the course layout relative to the output root, as the plan's keys write it."""
    return path.as_posix()


def _plan(sources: list[Source], opts: Options) -> Plan:
    plan, main = Plan(), sources[0]
    if main.role == "main":
        _plan_pool(plan, sources, opts)
    prcc_given = any(s.role == "tiles" and s.name == layout.PRCC_FOLDER for s in sources)
    for s in sources:
        if s.role == "cam16":
            _plan_cam16(plan, s, opts, tiles=not prcc_given)
        for name, items in s.externals.items():
            top = s is main and s.role == "external"  # a test set prepared on its own: data/ and mask/ at the top
            folder = f"{layout.EXTERNAL}/{name}"
            _plan_external(plan, s.kind if top else folder, "" if top else folder, items, s)
        if s.role == "tiles":
            for item in s.items:
                plan.add(item, s.name, s.name, None, s)
    return plan


def _plan_pool(plan: Plan, sources: list[Source], opts: Options) -> None:
    """The WBC subsets and the validation split from the pool, with the training share of the masked set."""
    train, val = _split_pool(sources[0].items, opts)
    for s in sources:
        if s.role == "masked":
            held = {}
            for c in WBC_CLASSES:
                items_c = _shuffled([i for i in s.items if i.cls == c], opts.seed, "masked", c)
                k = _share(len(items_c), opts.masked_held_out)
                held[c], train[c] = items_c[:k], train[c] + items_c[k:]
            s.externals = {s.name: [i for c in WBC_CLASSES for i in held[c]]}
    _plan_course(plan, train, val, sources, opts.seed)


def _plan_cam16(plan: Plan, s: Source, opts: Options, tiles: bool) -> None:
    """Per class: shuffle, then the test share, the validation share and the rest for training. A share
    ``mask_fraction`` of each class's training images keeps its mask (spread evenly through the class's order),
    the validation split none, the test split every one; the unlabelled group becomes ``pRCC_nolabel/``."""
    tr, va, te = opts.split
    for split in ("train", "val", "test"):
        plan.counts[_rel(layout.cam16_split(Path(), split))] = {c: {"images": 0, "masks": 0} for c in CAM16_CLASSES}
    for c in CAM16_CLASSES:
        order = _shuffled([i for i in s.items if i.cls == c], opts.seed, "cam16", c)
        n_test = min(len(order), max(1, int(len(order) * te / (tr + va + te) + 0.5))) if order else 0
        n_val = min(len(order) - n_test, int(len(order) * va / (tr + va + te) + 0.5))
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
        n_mask = min(len(train), max(1, int(opts.mask_fraction * len(train) + 0.5))) if opts.mask_fraction > 0 else 0
        keep = {k * len(train) // n_mask for k in range(n_mask)} if n_mask else set()
        train = [i if k in keep else replace(i, mask=None, outline=None) for k, i in enumerate(train)]
        for split, items in (("train", train), ("val", [replace(i, mask=None, outline=None) for i in val]),
                             ("test", test)):
            base = layout.cam16_split(Path(), split)
            for item in sorted(items, key=lambda i: i.name):
                plan.add(item, _rel(base), _rel(layout.images(base) / c), _rel(layout.masks(base) / c), s)
    if tiles:
        for item in sorted(s.unlabelled, key=lambda i: i.name):
            plan.add(item, layout.PRCC_FOLDER, layout.PRCC_FOLDER, None, s)
    elif s.unlabelled:
        s.left_out["tiles group (pRCC_nolabel/ given by --tiles)"] = len(s.unlabelled)


def _plan_course(plan: Plan, train: dict, val: dict, sources: list[Source], seed: int) -> None:
    """Nested subsets: WBC_p holds the first max(1, p% of n) of each class's (seeded) training order."""
    val_dir = layout.wbc_split(Path(), 100, "val")
    for key in [_rel(layout.wbc_split(Path(), p, "train")) for p in WBC_SUBSETS] + [_rel(val_dir)]:
        plan.counts[key] = {c: {"images": 0, "masks": 0} for c in WBC_CLASSES}
    for c in WBC_CLASSES:
        order = _spread_masks(_shuffled(train[c], seed, "train", c))
        for p in WBC_SUBSETS:
            k = max(1, p * len(order) // 100) if order else 0
            base = layout.wbc_split(Path(), p, "train")
            for item in order[:k]:
                plan.add(item, _rel(base), _rel(layout.images(base) / c), _rel(layout.masks(base) / c),
                         sources[item.src])
        for item in sorted(val[c], key=lambda i: i.name):
            plan.add(item, _rel(val_dir), _rel(layout.images(val_dir) / c), None, sources[item.src])


def _plan_external(plan: Plan, key: str, base: str, items: list[Item], source: Source) -> None:
    with_masks, top = any(i.masked for i in items), f"{base}/" if base else ""
    for item in sorted(items, key=lambda i: (i.cls, i.name)):
        if with_masks:
            plan.add(item, key, f"{top}{layout.IMAGES}/{item.cls}", f"{top}{layout.MASKS}/{item.cls}", source)
        else:
            plan.add(item, key, f"{top}{item.cls}", None, source)


# ------------------------------------------------------------------------------------------------ writing


def _encode(item: Item, opts: Options, with_mask: bool) -> tuple[str, bytes, bytes | None]:
    """(file suffix, image bytes, mask PNG bytes or None). A JPEG kept at its size is copied unchanged."""
    with Image.open(item.path) as probe:
        fmt, full = probe.format, probe.size
    if fmt == "JPEG" and opts.size is None and item.box is None:
        suffix, data, size = item.path.suffix, item.path.read_bytes(), full
    else:
        img = open_image(item.path, draft_size=opts.size if item.box is None else None)
        if item.box is not None:
            img, full = img.crop(item.box), (item.box[2] - item.box[0], item.box[3] - item.box[1])
        img = resize_shorter(img, full, opts.size)
        suffix, data, size = ".jpg", jpeg_bytes(img, opts.quality), img.size
    if not with_mask or not item.masked:
        return suffix, data, None
    cell = (draw_outline(*item.outline) if item.outline is not None
            else np.asarray(open_image(item.mask, mode="L")) > item.cut)
    mask = Image.fromarray(cell.astype(np.uint8) * 255, "L")
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return suffix, data, buf.getvalue()


def _put(root: Path, rel: str, data: bytes, digest: str, files: dict[str, str]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[rel] = digest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_jobs(root: Path, plan: Plan, opts: Options, progress: bool) -> dict[str, str]:
    from tqdm import tqdm

    files: dict[str, str] = {}
    for item, places in tqdm(plan.jobs.items(), desc="prepare", unit="img", disable=not progress):
        suffix, image, mask = _encode(item, opts, any(m is not None for _, m in places))
        image_sha, mask_sha = _sha(image), _sha(mask) if mask is not None else ""
        for image_dir, mask_dir in places:
            _put(root, f"{image_dir}/{item.name}{suffix}", image, image_sha, files)
            if mask_dir is not None:
                _put(root, f"{mask_dir}/{item.name}.png", mask, mask_sha, files)
    return files


def _copy_licenses(root: Path, sources: list[Source], files: dict[str, str]) -> None:
    for s in sources:
        for folder in s.license_dirs:
            for f in visible(folder):
                if f.is_file() and (f.name.upper().startswith("LICENSE") or f.name == "PROVENANCE.md"):
                    rel = f"licenses/{s.dataset}-{f.name}"
                    if rel not in files:
                        data = f.read_bytes()
                        _put(root, rel, data, _sha(data), files)
                    s.license_files.append(rel)


def _build(out: Path, plan: Plan, sources: list[Source], args: dict, skipped: list[dict], opts: Options,
           progress: bool | None) -> dict:
    """Write everything into a hidden sibling of ``out`` and rename it into place when complete."""
    progress = sys.stderr.isatty() if progress is None else progress
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = _write_jobs(tmp, plan, opts, progress)
        _copy_licenses(tmp, sources, files)
        for name, text in (("PROVENANCE.md", _attribution(sources, plan)), ("LICENSE.md", _license(sources))):
            _put(tmp, name, text.encode(), _sha(text.encode()), files)
        manifest = _manifest(args, sources, plan, skipped, files)
        write_json(tmp / "manifest.json", manifest)
        if out.exists():
            out.rmdir()  # empty (checked before); fails if something appeared meanwhile
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# --------------------------------------------------------------------------------- manifest, attribution


def _arguments(source, from_dir, masked, external, tiles, cam16, smear_tiles, opts: Options) -> dict:
    return {"source": source, "from": str(from_dir), "seed": opts.seed, "val_fraction": opts.val_fraction,
            "per_class": opts.per_class, "balanced": opts.balanced,
            "masked": None if masked is None else {"kind": masked[0], "path": str(masked[1])},
            "masked_held_out": opts.masked_held_out, "external": {k: str(v) for k, v in external.items()},
            "tiles": None if tiles is None else str(tiles), "tiles_per_image": opts.tiles_per_image,
            "cam16": None if cam16 is None else {"kind": cam16[0], "path": str(cam16[1])},
            "smear_tiles": None if smear_tiles is None else str(smear_tiles),
            "grouping": ",".join(f"{t}={'+'.join(n)}" for t, n in opts.grouping), "split": list(opts.split),
            "mask_fraction": opts.mask_fraction,
            "size": opts.size, "quality": opts.quality, "skip_bad": opts.skip_bad}


def _manifest(args: dict, sources: list[Source], plan: Plan, skipped: list[dict], files: dict) -> dict:
    left_out: dict[str, int] = {}
    for s in sources:
        for k, v in s.left_out.items():
            left_out[k] = left_out.get(k, 0) + v
    described = [{"role": s.role, "kind": s.kind, "dataset": s.dataset, "path": s.given,
                  "license": _terms(s.dataset)[0], "citation": _terms(s.dataset)[1], "taken": s.taken,
                  "license_files": s.license_files} for s in sources]
    return {"prepared_by": f"wbc prepare (wbclib {__version__})", "arguments": args, "sources": described,
            "counts": plan.counts, "left_out": dict(sorted(left_out.items())), "skipped": skipped,
            "files": dict(sorted(files.items()))}


_ROLES = {"main": "the labelled pool: training subsets and validation split",
          "masked": "labelled images with expert masks", "external": "an external test set",
          "tiles": "unlabelled tiles for reconstruction pretraining",
          "cam16": "histology for the CAM16 stage (normal / tumour, with masks) and the reconstruction stage"}
_LEFT_OUT = {"main": "not one of the five classes", "masked": "not one of the five classes",
             "external": "not one of the classes", "cam16": "not in the grouping", "tiles": ""}


def _license(sources: list[Source]) -> str:
    """The licenses the files of this folder are under: each source's own (no new license is granted)."""
    lines = ["# Licenses", "",
             ("The files in this folder keep the licenses of the datasets they were taken from; `PROVENANCE.md` "
              "says which files come from which source. The license texts that the sources ship are in "
              "`licenses/`."), ""]
    for s in sources:
        license_, _ = _terms(s.dataset)
        texts = [f for f in s.license_files if "LICENSE" in Path(f).name.upper()]
        lines.append(f"- **{s.dataset}** ({_ROLES[s.role]}): {license_}"
                     + (f"; text in {', '.join(f'`{t}`' for t in texts)}" if texts else "") + ".")
    return "\n".join(lines) + "\n"


def _attribution(sources: list[Source], plan: Plan) -> str:
    lines = ["# Where these images come from", "",
             ("This folder was assembled by `wbc prepare` from the public datasets below and arranged in the "
             "course layout. These are NOT the course data: the images come from other laboratories, "
             "microscopes and stains, so results on them are not comparable with results on the course's "
             "own sets. Reuse them only as each source's license allows, and cite the sources."), ""]
    for s in sources:
        license_, citation = _terms(s.dataset)
        taken = ", ".join(f"{n} images in {k}" for k, n in s.taken.items()) or "nothing"
        left = ", ".join(f"{k} ({n})" for k, n in sorted(s.left_out.items()))
        lines += [f"## {s.dataset}: {_ROLES[s.role]}", "",
                  f"- Read from `{s.given}` ({s.kind} layout, option {s.option}).",
                  f"- Taken: {taken}." + (f" Left out ({_LEFT_OUT[s.role]}): {left}." if left else ""),
                  f"- Citation: {citation}.", f"- License: {license_}.",
                  f"- License and provenance files: {', '.join(s.license_files) or 'none found in the source'}.",
                  ""]
    return "\n".join(lines)
