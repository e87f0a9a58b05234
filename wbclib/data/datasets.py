"""The images a run trains on: :class:`CellDataset` (records plus a joint transform), where a run's data lives
(``data_root``: a user's copy, the embedded real cells or the synthetic stand-in) and its splits
(``build_splits``), indexed and checked before any training starts.

Each item is a dict ``{"image", "label", "mask", "has_mask", "path"}``: ``label`` is -1 for unlabeled
images (pRCC) and ``mask`` an all-zero placeholder when ``has_mask`` is False, so one default collate serves
all datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from wbclib import WBC_CLASSES
from wbclib.core import config as cfg
from wbclib.data import layout, transforms
from wbclib.data.images import PREPARED_QUALITY, load_image, open_image
from wbclib.data.readers import DatasetError, Record, cam16_records, holds_classes, prcc_records, wbc_records


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



class KeptDataset(CellDataset):
    """``base`` with each image and mask kept in memory after its first load; the datasets made from it by
    :meth:`with_transform` share what it keeps. For evaluations that read the same images several times (under
    each perturbation, or again after a rescale); only for sets that fit in memory at the dataset's scale."""

    def __init__(self, base: CellDataset, kept: dict | None = None):
        super().__init__(base.records, base.classes, base.transform, base.mask_threshold, base.resize, base.root,
                         base.quality)
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {} if kept is None else kept

    def with_transform(self, transform) -> KeptDataset:
        """The same images (and what is kept of them) under another transform."""
        other = KeptDataset(self, self.kept)
        other.transform = transform
        return other

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self.kept:
            self.kept[i] = super().load(i)
        return self.kept[i]

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
    folder = (EMBEDDED if root is None else Path(root)) / layout.EXTERNAL
    sets = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [p for p in sets if holds_classes(p, classes)]


def embedded_external_sets() -> list[Path]:
    """The embedded external sets of white blood cells (see :func:`external_sets`)."""
    return external_sets(WBC_CLASSES)


#: The folder each stage reads in a data root, and what the embedded data holds there, in words (Markdown).
STAGE_FOLDERS = {"wbc": layout.wbc_folder(100), "cam16": layout.CAM16_FOLDER, "prcc": layout.PRCC_FOLDER}
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


def describe_source(source: str, dataset: str, folder: str = layout.PRCC_FOLDER) -> str:
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
