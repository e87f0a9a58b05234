"""Turn a public white-blood-cell dataset into the course layout (``wbc prepare``).

Sources (the first argument of ``wbc prepare``):

* ``pbc``: the PBC dataset as released, ``<dir>/PBC_dataset_normal_DIB/<lower-case class>/*.jpg``. Its
  classes outside the five (erythroblast, ig, platelet, ...) are left out and counted.
* ``raabin``: Raabin-WBC's release, ``<dir>/Train/<Class>/`` (the pool), and optionally ``TestA/`` and
  ``TestB/``, which become the external sets ``external/TestA/`` and ``external/TestB/``.
* ``segwbc``: the segwbc crops with expert nucleus/cytoplasm masks, as released (``Dataset <n>/NNN.bmp`` +
  ``NNN.png`` labelled by ``Class Labels of Dataset <n>.csv``) or arranged in class folders
  (``dataset<n>/{data,mask}/<Class>/``). The cell mask is nucleus plus cytoplasm: pixel > 64.
* ``folders``: any class-folder set, scanned exactly as :func:`wbclib.data.folder_records` scans it.

What is written under ``--out``::

    WBC_<n>/train/data/<Class>/<name>.jpg    n in WBC_SUBSETS, nested: WBC_1 ⊂ WBC_10 ⊂ WBC_50 ⊂ WBC_100
    WBC_<n>/train/mask/<Class>/<name>.png    binary 0/255 masks, same stem as their image
    WBC_100/val/data/<Class>/<name>.jpg      the shared validation split
    external/<NAME>/...                      class-folder sets kept apart from training
    pRCC_nolabel/<stem>_t<k>.jpg             square tiles of whole smear photographs (--tiles)
    manifest.json, PROVENANCE.md, LICENSE.md, licenses/

Every choice follows from ``--seed``; the same command gives a byte-identical tree. All source files are
checked before anything is written (one error lists the bad ones), nothing is ever written inside a source,
and the tree is built in a hidden sibling folder that is renamed to ``--out`` only once it is complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
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

from . import WBC_CLASSES, WbcError, __version__
from .data import (
    IMAGE_EXTENSIONS,
    LAYOUT_FOLDERS,
    WBC_SUBSETS,
    DatasetError,
    Problems,
    Record,
    canonical_class,
    check_image,
    check_records,
    image_size,
    open_image,
    resize_shorter,
    scan_class_folders,
    visible,
)
from .runs import write_json
from .transforms import jpeg_bytes

SOURCES = ("pbc", "raabin", "segwbc", "folders")
MASKED_KINDS = ("segwbc", "folders")
PBC_FOLDER = "PBC_dataset_normal_DIB"
RAABIN_TESTS = ("TestA", "TestB")
#: segwbc label CSVs: 1=neutrophil 2=lymphocyte 3=monocyte 4=eosinophil 5=basophil
SEGWBC_LABELS = {1: "Neutrophil", 2: "Lymphocyte", 3: "Monocyte", 4: "Eosinophil", 5: "Basophil"}

LAYOUTS = {
    "pbc": f"<dir>/{PBC_FOLDER}/<lower-case class>/*.jpg (or <dir> being {PBC_FOLDER} itself)",
    "raabin": "<dir>/Train/<Class>/<image>, optionally <dir>/TestA/<Class>/ and <dir>/TestB/<Class>/",
    "segwbc": ("<dir>/Dataset <n>/NNN.bmp + NNN.png with '<dir>/Class Labels of Dataset <n>.csv', or "
               "<dir>/dataset<n>/data/<Class>/NNN.bmp + <dir>/dataset<n>/mask/<Class>/NNN.png, or one "
               "such dataset<n> folder"),
    "folders": LAYOUT_FOLDERS,
    "tiles": "<dir>/**/<photo>.jpg (whole smear photographs, at any depth)",
}

_NOT_STATED = "not stated: check the source"
_BCCD = ("MIT (BCCD_Dataset)", "BCCD_Dataset, https://github.com/Shenggan/BCCD_Dataset")
#: dataset -> (license, citation). Unknown folders fall back to "folders".
LICENSES = {
    "pbc": ("CC BY 4.0", ("Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J. A dataset of "
            "microscopic peripheral blood cell images for development of automatic recognition systems. "
            "Data in Brief 30:105474 (2020). Mendeley Data, doi:10.17632/snkd93bnjr.1")),
    "segwbc": ("GPL-3.0", ("Zheng X., Wang Y., Wang G., Liu J. Fast and robust segmentation of white blood "
               "cell images by self-supervised learning. Micron 107:55-71 (2018); images of Dataset 1 from "
               "Jiangxi Tecom Science Corporation, of Dataset 2 from the CellaVision blog")),
    "bccd": _BCCD,
    "bccd-smears": _BCCD,
    "raabin": ("see the release", ("Kouzehkanan Z. M. et al. A large dataset of white blood cells containing "
               "cell locations and types, along with segmented nuclei and cytoplasm. Sci. Rep. 12:1123 (2022)")),
    "folders": (_NOT_STATED, _NOT_STATED),
}


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


@dataclass
class Source:
    """One source folder and what was read from it."""

    role: str  # main, masked, external, tiles
    kind: str  # its reader: pbc, raabin, segwbc, folders, tiles
    option: str  # the command-line option that named it
    given: str  # its path as given
    name: str = ""  # the external set's name
    index: int = 0
    dataset: str = "folders"  # key of LICENSES
    items: list[Item] = field(default_factory=list)
    externals: dict[str, list[Item]] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    license_dirs: list[Path] = field(default_factory=list)
    license_files: list[str] = field(default_factory=list)
    taken: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.given)
        self.problems = Problems(self.root, LAYOUTS[self.kind])
        self.dataset = self.kind if self.kind in LICENSES else "folders"

    def layout_error(self, what: str) -> DatasetError:
        return DatasetError(f"{self.option} {self.given}: {what}; expected layout ({self.kind}): "
                            f"{LAYOUTS[self.kind]}")


@dataclass
class Plan:
    """Where each item goes (image folder, mask folder or None) and the counts per split and class."""

    jobs: dict[Item, list[tuple[str, str | None]]] = field(default_factory=dict)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def add(self, item: Item, key: str, image_dir: str, mask_dir: str | None, source: Source) -> None:
        mask_dir = mask_dir if item.mask is not None else None
        self.jobs.setdefault(item, []).append((image_dir, mask_dir))
        count = self.counts.setdefault(key, {}).setdefault(item.cls or "unlabelled", {"images": 0, "masks": 0})
        count["images"] += 1
        count["masks"] += mask_dir is not None
        if not key.startswith("WBC_") or key.startswith("WBC_100/"):
            source.taken[key] = source.taken.get(key, 0) + 1


# ---------------------------------------------------------------------------------------------- the entry


def prepare(source: str, from_dir: str | Path, out: str | Path, *, seed: int = 0, val_fraction: float = 0.2,
            per_class: int | None = None, balanced: bool = False,
            masked: tuple[str, str | Path] | None = None, masked_held_out: float = 0.3,
            external: Mapping[str, str | Path] | None = None, tiles: str | Path | None = None,
            tiles_per_image: int | None = None, size: int | None = None, quality: int = 90,
            skip_bad: bool = False, progress: bool | None = None) -> dict:
    """Write the course layout under ``out`` from the ``source`` dataset in ``from_dir``.

    Args:
        source: ``pbc``, ``raabin``, ``segwbc`` or ``folders``.
        seed: every random choice (split, subset order) follows from it.
        val_fraction: share of each class of the pool that becomes the validation split.
        per_class: at most this many images per class in the pool (the first after the seeded shuffle).
        balanced: cap every class of the pool at the size of the smallest. Both caps apply to the pool of
            ``from_dir`` only; the training share of ``masked`` is added on top.
        masked: ``(kind, folder)`` of an extra labelled set with masks (kind ``segwbc`` or ``folders``); a
            share ``masked_held_out`` per class becomes ``external/<kind>/``, the rest joins training.
        external: ``{name: folder}`` class-folder sets copied to ``external/<name>/``.
        tiles: folder of whole smear photographs cut into square tiles for ``pRCC_nolabel/``, at most
            ``tiles_per_image`` per photograph.
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
                    skip_bad)
    external = dict(external or {})
    sources = _sources(source, from_dir, masked, external, tiles)
    out = Path(out)
    _refuse_out(out, sources)
    for s in sources:
        _read(s, opts)
    skipped = _settle(sources, opts.skip_bad)
    plan = _plan(sources, opts)
    args = _arguments(source, from_dir, masked, external, tiles, opts)
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
             skip_bad) -> Options:
    if not 0 < val_fraction < 1:
        raise WbcError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0 <= masked_held_out < 1:
        raise WbcError(f"--masked-held-out must be in [0, 1), got {masked_held_out}")
    for flag, value in (("--per-class", per_class), ("--tiles-per-image", tiles_per_image), ("--size", size)):
        if value is not None and value < 1:
            raise WbcError(f"{flag} must be a positive integer, got {value}")
    if not 1 <= quality <= 100:
        raise WbcError(f"--quality must be between 1 and 100, got {quality}")
    return Options(int(seed), float(val_fraction), per_class, bool(balanced), float(masked_held_out),
                   tiles_per_image, size, int(quality), bool(skip_bad))


