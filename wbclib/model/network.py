"""The multi-task UNet of the reference report (its Fig. 4), as small named parts.

At a 384 x 384 input with the defaults (``base_width=64``, ``depth=4``) the feature maps are::

    encoder     64@384 -> 128@192 -> 256@96 -> 512@48 -> bottleneck 512@24
    classifier  bottleneck -> Down -> 512@12 -> global average pool -> 512-d embedding -> Linear
    decoder     Up(512+512 -> 256)@48 -> Up(256+256 -> 128)@96 -> Up(128+128 -> 64)@192 -> Up(64+64 -> 64)@384
    heads       reconstruction 3@384 (sigmoid: images are in [0, 1]), mask logits num_classes@384

The decoder enlarges with bilinear upsampling rather than transposed convolutions, which is why the
deepest encoder level has half the channels it would have in the original UNet (the "bilinear halving").
"""

from __future__ import annotations

import functools
import math
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

from wbclib.core import config as cfg
from wbclib.core.config import NORMS  # the normalisation layers a config may name: batch | group

#: GroupNorm splits the channels into this many groups (fewer where a layer has fewer channels).
GROUPS = 8


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with ``gcd(GROUPS, channels)`` groups: statistics of each image alone, so the
    same at training and test time and independent of the other images of a batch."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class DoubleConv(nn.Sequential):
    """(3x3 convolution -> normalisation (BatchNorm by default) -> ReLU) twice; the building block of every
    level."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, norm: str = "batch"):
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution with 2x2 max pooling, then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, norm=norm))


class Up(nn.Module):
    """Double the resolution by bilinear upsampling, concatenate the encoder map of that size, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = DoubleConv(in_channels, out_channels, mid_channels=in_channels // 2, norm=norm)

    #: Under autocast, upsample in the dtype the map arrives in (bf16) instead of the fp32 autocast runs bilinear
    #: upsampling in (and the fp32 concatenation that follows): a GPU speed lever, off unless set
    #: (:attr:`MultiTaskUNet.upsample_in_autocast_dtype`).
    native_dtype = False

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.native_dtype and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                up = self.up(x.to(skip.dtype))
        else:
            up = self.up(x)
        return self.conv(torch.cat([skip, up], dim=1))


class ClassifierBranch(nn.Module):
    """One more Down from the bottleneck, global average pooling to the embedding, a linear classifier."""

    def __init__(self, channels: int, num_classes: int, norm: str = "batch"):
        super().__init__()
        self.down = Down(channels, channels, norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.pool(self.down(bottleneck)).flatten(1)
        return self.fc(embedding), embedding


class UNetOutput(NamedTuple):
    """What one forward pass returns; every field is batch-first."""

    reconstruction: torch.Tensor  # (B, 3, H, W) in [0, 1], like the input
    mask_logits: torch.Tensor  # (B, num_classes, H, W), before the sigmoid
    class_logits: torch.Tensor  # (B, num_classes)
    embedding: torch.Tensor  # (B, embedding_dim): 512 with the defaults


class LoadReport(NamedTuple):
    """Which checkpoint tensors were loaded into a model, and which were skipped (and why)."""

    loaded: list[str]
    skipped: list[str]


class MultiTaskUNet(nn.Module):
    """UNet that reconstructs its input, segments the cell and classifies it from the bottleneck.

    Args:
        num_classes: classes of the classifier and channels of the mask head (5 for WBC, 2 for CAM16).
        base_width: channels of the first level; each deeper level doubles it.
        depth: number of 2x downsamplings between the input and the bottleneck.
        in_channels: image channels.
        norm: ``batch`` (BatchNorm, the report's) or ``group`` (GroupNorm).

    Input sides must be divisible by ``2 ** (depth + 1)`` (the classifier branch downsamples once more).
    """

    def __init__(self, num_classes: int = 5, base_width: int = 64, depth: int = 4, in_channels: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if depth < 1 or base_width < 1 or num_classes < 1:
            raise ValueError(f"need depth >= 1, base_width >= 1, num_classes >= 1; got {depth}, {base_width}, "
                             f"{num_classes}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.num_classes, self.base_width, self.depth, self.norm = num_classes, base_width, depth, norm
        widths = [base_width * 2**i for i in range(depth)]  # encoder levels above the bottleneck
        bottleneck = widths[-1]  # bilinear halving: base_width * 2**depth // 2
        self.embedding_dim = bottleneck

        self.inc = DoubleConv(in_channels, widths[0], norm=norm)
        self.downs = nn.ModuleList(Down(a, b, norm) for a, b in pairwise(widths))
        self.bottleneck = Down(widths[-1], bottleneck, norm)
        # Each Up takes the upsampled map plus the skip of the same width, and halves towards the next skip.
        outs = [w // 2 for w in widths[1:]][::-1] + [widths[0]]
        self.ups = nn.ModuleList(Up(2 * w, o, norm) for w, o in zip(widths[::-1], outs))
        self.classifier = ClassifierBranch(bottleneck, num_classes, norm)
        self.reconstruction_head = nn.Conv2d(widths[0], in_channels, kernel_size=1)
        self.mask_head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    @property
    def upsample_in_autocast_dtype(self) -> bool:
        """Whether the decoder upsamples in bf16 under bf16 autocast (config ``upsample_bf16``; weights unchanged)."""
        return all(up.native_dtype for up in self.ups)

    @upsample_in_autocast_dtype.setter
    def upsample_in_autocast_dtype(self, on: bool) -> None:
        for up in self.ups:
            up.native_dtype = bool(on)

    @property
    def divisor(self) -> int:
        """Input sides must be a multiple of this."""
        return 2 ** (self.depth + 1)

    def forward(self, x: torch.Tensor) -> UNetOutput:
        h, w = x.shape[-2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"input size {h}x{w} is not divisible by {self.divisor} "
                             f"(2**(depth+1) for depth={self.depth}); crop or resize the images")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = bottom = self.bottleneck(skips[-1])
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        class_logits, embedding = self.classifier(bottom)
        reconstruction = torch.sigmoid(self.reconstruction_head(y))  # images are scaled to [0, 1]
        return UNetOutput(reconstruction, self.mask_head(y), class_logits, embedding)


def load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load every tensor of ``state_dict`` whose name and shape match ``model``; leave the rest as initialised.

    This is how a model trained with another ``num_classes`` (CAM16: 2, WBC: 5) starts a new task: the
    encoder, decoder and reconstruction head are reused, the class-specific layers (classifier and mask
    head) keep their fresh initialisation. Returns the names loaded and the names skipped, each skipped
    name with its reason, so a notebook can show them.
    """
    own = model.state_dict()
    loaded, skipped, update = [], [], {}
    for name, tensor in state_dict.items():
        if name not in own:
            skipped.append(f"{name} (not in model)")
        elif own[name].shape != tensor.shape:
            skipped.append(f"{name} (shape {tuple(tensor.shape)} != {tuple(own[name].shape)})")
        else:
            update[name] = tensor
            loaded.append(name)
    skipped += [f"{name} (not in checkpoint)" for name in own if name not in state_dict]
    model.load_state_dict(update, strict=False)
    return LoadReport(loaded, skipped)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- the network of a run config -----------------------------------------------------------------------------

def build_model(config: cfg.RunConfig) -> MultiTaskUNet:
    """A fresh network of the size ``config`` describes (its classes, base width, depth and norm), upsampling in
    bf16 under autocast where the config asks (``upsample_bf16``)."""
    model = MultiTaskUNet(config.num_classes, config.base_width, config.depth, norm=config.norm)
    model.upsample_in_autocast_dtype = config.upsample_bf16
    return model


def describe_network(config: cfg.RunConfig) -> str:
    """The network of ``config`` in words, for messages about weights that do not fit."""
    return (f"{config.profile} profile, {config.dataset}, {config.num_classes} classes, base width "
            f"{config.base_width}, depth {config.depth}")


def flops_per_image(config: cfg.RunConfig) -> float:
    """Forward + backward FLOPs of one training image, counted by ``torch.utils.flop_counter`` on a model
    built on the meta device (shapes only: nothing is computed, nothing random is drawn). Counted once per
    network and input size (the runs of a study share a handful)."""
    return _flops(config.num_classes, config.base_width, config.depth, config.norm, config.input_size)


@functools.lru_cache(maxsize=32)
def _flops(num_classes: int, base_width: int, depth: int, norm: str, input_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = MultiTaskUNet(num_classes, base_width, depth, norm=norm)
        x = torch.empty(1, 3, input_size, input_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        (out.reconstruction.mean() + out.class_logits.mean() + out.mask_logits.mean()).backward()
    return float(counter.get_total_flops())


__all__ = [
    "ClassifierBranch",
    "DoubleConv",
    "Down",
    "LoadReport",
    "MultiTaskUNet",
    "UNetOutput",
    "Up",
    "build_model",
    "count_parameters",
    "describe_network",
    "flops_per_image",
    "load_matching",
    "norm_layer",
]
