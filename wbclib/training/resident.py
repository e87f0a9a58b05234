"""Decoded data resident on the device: each split decoded once into uint8 tensors where the model runs, and
the training augmentation done there per batch with tensor operations.

The CPU loader (:func:`wbclib.training.runtime.make_loader`) decodes every JPEG again every epoch in worker
processes and augments it with torchvision; on a GPU that costs a quarter of the step time and makes
validation the slowest part of the small runs. Here the training split is decoded once (at the scale the
run reads it, as :meth:`wbclib.data.datasets.CellDataset.load` gives it) into an ``(N, 3, H, W)`` uint8 tensor
on the device, the masks into a second tensor (only for the images that have one), and every batch is cut
from it on the device:

- a random ``input_size`` crop of each image (zero padding where an image is smaller, as
  ``v2.RandomCrop(pad_if_needed=True)``), gathered with one indexing operation whose output is already
  channels_last;
- random horizontal and vertical flips and, with ``rot90``, a random transpose: with the two flips, the
  eight symmetries of the square, each equally likely (the CPU path's flips and right-angle rotations);
- with ``color_jitter`` / ``hue_jitter``, brightness, contrast and saturation factors in ``[1 - c, 1 + c]`` and
  a hue shift in ``[-h, h]``, in a random order per image (torchvision's ``ColorJitter``).

The mask is cut with the very same indices, so it follows every geometric step of its image exactly.
Evaluation splits are stored already centre-cropped (torchvision's ``CenterCrop`` on the CPU at decode time,
so their pixels equal the CPU loader's).

Randomness: every training epoch draws one seed from the trainer's CPU generator (which the trainer re-seeds
from ``(seed, epoch)`` at the start of each epoch) and seeds a generator on the device with it; the shuffling
uses the CPU generator as the CPU loader does. An epoch's batches are thus a function of the run's seed and
the epoch alone, and a run resumed from a checkpoint draws exactly the batches an uninterrupted run draws on
the same device (nothing about the loader needs to be stored in the checkpoint).

Augmentation switches done only on the CPU (``zoom``, ``jpeg_quality``, ``blur``, ``resample``) keep a run on
the CPU loader, with a one-line note; so do images of differing sizes.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from wbclib.core import config as cfg
from wbclib.data import datasets, images
from wbclib.training import distributed

#: With ``resident: auto`` on CUDA, the decoded splits may take at most this share of the device's free memory
#: (divided among the runs that share the GPU, ``WBC_RUNS_PER_DEVICE``): the rest is the model's.
MEMORY_FRACTION = 0.5
#: The switches of the CPU augmentation that have no device counterpart here.
CPU_ONLY = ("zoom", "jpeg_quality", "blur", "resample")
#: Images decoded per chunk on their way to the device.
CHUNK = 64
GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights (rgb_to_grayscale)


class Skip(Exception):
    """This run's data stays on the CPU loader (the message says why)."""


# -- decoding ------------------------------------------------------------------------------------------------

class _Decoded(torch.utils.data.Dataset):
    """Image and mask of each record at the dataset's scale, optionally centre-cropped (uint8)."""

    def __init__(self, ds: datasets.CellDataset, crop: int | None):
        self.ds, self.crop = ds, crop

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        image, mask = self.ds.load(i)
        if self.crop is not None:
            image, mask = (F.center_crop(tv_tensors.Image(image), [self.crop]).as_subclass(torch.Tensor),
                           F.center_crop(tv_tensors.Mask(mask), [self.crop]).as_subclass(torch.Tensor))
        return image, mask


def stored_side(ds: datasets.CellDataset) -> tuple[int, int] | None:
    """(height, width) of the first image at the dataset's scale, from its header (None: unreadable)."""
    size = images.image_size(ds.records[0].path)
    if size is None:
        return None
    w, h = images.target_size(size, ds.resize)
    return h, w


def split_bytes(ds: datasets.CellDataset, crop: int | None) -> int:
    """Device bytes of a split stored by :class:`ResidentSplit` (from the first image's size)."""
    if crop is not None:
        h = w = crop
    else:
        h, w = stored_side(ds) or (0, 0)
    return len(ds) * 3 * h * w + (ds.num_masks + 1) * h * w