def _sources(source, from_dir, masked, external, tiles) -> list[Source]:
    if source not in SOURCES:
        raise WbcError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    sources = [Source("main", source, "--from", str(from_dir))]
    taken = set(RAABIN_TESTS) if source == "raabin" else set()
    if masked is not None:
        kind, path = masked
        if kind not in MASKED_KINDS:
            raise WbcError(f"--masked kind must be one of {', '.join(MASKED_KINDS)}, got {kind!r}")
        sources.append(Source("masked", kind, "--masked", str(path), name=kind))
        taken.add(kind)
    for name, path in external.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in taken:
            raise WbcError(f"--external name {name!r} is not a plain folder name or is already used "
                           f"({', '.join(sorted(taken)) or 'none yet'})")
        taken.add(name)
        sources.append(Source("external", "folders", "--external", str(path), name=name))
    if tiles is not None:
        sources.append(Source("tiles", "tiles", "--tiles", str(tiles)))
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
    readers = {"pbc": _read_pbc, "raabin": _read_raabin, "segwbc": _read_segwbc, "folders": _read_folders}
    if s.kind == "tiles":
        _read_tiles(s, opts.tiles_per_image)
    else:
        readers[s.kind](s)
        s.items = _unique([replace(i, src=s.index) for i in s.items])
        s.externals = {k: _unique([replace(i, src=s.index) for i in v]) for k, v in s.externals.items()}
        for items in [s.items, *s.externals.values()]:
            check_records([Record(i.path, 0, i.mask) for i in items], s.problems)
    if s.role == "external":
        s.externals, s.items = {s.name: s.items}, []
    if s.kind in ("folders", "tiles"):
        s.dataset = _guess_dataset(s.root)
    if not s.items and not any(s.externals.values()) and not s.problems.items:
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


