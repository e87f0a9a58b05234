"""The model at work, the same for training, evaluation, the benchmarks and the notebooks: the device
runtime, loading a trained model, loaders in evaluation order, the forward-pass loop (``predict``) with the
metrics of a split, the predicted-mask rule, and the examples the figures show."""

from __future__ import annotations

import functools
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.core import faults
from wbclib.data import datasets, images
from wbclib.model.network import MultiTaskUNet
from wbclib.training import distributed, metrics, runs

LOSS_PARTS = ("total", "mse", "ce", "dice")


class TrainingDiverged(WbcError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# -- the device ----------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """The device of a config's ``device`` value; a clear error for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise WbcError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise WbcError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WbcError(f"device {name!r} requested but CUDA is not available on this machine "
                       "(use --device cpu, or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise WbcError(f"device {name!r} requested but this machine has {n} CUDA device(s): cuda:0"
                       + (f" to cuda:{n - 1}" if n > 1 else ""))
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16); emulated bf16 is slower than fp32."""
    if faults.pretend("cpu-without-bf16"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass
class Runtime:
    """Device-dependent choices resolved from the config's 'auto' values."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int

    @classmethod
    def from_config(cls, config: cfg.RunConfig) -> Runtime:
        """'auto' picks what benchmarks/throughput.py measured to be fastest: bf16 autocast on GPUs and on
        CPUs with native bf16 (fp32 elsewhere), channels_last everywhere."""
        device = resolve_device(config.device)
        cuda = device.type == "cuda"
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if cuda or cpu_has_native_bf16() else "fp32"
        channels_last = True if config.channels_last is None else config.channels_last
        workers = config.num_workers
        if workers is None:
            workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if cuda else 0
        return cls(device, torch.bfloat16 if precision == "bf16" else None, channels_last, workers)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


#: On a CPU, loader processes pay off when the stored images hold at least this many times the pixels that the
#: network's input is cut from: decoding and resizing them then holds up the training steps (full-size 360-px
#: PBC JPEGs for a 96-px input: 14x; on an idle 2-core EPYC 25 % of step time waiting without a worker, 3 % with one).
#: The 96-px embedded cells (1x) keep loading in the training process.
DECODE_BOUND_RATIO = 4


