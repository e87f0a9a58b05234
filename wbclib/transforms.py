"""Joint image/mask augmentation with torchvision.transforms.v2.

Training: optional resize (shorter side), random crop to the input size (padding when smaller), random
horizontal and vertical flips. Evaluation: the same resize, then a centre crop. The image and its mask go
through one call, so every geometric step is applied identically to both (``tv_tensors.Mask`` is resized
with nearest neighbour). Images leave as float32 in [0, 1], masks as uint8 {0, 1}.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def _to_float():
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def _resize(resize: int | None) -> list:
    return [v2.Resize(resize, antialias=True)] if resize else []


def train_transform(size: int, resize: int | None = None) -> v2.Compose:
    """Resize the shorter side to ``resize`` (if given), random-crop ``size``, random flips."""
    return v2.Compose([
        *_resize(resize),
        v2.RandomCrop(size, pad_if_needed=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        _to_float(),
    ])


def eval_transform(size: int, resize: int | None = None) -> v2.Compose:
    """Resize the shorter side to ``resize`` (if given), centre-crop ``size`` (padding when smaller)."""
    return v2.Compose([*_resize(resize), v2.CenterCrop(size), _to_float()])


def build(size: int, resize: int | None, train: bool) -> v2.Compose:
    """The training or evaluation transform of a run."""
    return (train_transform if train else eval_transform)(size, resize)
