"""Test-time scale normalisation with the model's own mask head: bring each cell to the scale of the training cells.

Another laboratory frames its cells otherwise: the BCCD crops are cut tightly around the white cell, while in a
PBC image the cell fills about a third of the frame. The network, trained at one scale, sees a cell that is too
large. This module removes the difference at test time, without labels and without retraining:

1. the model predicts the cell's mask on the image as it would classify it (the run's resize, then the centre
   crop; the mask channel of the predicted class);
2. the cell's apparent size is the share of the crop it covers (:func:`cell_share`: the mask's area, or its
   bounding box);
3. the image at the run's scale (before the crop) is rescaled by ``sqrt(target / share)``, clamped to
   ``[low, high]``, around the mask's centroid, and cropped or padded back to its size (padding with the median
   colour of the image's border, the background), so the cell lands in the middle of the crop at the share of
   the frame the training cells cover (:func:`training_share`: the median over the embedded WBC training masks);
4. with ``iterations=2`` the mask is predicted again on the rescaled image and the correction applied once more
   (composed with the first, so the image is resampled once).

:data:`RULES` are the candidate rules, fixed before any model was evaluated with them; the domain-shift chapter
chooses one on segwbc only and reports bccd once with it (:func:`wbclib.results.shift.choose_rescale_rule`;
the chosen rule is :data:`DEFAULT`, what ``wbc evaluate
--rescale-to-mask`` and ``wbc predict --rescale-to-mask`` use). It composes with AdaBN: the masks are then
predicted by the adapted model, and the BatchNorm statistics are estimated again on the rescaled images.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from wbclib import WBC_CLASSES
from wbclib.data import layout
from wbclib.data.datasets import CellDataset, KeptDataset


@dataclass(frozen=True)
class Rule:
    """How a cell is brought to the training scale.

    Args:
        statistic: ``"area"``: the share of the crop covered by the mask; ``"box"``: the share covered by the
            mask's bounding box.
        target: the share a cell should cover: a number; ``"masks"``: :func:`training_share`, the median over
            the training masks; ``"model"``: :func:`model_share`, the median the model's own mask head gives
            its training images (the same statistic either way).
        low, high: the rescale factor is clamped to this range (no cell is shrunk or enlarged beyond it).
        iterations: how many times the mask is predicted and the correction applied.
    """

    statistic: str = "area"
    target: float | str = "model"
    low: float = 0.5
    high: float = 2.0
    iterations: int = 1

    def __post_init__(self):
        if self.statistic not in ("area", "box"):
            raise ValueError(f"statistic must be 'area' or 'box', got {self.statistic!r}")
        if not (self.target in ("masks", "model") or (isinstance(self.target, float) and 0 < self.target <= 1)):
            raise ValueError(f"target must be 'masks', 'model' or a share in (0, 1], got {self.target!r}")
        if not 0 < self.low <= 1 <= self.high or self.iterations < 1:
            raise ValueError("need 0 < low <= 1 <= high and iterations >= 1")


#: The candidate rules: the size statistic, one or two iterations and the target (factor clamped to 0.5-2).
#: The first four (target: the training masks' median share) were fixed before any model was evaluated with
#: them; they enlarge in-domain cells (the 69 masked training cells are framed more tightly than the PBC
#: cells, and the mask head draws cells smaller than their masks), so four more aim at the share the model's
#: own mask head gives its training images. All eight are compared on held-out PBC and segwbc only.
RULES: dict[str, Rule] = {
    "area-1": Rule("area", "masks", iterations=1),
    "area-2": Rule("area", "masks", iterations=2),
    "box-1": Rule("box", "masks", iterations=1),
    "box-2": Rule("box", "masks", iterations=2),
    "model-area-1": Rule("area", "model", iterations=1),
    "model-area-2": Rule("area", "model", iterations=2),
    "model-box-1": Rule("box", "model", iterations=1),
    "model-box-2": Rule("box", "model", iterations=2),
}
#: The rule chosen on segwbc by the domain-shift chapter's selection rule (see :func:`choose_rule`); what
#: ``--rescale-to-mask`` applies.
DEFAULT = "area-2"


# -- the geometry -------------------------------------------------------------------------------------------

def cell_share(mask: torch.Tensor, statistic: str = "area") -> float:
    """The share of the frame a binary mask (H, W) covers: its area (``"area"``) or its bounding box's
    (``"box"``). 0 for an empty mask."""
    m = torch.as_tensor(mask).bool().reshape(mask.shape[-2:])
    if not m.any():
        return 0.0
    if statistic == "area":
        return float(m.float().mean())
    rows, cols = torch.where(m.any(1))[0], torch.where(m.any(0))[0]
    return float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / m.numel()


def centroid(mask: torch.Tensor) -> tuple[float, float] | None:
    """(x, y) of a binary mask's centre of mass in pixel coordinates (pixel centres at integers); None if empty."""
    m = torch.as_tensor(mask).bool().reshape(mask.shape[-2:])
    if not m.any():
        return None
    ys, xs = torch.where(m)
    return float(xs.float().mean()), float(ys.float().mean())