def cpu_loader_workers(config: cfg.RunConfig, dataset: datasets.CellDataset) -> int:
    """Loader processes for a CPU run whose config leaves ``num_workers`` open: one per thread this process
    has beyond its first (at most 4) when decoding is the bottleneck (see :data:`DECODE_BOUND_RATIO`; judged
    from up to 16 images spread over the set), else none. The choice depends only on the data, the config and
    the thread count, so a resumed run makes the same one."""
    records = dataset.records[::max(1, len(dataset.records) // 16)][:16]
    sizes = [s for s in (images.image_size(r.path) for r in records) if s]
    if not sizes:
        return 0
    stored = float(np.median([w * h for w, h in sizes]))
    side = config.resize or config.input_size
    if stored < DECODE_BOUND_RATIO * side * side:
        return 0
    return max(0, min(4, torch.get_num_threads() - 1))


# -- loaders -------------------------------------------------------------------------------------------------

def seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def to_device(batch: dict, rt: Runtime):
    nb = rt.device.type == "cuda"
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    images = batch["image"].to(rt.device, non_blocking=nb).contiguous(memory_format=fmt)
    labels = torch.as_tensor(batch["label"]).to(rt.device, non_blocking=nb)
    masks = batch["mask"].to(rt.device, non_blocking=nb)
    has_mask = torch.as_tensor(batch["has_mask"]).to(rt.device, non_blocking=nb)
    return images, labels, masks, has_mask


def make_loader(dataset, config: cfg.RunConfig, rt: Runtime, shuffle: bool = False, generator=None,
                ctx: distributed.Context | None = None) -> DataLoader:
    """Evaluation loader (in order), or the training loader: shuffled global batches, this process's share.

    Workers are not persistent: they are re-seeded from ``generator`` every epoch, which keeps resume exact.
    """
    common = dict(num_workers=rt.num_workers, pin_memory=rt.device.type == "cuda", worker_init_fn=seed_worker,
                  generator=generator, persistent_workers=False)
    if not shuffle:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, **common)
    sampler = distributed.ShardedBatchSampler(len(dataset), config.batch_size, ctx or distributed.Context(),
                                              generator)
    return DataLoader(dataset, batch_sampler=sampler, **common)


# -- the model -----------------------------------------------------------------------------------------------

def build_model(config: cfg.RunConfig) -> MultiTaskUNet:
    return MultiTaskUNet(config.num_classes, config.base_width, config.depth, norm=config.norm)


def load_model(run_or_file: str | Path, device: str | torch.device = "cpu") -> tuple[MultiTaskUNet, cfg.RunConfig]:
    """The model of a finished (or interrupted) run and its config, in eval mode."""
    state = runs.load_checkpoint(run_or_file, map_location="cpu")
    config = cfg.from_dict(state["config"]) if "config" in state else cfg.from_profile("quick")
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        assumed = "" if "config" in state else ", assumed: the checkpoint has no config"
        raise WbcError(f"{run_or_file}: its weights do not fit the network its config describes "
                       f"({describe_network(config)}{assumed}); it was made by another program or config") from None
    return model.to(device).eval(), config


def describe_network(config: cfg.RunConfig) -> str:
    return (f"{config.profile} profile, {config.dataset}, {config.num_classes} classes, base width "
            f"{config.base_width}, depth {config.depth}")


# -- the forward pass and the metrics of a split -------------------------------------------------------------

class Averages:
    """Running sample-weighted means of the loss components; the Dice term is averaged over the samples
    that have a mask only (batches without one would otherwise dilute it towards 0). ``reduce`` sums the
    running totals of all processes of a distributed run."""

    def __init__(self):
        self.sums = dict.fromkeys(LOSS_PARTS, 0.0)
        self.n = self.n_masked = 0

    def add(self, parts: dict[str, float], n: int, n_masked: int) -> None:
        for k in ("total", "mse", "ce"):
            self.sums[k] += parts[k] * n
        self.sums["dice"] += parts["dice"] * n_masked
        self.n += n
        self.n_masked += n_masked

    def reduce(self, ctx: distributed.Context) -> Averages:
        *sums, self.n, self.n_masked = ctx.sum([*self.sums.values(), self.n, self.n_masked])
        self.sums = dict(zip(self.sums, sums))
        return self

    def means(self) -> dict[str, float]:
        out = {k: self.sums[k] / max(self.n, 1) for k in ("total", "mse", "ce")}
        out["dice"] = self.sums["dice"] / self.n_masked if self.n_masked else 0.0
        return out


def check_finite(parts, epoch: int | None, step: int, phase: str = "training") -> dict[str, float]:
    values = {k: float(getattr(parts, k).detach()) for k in LOSS_PARTS}
    bad = [k for k in ("mse", "ce", "dice", "total") if not math.isfinite(values[k])]
    if bad:
        where = (f"epoch {epoch}, " if epoch is not None else "") + ("step" if phase == "training" else
                                                                     "validation batch")
        raise TrainingDiverged(f"loss became {values[bad[0]]} at {where} {step} (component: {bad[0]}); "
                               "the last good checkpoint is kept")
    return values


def class_mask(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The mask-logit channel of each sample's class: (B, C, H, W), (B,) -> (B, 1, H, W)."""
    index = classes.clamp(min=0)[:, None, None, None].expand(-1, 1, *mask_logits.shape[2:])
    return mask_logits.float().gather(1, index)


def predicted_mask(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The predicted cell mask, (B, 1, H, W) bool: the class's mask logit above 0 (probability above 0.5)."""
    return class_mask(mask_logits, classes) > 0


@torch.no_grad()
def predict(model, loader, rt: Runtime, loss_fn=None, epoch: int | None = None) -> dict:
    """Run ``model`` over ``loader``: logits, embeddings, labels, paths, loss means, PSNR, mask Dice/IoU.
    With ``loss_fn``, a NaN or infinite loss stops the run (``epoch`` names where)."""
    model.eval()
    avg = Averages()
    out_lists = {k: [] for k in ("logits", "embedding", "label", "path")}
    seg_pred, seg_true, seg_label, psnrs = [], [], [], []
    for step, batch in enumerate(loader, start=1):
        images, labels, masks, has_mask = to_device(batch, rt)
        with rt.autocast():
            out = model(images)
        if loss_fn is not None:
            parts = loss_fn(out, images, labels, masks, has_mask)
            bad = faults.poison("val-loss")
            if bad is not None:
                parts = parts._replace(mse=parts.mse + bad, total=parts.total + bad)
            values = check_finite(parts, epoch, step, "validation")
            avg.add(values, len(images), int(loss_fn.dice_samples(labels, has_mask).sum()))
        psnrs.append(metrics.psnr(out.reconstruction, images) * len(images))  # reduced on the device
        out_lists["logits"].append(out.class_logits.float().cpu())
        out_lists["embedding"].append(out.embedding.float().cpu())
        out_lists["label"].append(labels.cpu())
        out_lists["path"] += list(batch["path"])
        sel = has_mask.bool() & (labels >= 0)
        if sel.any():
            seg_pred.append(predicted_mask(out.mask_logits[sel], labels[sel]).squeeze(1).cpu().numpy())
            seg_true.append(masks[sel].squeeze(1).bool().cpu().numpy())
            seg_label.append(labels[sel].cpu().numpy())
    result = {k: torch.cat(v).numpy() for k, v in out_lists.items() if k != "path"}
    result["path"] = np.array(out_lists["path"])
    result["losses"] = avg.means() if loss_fn is not None else None
    result["psnr"] = float(sum(psnrs) / max(len(result["label"]), 1))
    result["segmentation"] = result["segmentation_by_class"] = None
    if seg_pred:
        pred_masks, true_masks, mask_labels = map(np.concatenate, (seg_pred, seg_true, seg_label))
        result["segmentation"] = metrics.segmentation_metrics(pred_masks, true_masks)
        result["segmentation_by_class"] = {int(c): metrics.segmentation_metrics(pred_masks[mask_labels == c],
                                                                                true_masks[mask_labels == c])
                                           for c in np.unique(mask_labels)}
    return result


def summarise(pred: dict, classes: tuple[str, ...], majority_class: int | None) -> dict:
    """Classification, reconstruction and mask metrics of one split, JSON-ready."""
    out = {"n": len(pred["label"]), "psnr": pred["psnr"]}
    if pred["losses"] is not None:
        out["loss"] = pred["losses"]
    if len(classes) > 1 and (pred["label"] >= 0).any():
        y_pred = pred["logits"].argmax(1)
        out.update(metrics.classification_metrics(pred["label"], y_pred, list(classes), majority_class))
    if pred["segmentation"] is not None:
        out["masks"] = pred["segmentation"]
    return out


@torch.no_grad()
def examples(run_dir: str | Path, n: int = 8, device: str = "cpu") -> dict:
    """A few images of a finished run for figures: from the reported split and, where masks exist, from the
    masked training images. Each entry holds ``images``, ``reconstructions``, ``masks``, ``pred_masks``
    (:func:`predicted_mask` of the predicted class), ``labels``, ``predictions`` and ``paths``."""
    model, config = load_model(run_dir, device)
    config = config.replace(device=str(device), num_workers=0, precision="fp32", channels_last=False)
    rt = Runtime.from_config(config)
    splits = datasets.build_splits(config, datasets.data_root(config), check=False)  # validated when the run trained
    sets = {splits.report_name: splits.report.with_records(splits.report.records[:n])}
    masked = [r for r in splits.train.records if r.mask_path is not None][:n]
    if masked:
        sets["train_masks"] = splits.report.with_records(masked)
    result = {}
    for name, ds in sets.items():
        batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
        images = batch["image"].to(rt.device)
        out = model(images)
        pred = out.class_logits.argmax(1)
        result[name] = {"images": images.cpu(), "reconstructions": out.reconstruction.float().clamp(0, 1).cpu(),
                        "masks": batch["mask"].float(), "has_mask": batch["has_mask"],
                        "pred_masks": predicted_mask(out.mask_logits, pred).float().cpu(), "labels": batch["label"],
                        "predictions": pred.cpu(), "paths": list(batch["path"])}
    return result


# -- what a step costs, and on what --------------------------------------------------------------------------

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


#: Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), for the MFU of the epoch log.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def gpu_peak_flops(device: torch.device) -> float | None:
    """The datasheet bf16 peak of this GPU, where it is one of :data:`GPU_PEAK_BF16`; None on a CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)


# -- test-time adaptation ------------------------------------------------------------------------------------

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BATCHNORMS)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader, device: torch.device | str = "cpu", autocast=None) -> int:
    """AdaBN: replace every BatchNorm layer's running mean and variance by the statistics of the images of
    ``loader`` (Li et al., 2016). Only the images are used: labels and masks are never read. The BatchNorm
    layers run in training mode with ``momentum=None`` (a cumulative average over the batches) while every
    other module stays in evaluation mode; no gradient is computed and no weight changes. The model is left in
    evaluation mode with its momenta restored. Returns the number of layers adapted (0: nothing to do, e.g. a
    GroupNorm model)."""
    layers = batchnorm_layers(model)
    if not layers:
        model.eval()
        return 0
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch
            images = images.to(device)
            if autocast is not None:
                with autocast():
                    model(images)
            else:
                model(images)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers)


def device_name(device: str | torch.device = "cpu") -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one): what every timing names."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()