class ResidentSplit:
    """One split decoded into device tensors: ``images`` (N, 3, H, W) uint8 (channels_last in memory),
    ``masks`` (M + 1, 1, H, W) uint8 for the M images with a mask plus an empty one, ``mask_index`` (N,) the
    row of each image's mask (M: none), ``labels`` and ``has_mask``. ``crop``: centre-crop at decode time (an
    evaluation split); ``pad``: zero-pad each side to at least this size (a training split smaller than its
    crop, as ``v2.RandomCrop(pad_if_needed=True)``)."""

    def __init__(self, ds: datasets.CellDataset, device: torch.device, crop: int | None = None,
                 pad: int | None = None, workers: int = 0):
        self.paths = [str(r.path.relative_to(ds.root) if ds.root else r.path) for r in ds.records]
        n = len(ds)
        masked = [i for i, r in enumerate(ds.records) if r.mask_path is not None]
        index = torch.full((n,), len(masked), dtype=torch.long)
        index[masked] = torch.arange(len(masked))
        self.mask_index = index.to(device)
        self.labels = torch.tensor([r.label for r in ds.records], dtype=torch.long, device=device)
        self.has_mask = torch.tensor([r.mask_path is not None for r in ds.records], device=device)
        loader = torch.utils.data.DataLoader(_Decoded(ds, crop), batch_size=CHUNK, num_workers=workers,
                                             collate_fn=list)
        self.images = self.masks = None
        row = 0
        for items in loader:  # decoded in order, chunk by chunk, straight into the device tensors
            shapes = {tuple(image.shape[-2:]) for image, _ in items}
            if len(shapes) > 1:
                raise Skip(f"its images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(shapes)[:3])}, ...)")
            images, masks = (torch.stack(t) for t in zip(*items))
            if self.images is None:
                h, w = images.shape[-2:]
                self.images = torch.empty((n, 3, h, w), dtype=torch.uint8, device=device,
                                          memory_format=torch.channels_last)
                self.masks = torch.zeros((len(masked) + 1, 1, h, w), dtype=torch.uint8, device=device)
            elif images.shape[-2:] != self.images.shape[-2:]:
                raise Skip(f"its images differ in size ({tuple(self.images.shape[-2:])} and "
                           f"{tuple(images.shape[-2:])})")
            k = len(images)
            self.images[row:row + k] = images.to(device)
            sel = self.mask_index[row:row + k].cpu()
            keep = sel < len(masked)
            if keep.any():
                self.masks[sel[keep].to(device)] = masks[keep].to(device)
            row += k
        if pad is not None:
            h, w = self.images.shape[-2:]
            dy, dx = max(0, pad - h), max(0, pad - w)
            if dy or dx:  # both sides by the shortfall, as v2.RandomCrop(pad_if_needed=True)
                self.images = torch.nn.functional.pad(self.images, (dx, dx, dy, dy)).contiguous(
                    memory_format=torch.channels_last)
                self.masks = torch.nn.functional.pad(self.masks, (dx, dx, dy, dy))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel() + self.masks.numel()


# -- the augmentation on the device --------------------------------------------------------------------------

def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    high, _ = x.max(1)
    low, _ = x.min(1)
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(span > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(high > 0, span / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack((hue, sat, high), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = (5 - 2 * torch.arange(3, device=x.device, dtype=x.dtype))[None, :, None, None]  # 5, 3, 1: no host copy
    t = (k + 6 * h.unsqueeze(1)) % 6
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * (torch.minimum(t, 4 - t).clamp(0, 1))


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = (hsv[:, 0] + shift[:, None, None]) % 1.0
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), 1)).clamp(0, 1)


def colour_jitter(x: torch.Tensor, amount: float, hue: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation by a factor in ``[max(0, 1 - amount), 1 + amount]`` and a hue shift in
    ``[-hue, hue]``, each image with its own factors and its own order of the four (torchvision's
    ``ColorJitter``, batched). ``x``: (B, 3, H, W) float in [0, 1]."""
    b = len(x)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(b, generator=gen, device=x.device)

    lo = max(0.0, 1.0 - amount)
    factors = [uniform(lo, 1 + amount) if amount else None for _ in range(3)] + [uniform(-hue, hue) if hue else None]
    order = torch.rand(b, 4, generator=gen, device=x.device).argsort(1)  # a random order of the four per image

    def apply(op: int, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        f4 = f[:, None, None, None]
        if op == 0:
            return (y * f4).clamp(0, 1)
        if op == 1:
            mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
            return (f4 * y + (1 - f4) * mean).clamp(0, 1)
        if op == 2:
            return (f4 * y + (1 - f4) * _gray(y)).clamp(0, 1)
        return _shift_hue(y, f)

    for place in range(4):
        for op, f in enumerate(factors):
            if f is not None:
                here = (order[:, place] == op)[:, None, None, None]
                x = torch.where(here, apply(op, x, f), x)
    return x


def crop_batch(split: ResidentSplit, idx: torch.Tensor, size: int, gen: torch.Generator, rot90: bool):
    """Random ``size`` crops of images ``idx`` with random flips (and, with ``rot90``, a random transpose):
    (B, 3, size, size) uint8 images (channels_last) and (B, 1, size, size) masks cut with the same indices."""
    b, dev = len(idx), split.images.device
    h, w = split.images.shape[-2:]
    top = torch.randint(0, h - size + 1, (b,), generator=gen, device=dev)
    left = torch.randint(0, w - size + 1, (b,), generator=gen, device=dev)
    flip = torch.randint(0, 2, (3, b), generator=gen, device=dev).bool()  # horizontal, vertical, transpose
    step = torch.arange(size, device=dev)
    rows = top[:, None] + torch.where(flip[1][:, None], size - 1 - step, step)
    cols = left[:, None] + torch.where(flip[0][:, None], size - 1 - step, step)
    if rot90:  # transposing the window: with the flips, all eight symmetries of the square
        t = flip[2][:, None, None]
        r = torch.where(t, rows[:, None, :], rows[:, :, None])  # out[i, j] = window[j, i] where transposed
        c = torch.where(t, cols[:, :, None], cols[:, None, :])
    else:
        r, c = rows[:, :, None], cols[:, None, :]
    image = split.images[idx[:, None, None], :, r, c]  # (B, size, size, 3): channels_last once permuted
    mask = split.masks[split.mask_index[idx][:, None, None], 0, r, c]
    return image.permute(0, 3, 1, 2), mask.unsqueeze(1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] exactly as the CPU path's ``v2.ToDtype(scale=True)``."""
    return F.to_dtype(images, torch.float32, scale=True)


# -- the loaders ---------------------------------------------------------------------------------------------

class TrainBatches:
    """The training batches of one epoch per iteration, as the CPU loader's dicts (on the device): shuffled
    global batches (:class:`wbclib.training.distributed.ShardedBatchSampler` on the trainer's generator), this
    process's share, cut and augmented on the device."""

    def __init__(self, split: ResidentSplit, config: cfg.RunConfig, generator: torch.Generator,
                 ctx: distributed.Context | None = None):
        self.split, self.config, self.generator = split, config, generator
        self.sampler = distributed.ShardedBatchSampler(len(split), config.batch_size, ctx or distributed.Context(),
                                                       generator)
        self.device_generator = torch.Generator(device=split.images.device)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        c, split = self.config, self.split
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))  # the epoch's, from the re-seeded generator
        gen = self.device_generator.manual_seed(seed)
        for indices in self.sampler:
            idx = torch.tensor(indices, dtype=torch.long).to(split.images.device, non_blocking=True)
            images, masks = crop_batch(split, idx, c.input_size, gen, c.rot90)
            images = to_float(images)
            if c.color_jitter or c.hue_jitter:
                images = colour_jitter(images, c.color_jitter, c.hue_jitter, gen)
            yield {"image": images, "label": split.labels[idx], "mask": masks, "has_mask": split.has_mask[idx],
                   "path": [split.paths[i] for i in indices]}