def _read_pbc(s: Source) -> None:
    base = s.root / PBC_FOLDER if (s.root / PBC_FOLDER).is_dir() else s.root
    if base.name != PBC_FOLDER:  # the PBC license and citation go into the manifest: only for PBC's own folder
        raise s.layout_error(f"no {PBC_FOLDER} folder (for another class-folder set, use the 'folders' source)")
    if not any(d.is_dir() and _course_class(d.name) for d in visible(base)):
        raise s.layout_error("no class folder of basophil, eosinophil, lymphocyte, monocyte or neutrophil")
    s.license_dirs = [s.root] if base != s.root else [s.root, s.root.parent]
    s.items = _class_tree(base, s)


def _read_raabin(s: Source) -> None:
    parts = {d.name.lower(): d for d in visible(s.root) if d.is_dir()}
    if "train" not in parts:
        raise s.layout_error("no Train folder")
    s.items = _class_tree(parts["train"], s)
    for name in RAABIN_TESTS:
        if name.lower() in parts:
            s.externals[name] = _class_tree(parts[name.lower()], s, left_prefix=f"{name}/")
    s.license_dirs = [s.root]


def _read_segwbc(s: Source) -> None:
    if (s.root / "data").is_dir():  # one arranged dataset folder
        s.items = _segwbc_arranged(s.root, s)
        s.license_dirs = [s.root, s.root.parent]
        return
    folders = [d for d in visible(s.root) if d.is_dir()]
    arranged = [d for d in folders if (d / "data").is_dir()]
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
    records = scan_class_folders(folder / "data", WBC_CLASSES, s.problems, folder / "mask", check=False)
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


