"""One config object for a run: filled by a profile, a papermill parameters cell or ``wbc train`` flags,
carried to the trainer and written to the run's ``config.json``.

Two profiles:

- ``paper``: the reference report's recipe (Adam, 32 epochs, StepLR decaying every 12 epochs, gradient
  clipping, 384 x 384 random crops of the 575 x 575 images, random flips, lambda_CE = 2, lambda_D = 1,
  base width 64). Meant for a GPU.
- ``quick``: the same network and losses scaled for two CPU cores: the shorter side resized to 96 and
  cropped to 64 (the paper's field of view on the course images, a sixth of the pixels per side), base width
  16, batch 32, 6 epochs, a linear warm-up then cosine decay of the learning rate instead of StepLR, and
  right-angle rotations plus a mild colour jitter besides the flips (measured on the real PBC cells: see
  the book's method page).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from wbclib import CAM16_CLASSES, WBC_CLASSES, WBC_SUBSETS, WbcError

DATASETS = ("wbc", "cam16", "prcc")
DATA_SOURCES = ("embedded", "synthetic")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("step", "cosine")
#: Normalisation layers: ``batch`` (the report's BatchNorm) or ``group`` (GroupNorm, Wu & He 2018).
NORMS = ("batch", "group")
RESIDENT = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The report decays the learning rate after 12 of its 32 epochs; scaled profiles keep that fraction.
PAPER_DECAY_FRACTION = 12 / 32


class ConfigError(WbcError):
    """An unknown key or an impossible value in a run config."""


@dataclass
class RunConfig:
    """Everything one training run depends on. Field comments give units and allowed values; the defaults are
    the ``quick`` profile's."""

    profile: str = "quick"  # the profile the defaults came from (informational)
    dataset: str = "wbc"  # wbc | cam16 | prcc
    subset: int = 100  # WBC subset: 1 | 10 | 50 | 100 (ignored for cam16/prcc)
    data: str = "embedded"  # without data_root: embedded (real cells shipped with the project) | synthetic
    data_root: str | None = None  # course data root (overrides ``data``)
    synthetic_scale: float = 0.02  # size of the synthetic stand-in (fraction of the course counts)
    synthetic_cam16_scale: float | None = 0.1  # its CAM16 part (None: synthetic_scale)
    synthetic_seed: int = 0
    prcc_folder: str = "pRCC_nolabel"  # the tiles the reconstruction stage reads: pRCC_nolabel | smears_nolabel
    masks: bool = True  # train the mask head with the Generalized Dice Loss where masks exist
    init: str | None = None  # checkpoint file or run directory to start from (head swap)
    input_size: int = 64  # side of the square crop fed to the network
    resize: int | None = 96  # shorter side before cropping (`wbc prepare --size`'s rule); None = native resolution
    resize_quality: int | None = 90  # after a resize: JPEG round trip at this quality (as `wbc prepare`); None = off
    rot90: bool = True  # training augmentation: random right-angle rotations (besides the flips)
    color_jitter: float = 0.1  # training augmentation: brightness, contrast, saturation by ±x; 0 = off
    hue_jitter: float = 0.0  # training augmentation: hue shift by ±x of the colour circle (0..0.5); 0 = off
    zoom: list[float] | None = None  # training augmentation: [low, high] rescale of half the images; None = off
    jpeg_quality: list[int] | None = None  # training augmentation: [low, high] JPEG re-compression of half the images
    blur: float = 0.0  # training augmentation: Gaussian blur of half the images, sigma up to x pixels; 0 = off
    resample: list[float] | None = None  # training augmentation: shrink half the images by [low, high] and enlarge back
    base_width: int = 16
    depth: int = 4
    norm: str = "batch"  # normalisation layer: batch (BatchNorm, the report's) | group (GroupNorm, 8 groups)
    batch_size: int = 32
    epochs: int = 6
    min_steps: int = 100  # at least this many optimiser steps: small training sets get more epochs (0 = off)
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # step (StepLR, the report's) | cosine (linear warm-up, then cosine to 0, per batch)
    lr_step: int | None = None  # StepLR step in epochs; None = round(epochs * 12 / 32)
    warmup_epochs: float = 0.5  # cosine only: linear warm-up length, in epochs
    lr_gamma: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    lambda_ce: float = 2.0  # weight of the cross-entropy term (the report's, in both profiles)
    lambda_dice: float = 1.0  # weight of the Generalized Dice term (the report's, in both profiles)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16
    channels_last: bool | None = None  # None = on (measured faster on CPU and GPU); False = NCHW
    compile: bool = False  # torch.compile the model
    compile_mode: str | None = None  # with compile: None (torch's default) | reduce-overhead | max-autotune | ...
    upsample_bf16: bool = False  # under bf16 autocast, upsample in bf16 rather than autocast's fp32 (GPU speed lever)
    resident: str = "auto"  # decoded data kept and augmented on the device: auto (CUDA, when it fits) | on | off
    val_batch_size: int | None = None  # validation batch; None = the training batch (on CUDA at least 64)
    num_workers: int | None = None  # loader processes; None = min(8, cores - 1) on CUDA; on a CPU, one per spare
    #   thread (at most 4) when the stored images are large enough that decoding holds up training, else 0
    skip_bad: bool = False  # leave unreadable files out instead of stopping
    mask_threshold: int = 128  # mask pixel >= this is cell
    export_embeddings: bool = True  # write embeddings.npz of the reported split

    # -- derived values -------------------------------------------------------------------------------
    @property
    def step_size(self) -> int:
        """The StepLR step: explicit, or the paper's 12/32 of the epochs."""
        return self.step_size_for(self.epochs)

    def step_size_for(self, epochs: int) -> int:
        """The StepLR step of a run that trains ``epochs`` epochs (more than ``epochs`` under ``min_steps``)."""
        return self.lr_step or max(1, round(epochs * PAPER_DECAY_FRACTION))

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in index order (pRCC has one placeholder class: it is unlabeled)."""
        return {"wbc": WBC_CLASSES, "cam16": CAM16_CLASSES, "prcc": ("tissue",)}[self.dataset]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def uses_dice(self) -> bool:
        return self.masks and self.lambda_dice > 0 and self.dataset != "prcc"

    # -- construction and validation --------------------------------------------------------------------
    def __post_init__(self):
        for name in ("zoom", "jpeg_quality", "resample"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))  # the JSON form, so a config equals its config.json
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible values."""
        problems = []

        def need(ok: bool, msg: str):
            if not ok:
                problems.append(msg)

        need(self.data in DATA_SOURCES, f"data must be one of {DATA_SOURCES}, got {self.data!r}")
        need(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        need(isinstance(self.prcc_folder, str) and self.prcc_folder.endswith("_nolabel") and "/" not in
             self.prcc_folder, f"prcc_folder must be a folder name ending in _nolabel, got {self.prcc_folder!r}")
        need(self.subset in WBC_SUBSETS, f"subset must be one of {WBC_SUBSETS}, got {self.subset!r}")
        need(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        need(isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs
             and (not isinstance(self.epochs, int) or self.warmup_epochs < self.epochs),
             f"warmup_epochs must be >= 0 and below epochs, got {self.warmup_epochs!r}")
        need(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(isinstance(self.min_steps, int) and self.min_steps >= 0,
             f"min_steps must be a non-negative integer, got {self.min_steps!r}")
        for name in ("input_size", "base_width", "depth", "batch_size", "epochs"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        if not problems:
            div = 2 ** (self.depth + 1)
            need(self.input_size % div == 0,
                 f"input_size {self.input_size} is not divisible by {div} (2**(depth+1) for depth={self.depth})")
        need(self.resize is None or (isinstance(self.resize, int) and self.resize >= 1),
             f"resize must be a positive integer or None, got {self.resize!r}")
        q = self.resize_quality
        need(q is None or (isinstance(q, int) and not isinstance(q, bool) and 1 <= q <= 100),
             f"resize_quality must be an integer in 1..100 or None, got {q!r}")
        need(self.lr_step is None or (isinstance(self.lr_step, int) and self.lr_step >= 1),
             f"lr_step must be a positive integer or None, got {self.lr_step!r}")
        for name in ("lr", "lr_gamma", "synthetic_scale"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name} must be > 0, got {v!r}")
        for name in ("grad_clip", "lambda_ce", "lambda_dice", "color_jitter"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{name} must be >= 0, got {v!r}")
        need(isinstance(self.hue_jitter, (int, float)) and 0 <= self.hue_jitter <= 0.5,
             f"hue_jitter must be in 0..0.5, got {self.hue_jitter!r}")
        z = self.zoom
        need(z is None or (isinstance(z, (list, tuple)) and len(z) == 2
                           and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in z)
                           and z[0] <= z[1]),
             f"zoom must be None or [low, high] with 0 < low <= high, got {z!r}")
        j = self.jpeg_quality
        need(j is None or (isinstance(j, (list, tuple)) and len(j) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100 for v in j) and j[0] <= j[1]),
             f"jpeg_quality must be None or [low, high] with 1 <= low <= high <= 100, got {j!r}")
        need(isinstance(self.blur, (int, float)) and math.isfinite(self.blur) and 0 <= self.blur <= 5,
             f"blur must be a sigma in 0..5 pixels, got {self.blur!r}")
        r = self.resample
        need(r is None or (isinstance(r, (list, tuple)) and len(r) == 2
                           and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in r) and r[0] <= r[1]),
             f"resample must be None or [low, high] with 0 < low <= high <= 1, got {r!r}")
        need(self.resident in RESIDENT, f"resident must be one of {RESIDENT}, got {self.resident!r}")
        need(self.compile_mode is None or self.compile_mode in COMPILE_MODES,
             f"compile_mode must be None or one of {COMPILE_MODES}, got {self.compile_mode!r}")
        need(self.val_batch_size is None or (isinstance(self.val_batch_size, int) and self.val_batch_size >= 1),
             f"val_batch_size must be a positive integer or None, got {self.val_batch_size!r}")
        need(self.num_workers is None or (isinstance(self.num_workers, int) and self.num_workers >= 0),
             f"num_workers must be >= 0 or None, got {self.num_workers!r}")
        cam = self.synthetic_cam16_scale
        need(cam is None or (isinstance(cam, (int, float)) and cam > 0),
             f"synthetic_cam16_scale must be > 0 or None, got {cam!r}")
        need(0 <= self.mask_threshold <= 255, f"mask_threshold must be in 0..255, got {self.mask_threshold!r}")
        if problems:
            raise ConfigError("invalid run config: " + "; ".join(problems))

    def replace(self, **changes) -> RunConfig:
        """A copy with some fields changed (unknown names are rejected)."""
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


FIELDS = {f.name: f for f in fields(RunConfig)}

PROFILES: dict[str, dict[str, Any]] = {
    "paper": dict(profile="paper", input_size=384, resize=None, base_width=64, depth=4, batch_size=16, epochs=32,
                  lr=1e-3, lr_schedule="step", rot90=False, color_jitter=0.0, min_steps=0, lr_step=12, lr_gamma=0.1,
                  grad_clip=1.0, synthetic_scale=1.0, synthetic_cam16_scale=None),
    "quick": dict(profile="quick", input_size=64, resize=96, base_width=16, depth=4, batch_size=32, epochs=6,
                  lr=2e-3, lr_schedule="cosine", warmup_epochs=0.5, rot90=True, color_jitter=0.1, min_steps=100,
                  lr_step=None, lr_gamma=0.1, grad_clip=1.0, synthetic_scale=0.02, synthetic_cam16_scale=0.1),
}


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a config from a dict, rejecting unknown keys by name."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(FIELDS)}")
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid run config: {exc}") from None


def same_config(stored: Any, current: dict[str, Any]) -> bool:
    """Whether ``stored`` (a run's ``config.json`` or its checkpoint's config) is the config ``current`` (a
    :meth:`RunConfig.to_dict`). Keys added to :class:`RunConfig` after the run was made take their defaults, and
    a key is only ever added with a default that keeps the earlier behaviour, so a run made before an option
    existed is still the same run (reused by the study, resumable)."""
    if not isinstance(stored, dict):
        return False
    try:
        return json.loads(from_dict(stored).to_json()) == json.loads(json.dumps(current))  # JSON's view of both
    except (ConfigError, TypeError, ValueError):
        return False


def from_profile(name: str = "quick", **overrides) -> RunConfig:
    """The named profile's defaults, with ``overrides`` applied. An override of None is a value (``resize=None``
    means native resolution); callers leave out the keys they were not given."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return from_dict({**PROFILES[name], **overrides})


def load(path: str | Path) -> RunConfig:
    """Read a ``config.json``."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of config keys")
    return from_dict(values)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (from ``--set``) into a typed pair: JSON values, else the raw string."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(FIELDS)}")
    low = raw.strip().lower()
    if low in ("none", "null"):
        return key, None
    if low in ("true", "false"):
        return key, low == "true"
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw



def from_parameters(profile: str = "quick", overrides: dict | None = None, **params) -> RunConfig:
    """The config of a training notebook's parameters cell (and of the study runner, which passes the same
    parameters): the profile, then ``overrides``, then the named parameters that are not None."""
    return from_profile(profile, **{**(overrides or {}), **{k: v for k, v in params.items() if v is not None}})