class EvalBatches:
    """An evaluation split in order, in batches of ``batch_size`` (the CPU loader's dicts, on the device)."""

    def __init__(self, split: ResidentSplit, batch_size: int):
        self.split, self.batch_size = split, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        s = self.split
        for i in range(0, len(s), self.batch_size):
            j = min(len(s), i + self.batch_size)
            m = s.masks[s.mask_index[i:j]]
            yield {"image": to_float(s.images[i:j]), "label": s.labels[i:j], "mask": m,
                   "has_mask": s.has_mask[i:j], "path": s.paths[i:j]}


# -- the choice ----------------------------------------------------------------------------------------------

def runs_per_device() -> int:
    """How many runs share this process's GPU (``WBC_RUNS_PER_DEVICE``, set by the study's slots; default 1)."""
    try:
        return max(1, int(os.environ.get("WBC_RUNS_PER_DEVICE", "1")))
    except ValueError:
        return 1


def budget_bytes(device: torch.device) -> int | None:
    """Device bytes ``resident: auto`` may fill: :data:`MEMORY_FRACTION` of the free memory, or of this run's
    share of the whole device when several runs share it (None on a CPU)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(MEMORY_FRACTION * min(free, total / runs_per_device()))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def loaders(splits: datasets.Splits, config: cfg.RunConfig, val_batch: int, device: torch.device,
            generator: torch.Generator, ctx: distributed.Context | None, workers: int, log) -> tuple | None:
    """The resident training and validation loaders of a run, or None where it keeps the CPU loader: with
    ``resident: off``, with ``auto`` on a CPU, and (with a one-line note) where a CPU-only augmentation is on,
    the images differ in size or, under ``auto``, they would not fit in :func:`budget_bytes`."""
    if config.resident == "off" or (config.resident == "auto" and device.type != "cuda"):
        return None
    on = [name for name in CPU_ONLY if getattr(config, name)]
    if on:
        log(f"resident: off, {', '.join(on)} augment{'s' if len(on) == 1 else ''} on the CPU only; the CPU loader "
            "serves this run")
        return None
    need = split_bytes(splits.train, None) + split_bytes(splits.val, config.input_size)
    budget = budget_bytes(device)
    if config.resident == "auto" and budget is not None and need > budget:
        log(f"resident: off, the decoded splits need {gib(need)} and {gib(budget)} is the share allowed "
            f"({MEMORY_FRACTION:g} of the free device memory); the CPU loader serves this run")
        return None
    t = time.time()
    try:
        train = ResidentSplit(splits.train, device, pad=config.input_size, workers=workers)
        val = ResidentSplit(splits.val, device, crop=config.input_size, workers=workers)
    except Skip as why:
        log(f"resident: off, {why}; the CPU loader serves this run")
        return None
    h, w = train.images.shape[-2:]
    log(f"resident: {len(train)} training images at {h}x{w} and {len(val)} validation images at "
        f"{config.input_size}x{config.input_size} decoded onto {device} in {time.time() - t:.1f}s, "
        f"{gib(train.nbytes + val.nbytes)} (--set resident=off: the CPU loader)")
    return TrainBatches(train, config, generator, ctx), EvalBatches(val, val_batch)