def scale_factor(share: float, target: float, low: float = 0.5, high: float = 2.0) -> float:
    """The linear factor that makes a cell covering ``share`` of the frame cover ``target``:
    ``sqrt(target / share)`` clamped to ``[low, high]``; 1 when no cell was found (share 0)."""
    if share <= 0:
        return 1.0
    return float(min(high, max(low, math.sqrt(target / share))))


def zoom(image: torch.Tensor, factor: float, centre: tuple[float, float] | None = None,
         fill: list[float] | None = None, nearest: bool = False) -> torch.Tensor:
    """``image`` (C, H, W) enlarged by ``factor`` (below 1: shrunk) so that the point ``centre`` (x, y; default
    the frame's centre) lands in the middle of a frame of the same size; what falls outside is cut off, what
    the frame lacks is filled with ``fill`` (per channel; default: the median colour of the image's border).
    Resized with antialiasing (``nearest``: by nearest neighbour, for masks)."""
    c, h, w = image.shape
    cx, cy = centre if centre is not None else ((w - 1) / 2, (h - 1) / 2)
    if fill is None:
        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
        fill = border.float().median(dim=1).values.tolist()
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    mode = F.InterpolationMode.NEAREST if nearest else F.InterpolationMode.BILINEAR
    big = F.resize(image, [nh, nw], interpolation=mode, antialias=not nearest)
    # The point (cx, cy) sits at ((cx + 0.5) * nw / w - 0.5, ...) in the resized image; put it at the centre.
    top = round((cy + 0.5) * nh / h - 0.5 - (h - 1) / 2)
    left = round((cx + 0.5) * nw / w - 0.5 - (w - 1) / 2)
    out = torch.tensor(fill, dtype=torch.float32).reshape(c, 1, 1).expand(c, h, w).round().to(image.dtype).clone()
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, nh), min(left + w, nw)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = big[:, y0:y1, x0:x1]
    return out


def crop_offset(image_size: tuple[int, int], crop: int) -> tuple[int, int]:
    """(left, top) of the evaluation's centre crop of ``crop`` pixels in an image of (H, W) (torchvision's
    ``CenterCrop`` rule)."""
    h, w = image_size
    return round((w - crop) / 2.0), round((h - crop) / 2.0)


# -- the data set of rescaled images --------------------------------------------------------------------------

class RescaledDataset(CellDataset):
    """A :class:`~wbclib.data.datasets.CellDataset` whose image ``i`` (and its mask) is rescaled by
    ``params[i] = (factor, x, y)`` around the point (x, y) of the image at the data set's scale, before its
    transform; ``None`` leaves an image as it is."""

    def __init__(self, base: CellDataset, params: list[tuple[float, float, float] | None]):
        super().__init__(base.records, base.classes, base.transform, base.mask_threshold, base.resize, base.root,
                         base.quality)
        self.base, self.params = base, params

    def load(self, i: int):
        image, mask = self.base.load(i)
        p = self.params[i]
        if p is None:
            return image, mask
        factor, x, y = p
        return zoom(image, factor, (x, y)), zoom(mask, factor, (x, y), fill=[0], nearest=True)


@torch.no_grad()
def predicted_masks(model, loader, rt) -> torch.Tensor:
    """The model's predicted cell mask of every image of ``loader`` (N, H, W) bool: the mask channel of the
    predicted class, as ``wbc predict`` draws it."""
    from wbclib.training.inference import forward

    masks = [f.pred_masks.squeeze(1).bool() for f in forward(model, loader, rt)]
    return torch.cat(masks) if masks else torch.zeros((0, 0, 0), dtype=torch.bool)


@functools.lru_cache(maxsize=8)
def training_share(resize: int | None, crop: int, statistic: str = "area", root: str | None = None) -> float:
    """The median share of the evaluation crop that a training cell covers: the embedded WBC_100 training
    masks (or those of the data root ``root``), loaded at ``resize`` and centre-cropped to ``crop`` pixels as
    the model sees them."""
    from wbclib.data import datasets, readers, transforms

    records = [r for r in readers.wbc_records(Path(root) if root else datasets.EMBEDDED, 100, "train")
               if r.mask_path is not None]
    ds = CellDataset(records, WBC_CLASSES, transforms.eval_transform(crop), resize=resize)
    shares = [cell_share(ds[i]["mask"][0], statistic) for i in range(len(ds))]
    return float(np.median([s for s in shares if s > 0]))


_MODEL_SHARES: dict[tuple, float] = {}
#: Training images the model's own share is measured on (a seeded sample; all of them when fewer).
MODEL_SHARE_IMAGES = 400


