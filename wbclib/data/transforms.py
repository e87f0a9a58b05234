"""Joint image/mask augmentation with torchvision.transforms.v2.

The images arrive at the run's scale: :class:`wbclib.data.datasets.CellDataset` resizes them by the one rule that
``wbc prepare --size`` also writes to disk (:func:`wbclib.data.images.load_image`), so no resize happens here.
Training: random crop to the input size (padding when smaller), random horizontal and vertical flips,
optionally random right-angle rotations and a colour jitter; two switches made for the domain-shift chapter
add a random zoom (scale augmentation) and a hue shift (stain augmentation), and three more switches make a
model indifferent to how its images were stored and resampled: a random JPEG re-compression, a slight
Gaussian blur and a shrink-and-enlarge with a random interpolation (each applied to half the images, before
any other step, at the scale the images arrive with). All are off unless a run's config turns them on.
Evaluation: a centre crop. The image and its mask go
through one call, so every geometric step is applied identically to both (``tv_tensors.Mask`` is resized
with nearest neighbour). Images leave as float32 in [0, 1], masks as uint8 {0, 1}.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


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


#: Each image-quality augmentation (JPEG, blur, resampling) is applied to this share of the training images.
DEGRADE_P = 0.5
#: The interpolations a resampled image is shrunk and enlarged with (each drawn at random).
RESAMPLE_MODES = (v2.InterpolationMode.NEAREST, v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC)


class ShrinkEnlarge(v2.Transform):
    """Shrink the image by a factor drawn uniformly from ``[low, high]`` and enlarge it back to its size, each
    time with an interpolation drawn from ``modes`` (another resizing software or camera scaler);
    masks pass unchanged, since the image keeps its size."""

    def __init__(self, low: float, high: float, modes=RESAMPLE_MODES):
        super().__init__()
        self.low, self.high, self.modes = float(low), float(high), tuple(modes)

    def make_params(self, flat_inputs: list) -> dict:
        k = torch.randint(len(self.modes), (2,)).tolist()
        factor = self.low + (self.high - self.low) * torch.rand(()).item()
        return {"factor": factor, "down": self.modes[k[0]], "up": self.modes[k[1]]}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        h, w = inpt.shape[-2:]
        small = [max(1, round(h * params["factor"])), max(1, round(w * params["factor"]))]
        out = F.resize(inpt, small, interpolation=params["down"], antialias=True)
        return F.resize(out, [h, w], interpolation=params["up"], antialias=True)


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """``img`` encoded as a JPEG of ``quality`` with PIL's other defaults (4:2:0 chroma subsampling): the
    encoding ``wbc prepare`` writes, the loaders' round trip after a resize and :class:`Recompress`."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class Recompress(v2.Transform):
    """Re-encode the image as a JPEG of a quality drawn uniformly from ``[low, high]``, with the encoder that
    ``wbc prepare`` writes with (:func:`jpeg_bytes`: PIL, 4:2:0 chroma); masks pass unchanged.
    (torchvision's own ``v2.JPEG`` rests on an image codec it deprecates.)"""

    def __init__(self, low: int, high: int):
        super().__init__()
        self.low, self.high = int(low), int(high)

    def make_params(self, flat_inputs: list) -> dict:
        return {"quality": int(torch.randint(self.low, self.high + 1, ()).item())}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        pil = Image.fromarray(inpt.permute(1, 2, 0).numpy())
        out = np.array(Image.open(io.BytesIO(jpeg_bytes(pil, params["quality"]))).convert("RGB"))
        return tv_tensors.wrap(torch.from_numpy(out).permute(2, 0, 1).contiguous(), like=inpt)


def _degrade(jpeg_quality, blur: float, resample) -> list:
    """The image-quality augmentations that are switched on, each applied with probability :data:`DEGRADE_P`."""
    steps = []
    if resample:
        steps.append(ShrinkEnlarge(*resample))
    if blur:
        steps.append(v2.GaussianBlur(5, sigma=(0.1, float(blur))))
    if jpeg_quality:
        steps.append(Recompress(*jpeg_quality))
    return [v2.RandomApply([t], p=DEGRADE_P) for t in steps]


def train_transform(size: int, resize: int | None = None, rot90: bool = False, color_jitter: float = 0.0,
                    hue_jitter: float = 0.0, zoom=None, jpeg_quality=None, blur: float = 0.0,
                    resample=None) -> v2.Compose:
    """Random-crop ``size``, random flips; optionally a random
    multiple of 90 degrees (with the flips: all eight symmetries of the square, which leave a cell's class
    unchanged) and a colour jitter of the image only (brightness, contrast and saturation by ±``color_jitter``).

    Two switches aim at other laboratories: ``hue_jitter`` shifts the hue by up to ±``hue_jitter`` of the
    colour circle (a stand-in for another stain; it costs about as much as the rest of the pipeline on a CPU)
    and ``zoom = (low, high)`` rescales half of the images by a random factor in that range (another
    microscope, camera or crop framing shows the cell at another size). ``resize`` is the shorter side the
    images arrive with (the zoom's nominal scale; ``size`` when None).

    Three switches aim at how images were stored and resized, each applied to half the images:
    ``jpeg_quality = (low, high)`` re-compresses as a JPEG of a random quality in that range
    (:class:`Recompress`), ``blur = s`` blurs with a Gaussian of sigma up to ``s`` pixels, and ``resample =
    (low, high)`` shrinks by a random factor in that range and enlarges back (:class:`ShrinkEnlarge`)."""
    steps = [*_degrade(jpeg_quality, blur, resample), *_zoom(size, resize, zoom),
             v2.RandomCrop(size, pad_if_needed=True), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
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
          hue_jitter: float = 0.0, zoom=None, jpeg_quality=None, blur: float = 0.0, resample=None) -> v2.Compose:
    """The training or evaluation transform of a run (augmentation only in training)."""
    return train_transform(size, resize, rot90, color_jitter, hue_jitter, zoom, jpeg_quality, blur, resample) \
        if train else eval_transform(size)
