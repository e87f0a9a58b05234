"""Joint image/mask augmentation with torchvision.transforms.v2.

The images arrive at the run's scale: :class:`wbclib.data.CellDataset` resizes them by the one rule that
``wbc prepare --size`` also writes to disk (:func:`wbclib.data.load_image`), so no resize happens here.
Training: random crop to the input size (padding when smaller), random horizontal and vertical flips,
optionally random right-angle rotations and a colour jitter; two switches made for the domain-shift chapter
add a random zoom (scale augmentation) and a hue shift (stain augmentation).
Evaluation: a centre crop. The image and its mask go
through one call, so every geometric step is applied identically to both (``tv_tensors.Mask`` is resized
with nearest neighbour). Images leave as float32 in [0, 1], masks as uint8 {0, 1}.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


def _to_float():
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


#: With a zoom range, this share of the training images is zoomed (the rest keeps the evaluation scale).
ZOOM_P = 0.5


def _zoom(size: int, resize: int | None, zoom) -> list:
    """With probability :data:`ZOOM_P`, enlarge (or shrink) the image by a factor drawn uniformly from
    ``zoom = (low, high)`` (``v2.RandomResize`` of the shorter side), then keep a window of 1.25 ``size``
    around the centre, so that the random crop that follows still holds the (centred) cell."""
    if not zoom:
        return []
    base = resize or size
    low, high = (max(1, round(base * z)) for z in zoom)
    return [v2.RandomApply([v2.RandomResize(low, high + 1, antialias=True)], p=ZOOM_P),
            v2.CenterCrop(round(1.25 * size))]


def train_transform(size: int, resize: int | None = None, rot90: bool = False, color_jitter: float = 0.0,
                    hue_jitter: float = 0.0, zoom=None) -> v2.Compose:
    """Random-crop ``size``, random flips; optionally a random
    multiple of 90 degrees (with the flips: all eight symmetries of the square, which leave a cell's class
    unchanged) and a colour jitter of the image only (brightness, contrast and saturation by ±``color_jitter``).

    Two switches aim at other laboratories: ``hue_jitter`` shifts the hue by up to ±``hue_jitter`` of the
    colour circle (a stand-in for another stain; it costs about as much as the rest of the pipeline on a CPU)
    and ``zoom = (low, high)`` rescales half of the images by a random factor in that range (another
    microscope, camera or crop framing shows the cell at another size). ``resize`` is the shorter side the
    images arrive with (the zoom's nominal scale; ``size`` when None)."""
    steps = [*_zoom(size, resize, zoom), v2.RandomCrop(size, pad_if_needed=True),
             v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rot90:
        steps.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
    steps.append(_to_float())
    if color_jitter or hue_jitter:
        c = color_jitter or None
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=hue_jitter or None))
    return v2.Compose(steps)


def eval_transform(size: int) -> v2.Compose:
    """Centre-crop ``size`` (padding when smaller)."""
    return v2.Compose([v2.CenterCrop(size), _to_float()])


def build(size: int, resize: int | None, train: bool, rot90: bool = False, color_jitter: float = 0.0,
          hue_jitter: float = 0.0, zoom=None) -> v2.Compose:
    """The training or evaluation transform of a run (augmentation only in training)."""
    return train_transform(size, resize, rot90, color_jitter, hue_jitter, zoom) if train else \
        eval_transform(size)
