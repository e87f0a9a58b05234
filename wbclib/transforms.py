"""Joint image/mask augmentation with torchvision.transforms.v2.

Training: optional resize (shorter side), random crop to the input size (padding when smaller), random
horizontal and vertical flips, optionally random right-angle rotations and a colour jitter. Evaluation: the same resize, then a centre crop. The image and its mask go
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


def train_transform(size: int, resize: int | None = None, rot90: bool = False, color_jitter: float = 0.0) -> v2.Compose:
    """Resize the shorter side to ``resize`` (if given), random-crop ``size``, random flips; optionally a random
    multiple of 90 degrees (with the flips: all eight symmetries of the square, which leave a cell's class
    unchanged) and a colour jitter of the image only (brightness, contrast and saturation by ±``color_jitter``;
    no hue shift, which costs more than the training step on a CPU)."""
    steps = [*_resize(resize), v2.RandomCrop(size, pad_if_needed=True), v2.RandomHorizontalFlip(),
             v2.RandomVerticalFlip()]
    if rot90:
        steps.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
    steps.append(_to_float())
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(steps)


def eval_transform(size: int, resize: int | None = None) -> v2.Compose:
    """Resize the shorter side to ``resize`` (if given), centre-crop ``size`` (padding when smaller)."""
    return v2.Compose([*_resize(resize), v2.CenterCrop(size), _to_float()])


def build(size: int, resize: int | None, train: bool, rot90: bool = False, color_jitter: float = 0.0) -> v2.Compose:
    """The training or evaluation transform of a run (augmentation only in training)."""
    return train_transform(size, resize, rot90, color_jitter) if train else eval_transform(size, resize)