def _read_folders(s: Source) -> None:
    """The scan of :func:`wbclib.data.folder_records`: ``<dir>/<Class>/*`` or ``<dir>/data`` + ``<dir>/mask``."""
    data_dir, mask_dir = s.root, None
    if (data_dir / "data").is_dir():
        data_dir, mask_dir = data_dir / "data", data_dir / "mask"
    s.problems = Problems(data_dir, LAYOUT_FOLDERS)
    records = scan_class_folders(data_dir, WBC_CLASSES, s.problems, mask_dir, check=False)
    s.items = [Item(r.path, WBC_CLASSES[r.label], r.path.stem, r.mask_path) for r in records]
    s.license_dirs = [s.root]


def _read_tiles(s: Source, per_image: int | None) -> None:
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


def _guess_dataset(root: Path) -> str:
    """A known dataset by the folder's name or the title of its PROVENANCE.md; else 'folders'."""
    words = [root.name.lower()]
    provenance = root / "PROVENANCE.md"
    if provenance.is_file():
        title = provenance.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].split()
        words += [w.lower() for w in title[1:2]]
    return next((w for w in words if w in LICENSES), "folders")


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
        s.items = _drop_bad(s.items, bad)
        s.externals = {k: _drop_bad(v, bad) for k, v in s.externals.items()}
        skipped += [{"path": str(p), "why": why} for p, why in s.problems.items]
        if not s.items and not any(s.externals.values()):
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
    masked = [i for i in items if i.mask is not None]
    plain = iter(i for i in items if i.mask is None)
    if not masked:
        return items
    slots = {k * len(items) // len(masked) for k in range(len(masked))}
    masked_iter = iter(masked)
    return [next(masked_iter) if pos in slots else next(plain) for pos in range(len(items))]


def _plan(sources: list[Source], opts: Options) -> Plan:
    plan, main = Plan(), sources[0]
    train, val = _split_pool(main.items, opts)
    for s in sources:
        if s.role == "masked":
            held = {}
            for c in WBC_CLASSES:
                items_c = _shuffled([i for i in s.items if i.cls == c], opts.seed, "masked", c)
                k = _share(len(items_c), opts.masked_held_out)
                held[c], train[c] = items_c[:k], train[c] + items_c[k:]
            s.externals = {s.name: [i for c in WBC_CLASSES for i in held[c]]}
    _plan_course(plan, train, val, sources, opts.seed)
    for s in sources:
        for name, items in s.externals.items():
            _plan_external(plan, name, items, s)
        if s.role == "tiles":
            for item in s.items:
                plan.add(item, "pRCC_nolabel", "pRCC_nolabel", None, s)
    return plan


def _plan_course(plan: Plan, train: dict, val: dict, sources: list[Source], seed: int) -> None:
    """Nested subsets: WBC_p holds the first max(1, p% of n) of each class's (seeded) training order."""
    for key in [f"WBC_{p}/train" for p in WBC_SUBSETS] + ["WBC_100/val"]:
        plan.counts[key] = {c: {"images": 0, "masks": 0} for c in WBC_CLASSES}
    for c in WBC_CLASSES:
        order = _spread_masks(_shuffled(train[c], seed, "train", c))
        for p in WBC_SUBSETS:
            k = max(1, p * len(order) // 100) if order else 0
            for item in order[:k]:
                base = f"WBC_{p}/train"
                plan.add(item, base, f"{base}/data/{c}", f"{base}/mask/{c}", sources[item.src])
        for item in sorted(val[c], key=lambda i: i.name):
            plan.add(item, "WBC_100/val", f"WBC_100/val/data/{c}", None, sources[item.src])


def _plan_external(plan: Plan, name: str, items: list[Item], source: Source) -> None:
    base, with_masks = f"external/{name}", any(i.mask is not None for i in items)
    for item in sorted(items, key=lambda i: (i.cls, i.name)):
        if with_masks:
            plan.add(item, base, f"{base}/data/{item.cls}", f"{base}/mask/{item.cls}", source)
        else:
            plan.add(item, base, f"{base}/{item.cls}", None, source)


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
    if not with_mask or item.mask is None:
        return suffix, data, None
    cell = np.asarray(open_image(item.mask, mode="L")) > item.cut
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


def _arguments(source, from_dir, masked, external, tiles, opts: Options) -> dict:
    return {"source": source, "from": str(from_dir), "seed": opts.seed, "val_fraction": opts.val_fraction,
            "per_class": opts.per_class, "balanced": opts.balanced,
            "masked": None if masked is None else {"kind": masked[0], "path": str(masked[1])},
            "masked_held_out": opts.masked_held_out, "external": {k: str(v) for k, v in external.items()},
            "tiles": None if tiles is None else str(tiles), "tiles_per_image": opts.tiles_per_image,
            "size": opts.size, "quality": opts.quality, "skip_bad": opts.skip_bad}


def _manifest(args: dict, sources: list[Source], plan: Plan, skipped: list[dict], files: dict) -> dict:
    left_out: dict[str, int] = {}
    for s in sources:
        for k, v in s.left_out.items():
            left_out[k] = left_out.get(k, 0) + v
    described = [{"role": s.role, "kind": s.kind, "dataset": s.dataset, "path": s.given,
                  "license": LICENSES[s.dataset][0], "citation": LICENSES[s.dataset][1], "taken": s.taken,
                  "license_files": s.license_files} for s in sources]
    return {"prepared_by": f"wbc prepare (wbclib {__version__})", "arguments": args, "sources": described,
            "counts": plan.counts, "left_out": dict(sorted(left_out.items())), "skipped": skipped,
            "files": dict(sorted(files.items()))}


_ROLES = {"main": "the labelled pool: training subsets and validation split",
          "masked": "labelled images with expert masks", "external": "an external test set",
          "tiles": "unlabelled tiles for reconstruction pretraining"}


def _license(sources: list[Source]) -> str:
    """The licenses the files of this folder are under: each source's own (no new license is granted)."""
    lines = ["# Licenses", "",
             ("The files in this folder keep the licenses of the datasets they were taken from; `PROVENANCE.md` "
              "says which files come from which source. The license texts that the sources ship are in "
              "`licenses/`."), ""]
    for s in sources:
        license_, _ = LICENSES[s.dataset]
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
        license_, citation = LICENSES[s.dataset]
        taken = ", ".join(f"{n} images in {k}" for k, n in s.taken.items()) or "nothing"
        left = ", ".join(f"{k} ({n})" for k, n in sorted(s.left_out.items()))
        lines += [f"## {s.dataset}: {_ROLES[s.role]}", "",
                  f"- Read from `{s.given}` ({s.kind} layout, option {s.option}).",
                  f"- Taken: {taken}." + (f" Left out (not one of the five classes): {left}." if left else ""),
                  f"- Citation: {citation}.", f"- License: {license_}.",
                  f"- License and provenance files: {', '.join(s.license_files) or 'none found in the source'}.",
                  ""]
    return "\n".join(lines)
