"""The course folder layout, in one place: where each split's images and masks live.

The readers (:mod:`wbclib.data.readers`), the synthetic generator (:mod:`wbclib.data.synth`) and the importer
(:mod:`wbclib.data.prepare`) all build their paths here::

    <root>/WBC_<n>/train/data/<Class>/<name>.jpg      n in WBC_SUBSETS; nested: WBC_1 ⊂ WBC_10 ⊂ WBC_50 ⊂ WBC_100
    <root>/WBC_<n>/train/mask/<Class>/<name>.png      binary masks, the image's file stem
    <root>/WBC_100/val/data/<Class>/<name>.jpg        the one validation split
    <root>/CAM16_100cls_10mask/{train,val,test}/data/{normal,tumor}/<name>.jpg, masks in <split>/mask/
    <root>/pRCC_nolabel/**/<name>.jpg                 unlabelled tiles (any depth)
    <dir>/<Class>/<image>  or  <dir>/data/<Class>/<image> + <dir>/mask/<Class>/   any class-folder set
"""

from __future__ import annotations

from pathlib import Path

from wbclib import WBC_CLASSES

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

#: The two halves of a split folder: images by class, and masks by class with the image's file stem.
IMAGES, MASKS = "data", "mask"
CAM16_FOLDER = "CAM16_100cls_10mask"
PRCC_FOLDER = "pRCC_nolabel"
#: The tiles of whole blood-smear photographs, an alternative to ``pRCC_nolabel/`` for the reconstruction stage.
SMEAR_FOLDER = "smears_nolabel"
#: Labelled test sets beside the course folders (``external/<set>/``, class folders).
EXTERNAL = "external"

LAYOUT_WBC = ("<root>/WBC_<n>/train/data/<Class>/<name>.jpg, masks in <root>/WBC_<n>/train/mask/<Class>/ with the "
              "image's file stem, validation in <root>/WBC_100/val/data/<Class>/ (or <root>/WBC_test/val/data/); "
              "classes " + ", ".join(WBC_CLASSES))
LAYOUT_CAM16 = (f"<root>/{CAM16_FOLDER}/{{train,val,test}}/data/{{normal,tumor}}/<name>.jpg, masks in "
                f"<root>/{CAM16_FOLDER}/train/mask/{{normal,tumor}}/")
LAYOUT_PRCC = f"<root>/{PRCC_FOLDER}/**/<name>.jpg (any depth, no labels)"
LAYOUT_FOLDERS = "<dir>/<Class>/<image> (or <dir>/data/<Class>/<image> with masks in <dir>/mask/<Class>/)"


def wbc_folder(subset: int) -> str:
    """``WBC_<subset>``: the folder of one nested training subset."""
    return f"WBC_{subset}"


def wbc_split(root: Path, subset: int, split: str) -> Path:
    """The folder of a WBC split: ``WBC_<subset>/train``, or the one validation split ``WBC_100/val``
    whatever the subset."""
    return Path(root) / wbc_folder(subset if split == "train" else 100) / split


def wbc_val_candidates(root: Path) -> list[Path]:
    """Where the validation images may be: ``WBC_100/val/data`` (or ``WBC_test/val/data``, an older name)."""
    return [images(wbc_split(root, 100, "val")), images(Path(root) / "WBC_test" / "val")]


def cam16_split(root: Path, split: str) -> Path:
    """The folder of a CAM16 split (``train``, ``val`` or ``test``)."""
    return Path(root) / CAM16_FOLDER / split


def images(split_dir: Path) -> Path:
    """A split's images: ``<split>/data``."""
    return Path(split_dir) / IMAGES


def masks(split_dir: Path) -> Path:
    """A split's masks: ``<split>/mask``."""
    return Path(split_dir) / MASKS


def arranged(folder: Path) -> tuple[Path, Path | None]:
    """The folder holding a class-folder set's class folders, and its mask folder: ``(<dir>/data, <dir>/mask)``
    when ``<dir>/data`` exists, else ``(<dir>, None)``."""
    folder = Path(folder)
    return (images(folder), masks(folder)) if images(folder).is_dir() else (folder, None)


def visible(path: Path) -> list[Path]:
    """The entries of a folder, sorted, without hidden files and Thumbs.db."""
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name not in ("Thumbs.db",))


def class_folder_names(folder: Path) -> list[str]:
    """The class folders of a class-folder set (``<dir>/<Class>`` or ``<dir>/data/<Class>``); none if missing."""
    base, _ = arranged(folder)
    return [d.name for d in visible(base) if d.is_dir()] if base.is_dir() else []