def model_share(model, config, rt, loader, statistic: str = "area") -> float:
    """The median share of the evaluation crop that the model's own mask head gives a cell of its training
    images (WBC_100's training split of its data root, or the embedded one; a seeded sample of
    :data:`MODEL_SHARE_IMAGES`), images where it finds no cell left out. Kept per weights and statistic."""
    from wbclib.data import datasets, readers, transforms

    weights = float(sum(p.detach().double().sum() for p in model.parameters()))  # one number per set of weights
    key = (weights, config.resize, config.input_size, statistic)
    if key not in _MODEL_SHARES:
        root = _mask_root(config)
        records = readers.wbc_records(Path(root) if root else datasets.EMBEDDED, 100, "train", check=False)
        if len(records) > MODEL_SHARE_IMAGES:
            pick = np.random.default_rng(0).choice(len(records), MODEL_SHARE_IMAGES, replace=False)
            records = [records[i] for i in sorted(pick)]
        ds = CellDataset(records, WBC_CLASSES, transforms.eval_transform(config.input_size),
                         resize=config.resize, quality=getattr(config, "resize_quality", None))
        shares = [cell_share(m, statistic) for m in predicted_masks(model, loader(ds), rt)]
        shares = [s for s in shares if s > 0]
        _MODEL_SHARES[key] = float(np.median(shares)) if shares else training_share(
            config.resize, config.input_size, statistic, root)
    return _MODEL_SHARES[key]


def _mask_root(config) -> str | None:
    """The data root whose WBC_100 training masks the model learnt from (None: the embedded cells, also when
    the root a model was trained on is not on this machine)."""
    root = getattr(config, "data_root", None)
    return root if root and layout.masks(layout.wbc_split(Path(root), 100, "train")).is_dir() else None


def rescaled_dataset(model, ds: CellDataset, config, rt, loader, rule: Rule = RULES[DEFAULT],
                     adabn: bool = False) -> RescaledDataset:
    """``ds`` with every image brought to the training cells' scale by ``rule``, from the masks ``model``
    predicts (after AdaBN on ``ds`` when ``adabn``; the caller adapts again on the result). ``loader(dataset)``
    makes in-order batches (``wbc evaluate``'s inference loader); ``config`` is the run's (its ``resize``,
    ``input_size`` and ``data_root``), ``rt`` its runtime (device and autocast)."""
    from wbclib.results.adabn import adapt_batchnorm

    if rule.target == "masks":
        target = training_share(config.resize, config.input_size, rule.statistic, _mask_root(config))
    elif rule.target == "model":
        target = model_share(model, config, rt, loader, rule.statistic)  # before any AdaBN: the training domain
    else:
        target = float(rule.target)
    if adabn:
        adapt_batchnorm(model, loader(ds), rt)
    if ds.resize is not None and not isinstance(ds, KeptDataset):  # each image is read two to four times
        ds = KeptDataset(ds)
    params: list = [None] * len(ds)
    sizes = [tuple(ds.load(i)[0].shape[-2:]) for i in range(len(ds))]  # a zoom keeps an image's size
    current = ds
    for _ in range(rule.iterations):
        masks = predicted_masks(model, loader(current), rt)
        new = []
        for i, m in enumerate(masks):
            h, w = sizes[i]
            left, top = crop_offset((h, w), config.input_size)  # where the crop the mask is of sits
            share, c = cell_share(m, rule.statistic), centroid(m)
            k0, x0, y0 = params[i] or (1.0, (w - 1) / 2, (h - 1) / 2)
            if c is None:
                new.append(params[i])
                continue
            k = scale_factor(share, target, rule.low / k0, rule.high / k0)  # the total stays in [low, high]
            # The centroid in the current image -> in the original image (the current one is the original
            # rescaled by k0 around (x0, y0), that point at the frame's centre).
            cx, cy = c[0] + left, c[1] + top
            ox, oy = x0 + (cx - (w - 1) / 2) / k0, y0 + (cy - (h - 1) / 2) / k0
            new.append((k0 * k, ox, oy))
        params = new
        current = RescaledDataset(ds, params)
    return current


def describe(ds: RescaledDataset, rule: str = DEFAULT) -> dict:
    """What :func:`rescaled_dataset` did, for metrics.json and the command's report."""
    factors = [p[0] for p in ds.params if p is not None]
    median = float(np.median(factors)) if factors else 1.0
    return {"rule": rule, "images": len(ds), "rescaled": len(factors), "median_factor": median,
            "summary": f"{len(factors)} of {len(ds)} images rescaled (rule {rule}, median factor {median:.2f}"
                       + (f", {len(ds) - len(factors)} without a predicted cell left as they are)"
                          if len(factors) < len(ds) else ")")}
