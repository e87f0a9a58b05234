"""The training loop shared by every run of the study: ``fit(config, run_dir)``.

Read top to bottom: resolve the device and data, build loaders, model, loss, Adam and StepLR; then for each
epoch train, validate, append to the history and checkpoint atomically; finally evaluate the reported split
and write ``metrics.json`` (last, so its presence means "finished"), embeddings and the manifest.

Randomness is re-seeded at the start of every epoch from ``(seed, epoch)``: shuffling, augmentation and
loader workers depend only on the epoch, so a run killed after epoch k and resumed ends exactly where an
uninterrupted run ends (on CPU, where the kernels are deterministic).
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import WbcError, __version__, data, distributed, metrics, runs, transforms
from . import config as cfg
from .losses import MultiTaskLoss
from .model import MultiTaskUNet, load_matching

HISTORY_COLUMNS = ["epoch", "lr", "train_total", "train_mse", "train_ce", "train_dice", "val_total", "val_mse",
                   "val_ce", "val_dice", "val_accuracy", "seconds"]
LOSS_PARTS = ("total", "mse", "ce", "dice")


class TrainingDiverged(WbcError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# -- environment ------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where derived data (the synthetic stand-in) is cached: $WBC_CACHE or ~/.cache/wbc-study."""
    return Path(os.environ.get("WBC_CACHE") or Path.home() / ".cache" / "wbc-study")


def synthetic_root(config: cfg.RunConfig, progress: bool = False) -> Path:
    """Generate (once) and return the synthetic stand-in of the course data that ``config`` asks for."""
    from . import synth

    scale, seed = config.synthetic_scale, config.synthetic_seed
    cam = config.synthetic_cam16_scale or scale
    root = cache_dir() / f"synthetic-scale{scale:g}-cam16-{cam:g}-seed{seed}"
    synth.generate(root, scale=scale, seed=seed, progress=progress, cam16_scale=cam)
    return root


#: The real cells that ship with the project (made by `wbc prepare`; see embedded/README.md).
EMBEDDED = Path(__file__).resolve().parents[1] / "embedded"


def embedded_root() -> Path:
    """The embedded real data set, or a clear error where this installation lacks it."""
    if not (EMBEDDED / "manifest.json").is_file():
        raise data.DatasetError(f"the embedded real data is not at {EMBEDDED} (it ships with a checkout of the "
                                "project); pass --data-root PATH for your own copy or --data synthetic")
    return EMBEDDED


def embedded_external_sets() -> list[Path]:
    """The labelled sets that ship with the embedded data (``external/<name>/``), evaluated by default."""
    folder = EMBEDDED / "external"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


#: Where a dataset's images come from, in words (Markdown): by data source, or by source and dataset.
SOURCE_WORDS = {
    "embedded": "real cells embedded in the project (`embedded/`): PBC images (Acevedo et al., 2020; CC BY 4.0) "
                "with expert-masked segwbc cells (Zheng et al., 2018; GPL-3.0) as the masked share; not the "
                "course data",
    "embedded-prcc": "real, unlabelled tiles of BCCD blood-smear photographs (MIT) embedded in the project, "
                     "instead of pRCC kidney tissue",
    "synthetic": "the **synthetic stand-in** (`wbc synth`): procedurally drawn images, not real cells",
    "data-root": "the course data given with `--data-root`",
}


def describe_source(source: str, dataset: str) -> str:
    """The words of :data:`SOURCE_WORDS` for one dataset read from one data source."""
    return SOURCE_WORDS.get(f"{source}-{dataset}", SOURCE_WORDS[source])


def data_source(config: cfg.RunConfig) -> str:
    """Where a run's images come from: 'data-root' (a user's copy), 'embedded' (real cells shipped with the
    project; it has no CAM16 part, so CAM16 runs use the synthetic stand-in) or 'synthetic'."""
    if config.data_root:
        return "data-root"
    if config.data == "embedded" and config.dataset != "cam16":
        return "embedded"
    return "synthetic"


def data_root(config: cfg.RunConfig, progress: bool = False) -> Path:
    source = data_source(config)
    if source == "data-root":
        return Path(config.data_root).expanduser()
    if source == "embedded":
        return embedded_root()
    return synthetic_root(config, progress)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WbcError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16); emulated bf16 is slower than fp32."""
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of the run seed and the epoch only (what makes resume exact)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


# -- data -------------------------------------------------------------------------------------------------

@dataclass
class Splits:
    """The datasets of one run: ``train``, ``val`` (watched every epoch) and ``report`` (the reported split)."""

    train: data.CellDataset
    val: data.CellDataset
    report: data.CellDataset
    report_name: str
    classes: tuple[str, ...]
    root: Path
    records: list


def build_splits(config: cfg.RunConfig, root: Path, check: bool = True) -> Splits:
    """Index and validate (``check``: decode every file) each split a run needs, before any training starts."""
    skip, classes = config.skip_bad, config.classes
    if config.dataset == "wbc":
        tr = data.wbc_records(root, config.subset, "train", skip, check)
        va = data.wbc_records(root, config.subset, "val", skip, check)
        rep, rep_name = va, "val"
    elif config.dataset == "cam16":
        tr = data.cam16_records(root, "train", skip, check)
        va = data.cam16_records(root, "val", skip, check)
        rep, rep_name = data.cam16_records(root, "test", skip, check), "test"
    else:
        tr = data.prcc_records(root, "train", skip_bad=skip, check=check)
        va = data.prcc_records(root, "val", skip_bad=skip, check=check)
        rep, rep_name = va, "val"
    if not config.masks:
        tr = [data.Record(r.path, r.label, None) for r in tr]

    def make(records, train):
        tf = transforms.build(config.input_size, config.resize, train, config.rot90, config.color_jitter,
                              config.hue_jitter, config.zoom)
        return data.CellDataset(records, classes, tf,
                                config.mask_threshold, config.resize, root)

    report = make(rep, False)
    val = report if rep is va else make(va, False)
    return Splits(make(tr, True), val, report, rep_name, classes, root, [*tr, *va, *(rep if rep is not va else [])])


def make_loader(dataset, config: cfg.RunConfig, rt: Runtime, shuffle: bool = False, generator=None,
                ctx: distributed.Context | None = None) -> DataLoader:
    """Evaluation loader (in order), or the training loader: shuffled global batches, this process's share.

    Workers are not persistent: they are re-seeded from ``generator`` every epoch, which keeps resume exact.
    """
    common = dict(num_workers=rt.num_workers, pin_memory=rt.device.type == "cuda", worker_init_fn=_seed_worker,
                  generator=generator, persistent_workers=False)
    if not shuffle:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, **common)
    sampler = distributed.ShardedBatchSampler(len(dataset), config.batch_size, ctx or distributed.Context(),
                                              generator)
    return DataLoader(dataset, batch_sampler=sampler, **common)


def to_device(batch: dict, rt: Runtime):
    nb = rt.device.type == "cuda"
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    images = batch["image"].to(rt.device, non_blocking=nb).contiguous(memory_format=fmt)
    labels = torch.as_tensor(batch["label"]).to(rt.device, non_blocking=nb)
    masks = batch["mask"].to(rt.device, non_blocking=nb)
    has_mask = torch.as_tensor(batch["has_mask"]).to(rt.device, non_blocking=nb)
    return images, labels, masks, has_mask


# -- model ------------------------------------------------------------------------------------------------

def build_model(config: cfg.RunConfig) -> MultiTaskUNet:
    return MultiTaskUNet(config.num_classes, config.base_width, config.depth, norm=config.norm)


def load_model(run_or_file: str | Path, device: str | torch.device = "cpu") -> tuple[MultiTaskUNet, cfg.RunConfig]:
    """The model of a finished (or interrupted) run and its config, in eval mode."""
    state = runs.load_checkpoint(run_or_file, map_location="cpu")
    config = cfg.from_dict(state["config"]) if "config" in state else cfg.from_profile("quick")
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def total_epochs(config: cfg.RunConfig, steps_per_epoch: int) -> int:
    """The epochs a run trains: ``config.epochs``, or more where a small training set would otherwise give
    fewer than ``config.min_steps`` optimiser steps."""
    return max(config.epochs, math.ceil(config.min_steps / max(1, steps_per_epoch)))


def make_scheduler(optimizer, config: cfg.RunConfig, steps_per_epoch: int, epochs: int | None = None):
    """The learning-rate schedule over ``epochs`` (default ``config.epochs``): the report's StepLR (stepped
    per epoch, decaying at 12/32 of the run unless ``lr_step`` is set), or a linear warm-up followed by a
    cosine decay to zero (stepped per batch)."""
    epochs = epochs or config.epochs
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size_for(epochs),
                                               gamma=config.lr_gamma)
    total = max(1, epochs * steps_per_epoch)
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- one epoch --------------------------------------------------------------------------------------------

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


def _check_finite(parts, epoch: int, step: int) -> dict[str, float]:
    values = {k: float(getattr(parts, k).detach()) for k in LOSS_PARTS}
    bad = [k for k in ("mse", "ce", "dice", "total") if not math.isfinite(values[k])]
    if bad:
        raise TrainingDiverged(f"loss became {values[bad[0]]} at epoch {epoch}, step {step} "
                               f"(component: {bad[0]}); the last good checkpoint is kept")
    return values


def train_epoch(model, loader, loss_fn, optimizer, config, rt, epoch: int, bar=None,
                ctx: distributed.Context | None = None, batch_scheduler=None) -> dict[str, float]:
    """One pass over the training loader; ``batch_scheduler`` (if any) steps after every batch."""
    model.train()
    avg = Averages()
    for step, batch in enumerate(loader, start=1):
        images, labels, masks, has_mask = to_device(batch, rt)
        with rt.autocast():
            out = model(images)
        parts = loss_fn(out, images, labels, masks, has_mask)
        values = _check_finite(parts, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        avg.add(values, len(images), int(loss_fn.dice_samples(labels, has_mask).sum()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)
    return avg.reduce(ctx or distributed.Context()).means()


def class_mask(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The mask-logit channel of each sample's class: (B, C, H, W), (B,) -> (B, 1, H, W)."""
    index = classes.clamp(min=0)[:, None, None, None].expand(-1, 1, *mask_logits.shape[2:])
    return mask_logits.float().gather(1, index)


@torch.no_grad()
def predict(model, loader, rt: Runtime, loss_fn=None) -> dict:
    """Run ``model`` over ``loader``: logits, embeddings, labels, paths, loss means, PSNR, mask Dice/IoU."""
    model.eval()
    avg = Averages()
    out_lists = {k: [] for k in ("logits", "embedding", "label", "path")}
    seg_pred, seg_true, psnrs = [], [], []
    for batch in loader:
        images, labels, masks, has_mask = to_device(batch, rt)
        with rt.autocast():
            out = model(images)
        if loss_fn is not None:
            parts = loss_fn(out, images, labels, masks, has_mask)
            avg.add({k: float(getattr(parts, k)) for k in LOSS_PARTS}, len(images),
                    int(loss_fn.dice_samples(labels, has_mask).sum()))
        recon = out.reconstruction.float().clamp(0, 1)
        psnrs.append(metrics.psnr(recon.cpu().numpy(), images.float().cpu().numpy()) * len(images))
        out_lists["logits"].append(out.class_logits.float().cpu())
        out_lists["embedding"].append(out.embedding.float().cpu())
        out_lists["label"].append(labels.cpu())
        out_lists["path"] += list(batch["path"])
        sel = has_mask.bool() & (labels >= 0)
        if sel.any():
            seg_pred.append((class_mask(out.mask_logits[sel], labels[sel]) > 0).squeeze(1).cpu().numpy())
            seg_true.append(masks[sel].squeeze(1).bool().cpu().numpy())
    result = {k: torch.cat(v).numpy() for k, v in out_lists.items() if k != "path"}
    result["path"] = np.array(out_lists["path"])
    result["losses"] = avg.means() if loss_fn is not None else None
    result["psnr"] = float(sum(psnrs) / max(len(result["label"]), 1))
    result["segmentation"] = (metrics.segmentation_metrics(np.concatenate(seg_pred), np.concatenate(seg_true))
                              if seg_pred else None)
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


# -- the run ----------------------------------------------------------------------------------------------

def fit(config: cfg.RunConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
        log=print) -> dict:
    """Train one configuration into ``run_dir`` and return its final metrics.

    With ``resume``, continue from ``run_dir/checkpoint.pt`` (whose config must match). ``progress`` shows
    tqdm bars (default: when stderr is a terminal). ``log`` receives one line per epoch. Under torchrun the
    processes train one model together (see :mod:`wbclib.distributed`); rank 0 alone writes.
    """
    t_start = time.time()
    run_dir = Path(run_dir)
    rt = Runtime.from_config(config)
    ctx, rt.device = distributed.setup(rt.device)
    main = ctx.is_main
    progress = (sys.stderr.isatty() if progress is None else progress) and main
    log = log if main else (lambda line: None)
    torch.use_deterministic_algorithms(rt.device.type == "cpu", warn_only=True)

    root = data_root(config, progress)
    source = data_source(config)
    if source == "synthetic":
        log(f"data: synthetic stand-in at {root} (scale {config.synthetic_scale:g}); not real cells")
    elif source == "embedded":
        log("data: the embedded real cells (embedded/, see its README); pass --data-root for the course data")
    splits = build_splits(config, root)
    log(f"data: {len(splits.train)} training images ({splits.train.num_masks} with masks), "
        f"{len(splits.val)} validation, reported split '{splits.report_name}' ({len(splits.report)})")

    ckpt_path = run_dir / runs.CHECKPOINT
    state = None
    if resume and ckpt_path.exists():
        state = runs.load_checkpoint(ckpt_path)
        if state.get("config") != config.to_dict():
            raise WbcError(f"cannot resume {run_dir}: its checkpoint was trained with a different config")
    elif ckpt_path.exists() and not resume:
        log(f"note: {run_dir} already holds a checkpoint; starting over (use --resume to continue it)")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_atomic(run_dir / "config.json", config.to_json())
        for stale in ("metrics.json", "embeddings.npz"):
            (run_dir / stale).unlink(missing_ok=True)

    seed_everything(config.seed)
    model = build_model(config)
    init_report = None
    if config.init and state is None:
        init_state = runs.load_checkpoint(config.init)
        loaded = load_matching(model, init_state["model"])
        init_report = {"source": str(config.init), "loaded": loaded.loaded, "skipped": loaded.skipped}
        log(f"init: {len(loaded.loaded)} tensors loaded from {config.init}, {len(loaded.skipped)} skipped "
            f"(re-initialised: {', '.join(sorted({s.split('.')[0] for s in loaded.skipped})) or 'none'})")
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.nn.parallel.DistributedDataParallel(model) if ctx.active else model
    step_model = torch.compile(step_model) if config.compile else step_model

    fused = rt.device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused or None)
    loss_fn = MultiTaskLoss(config.lambda_ce, config.lambda_dice if config.uses_dice else 0.0)
    generator = torch.Generator()
    local = config.replace(batch_size=distributed.local_batch_size(config.batch_size, ctx))
    train_loader = make_loader(splits.train, config, rt, shuffle=True, generator=generator, ctx=ctx)
    epochs = total_epochs(config, len(train_loader))
    val_every = math.ceil(epochs / config.epochs)  # about config.epochs validations, always the last epoch
    if epochs > config.epochs:
        log(f"schedule: {epochs} epochs of {len(train_loader)} step(s) to reach min_steps={config.min_steps}; "
            f"validation every {val_every} epoch(s)")
    scheduler = make_scheduler(optimizer, config, len(train_loader), epochs)
    history: list[dict] = []
    start_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        init_report = state.get("init_report")
        start_epoch = int(state["epoch"]) + 1
        log(f"resume: continuing after epoch {state['epoch']} of {epochs}")

    val_loader = make_loader(splits.val, local, rt)
    val_pred = None
    timing = {"setup": time.time() - t_start, "train_steps": 0.0, "validation": 0.0, "checkpoints": 0.0}
    bar_epochs = tqdm(total=epochs, initial=start_epoch - 1, desc="epochs", disable=not progress,
                      position=0, leave=True)
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.time()
        seed_everything(epoch_seed(config.seed, epoch))
        generator.manual_seed(epoch_seed(config.seed, epoch))
        lr = optimizer.param_groups[0]["lr"]
        with tqdm(total=len(train_loader), desc=f"epoch {epoch}", disable=not progress, position=1,
                  leave=False) as bar:
            train = train_epoch(step_model, train_loader, loss_fn, optimizer, config, rt, epoch, bar, ctx,
                                scheduler if config.lr_schedule == "cosine" else None)
        timing["train_steps"] += time.time() - t0
        if config.lr_schedule == "step":
            scheduler.step()
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()}}
        bar_epochs.update(1)
        if epoch % val_every and epoch != epochs:
            history.append({**row, "seconds": time.time() - t0})
            continue  # validation, checkpoint and log line at the cadence only
        t1 = time.time()
        val_pred = predict(step_model, val_loader, rt, loss_fn)
        timing["validation"] += time.time() - t1
        val_acc = (float((val_pred["logits"].argmax(1) == val_pred["label"]).mean())
                   if config.num_classes > 1 else float("nan"))
        row.update({f"val_{k}": v for k, v in val_pred["losses"].items()}, val_accuracy=val_acc,
                   seconds=time.time() - t0)
        history.append(row)
        t1 = time.time()
        if main:
            runs.save_checkpoint(ckpt_path, {
                "format": 1, "epoch": epoch, "config": config.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                "init_report": init_report, "classes": list(splits.classes), "wbclib_version": __version__})
            write_history(run_dir / "history.csv", history)
        timing["checkpoints"] += time.time() - t1
        ctx.barrier()
        acc = "" if math.isnan(val_acc) else f"  val acc {val_acc:.4f}"
        log(f"epoch {epoch}/{epochs}  train {train['total']:.4f} (mse {train['mse']:.4f} ce {train['ce']:.4f} "
            f"dice {train['dice']:.4f})  val {val_pred['losses']['total']:.4f}{acc}  lr {lr:.1e}  {row['seconds']:.1f}s")
    bar_epochs.close()
    t_final = time.time()
    if val_pred is None:  # resumed after the last epoch's checkpoint: only the final evaluation was missing
        val_pred = predict(step_model, val_loader, rt, loss_fn)

    # Final evaluation of the last epoch's model (no selection on the reported split).
    majority = int(np.bincount(splits.train.labels[splits.train.labels >= 0]).argmax()) \
        if config.num_classes > 1 else None
    report_pred = val_pred if splits.report is splits.val else predict(step_model, make_loader(
        splits.report, local, rt), rt, loss_fn)
    final = {"run": run_dir.name, "dataset": config.dataset, "subset": config.subset if config.dataset == "wbc" else None,
             "reported_split": splits.report_name, "epochs": epochs, "classes": list(splits.classes),
             "train_images": len(splits.train), "train_masks_available": splits.train.num_masks,
             splits.report_name: summarise(report_pred, splits.classes, majority)}
    if splits.report is not splits.val:
        final["val"] = summarise(val_pred, splits.classes, majority)
    masked = [r for r in splits.train.records if r.mask_path is not None]
    if masked and config.num_classes > 1:
        mask_set = splits.report.with_records(masked)  # the evaluation transform
        seg = predict(step_model, make_loader(mask_set, local, rt), rt)["segmentation"]
        final["train_masks"] = {**seg, "note": "training images that have masks, centre-cropped (no held-out masks)"}
    final["accuracy"] = final[splits.report_name].get("accuracy")
    final["processes"] = ctx.world
    if not main:
        ctx.barrier()
        ctx.close()
        return final
    if config.export_embeddings and config.num_classes > 1:
        buf = io.BytesIO()
        np.savez_compressed(buf, embedding=report_pred["embedding"].astype(np.float32), label=report_pred["label"],
                            prediction=report_pred["logits"].argmax(1), path=report_pred["path"],
                            classes=np.array(splits.classes))
        runs.write_atomic(run_dir / "embeddings.npz", buf.getvalue())
    wall = time.time() - t_start
    runs.write_json(run_dir / "manifest.json", manifest(config, rt, splits, wall, init_report))
    final["wall_time_s"] = wall
    final["timing_s"] = {**timing, "final_evaluation": time.time() - t_final}  # where this session's time went
    runs.write_json(run_dir / "metrics.json", final)
    ctx.barrier()
    ctx.close()
    return final


def write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    runs.write_atomic(path, buf.getvalue())


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(config, rt: Runtime, splits: Splits, wall: float, init_report) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "pillow"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "wbclib": __version__, "git_commit": git_commit(), "python": platform.python_version(), "packages": versions,
        "device": str(rt.device), "device_name": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda"
        else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "precision": "bf16" if rt.amp_dtype else "fp32", "channels_last": rt.channels_last,
        "num_workers": rt.num_workers, "data_root": str(splits.root), "synthetic": data_source(config) == "synthetic",
        "data_source": data_source(config),
        "data_fingerprint": data.fingerprint(splits.records, splits.root), "wall_time_s": wall,
        "init": init_report and {"source": init_report["source"], "loaded": len(init_report["loaded"]),
                                 "skipped": init_report["skipped"]},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@torch.no_grad()
def examples(run_dir: str | Path, n: int = 8, device: str = "cpu") -> dict:
    """A few images of a finished run for figures: from the reported split and, where masks exist, from the
    masked training images. Each entry holds ``images``, ``reconstructions``, ``masks``, ``pred_masks``
    (the predicted class's mask channel > 0.5), ``labels``, ``predictions`` and ``paths``."""
    model, config = load_model(run_dir, device)
    config = config.replace(device=str(device), num_workers=0, precision="fp32", channels_last=False)
    rt = Runtime.from_config(config)
    splits = build_splits(config, data_root(config), check=False)  # validated when the run trained
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
        probs = torch.sigmoid(class_mask(out.mask_logits, pred))
        result[name] = {"images": images.cpu(), "reconstructions": out.reconstruction.float().clamp(0, 1).cpu(),
                        "masks": batch["mask"].float(), "has_mask": batch["has_mask"],
                        "pred_masks": (probs > 0.5).float().cpu(), "labels": batch["label"],
                        "predictions": pred.cpu(), "paths": list(batch["path"])}
    return result


if __name__ == "__main__":  # `torchrun --nproc_per_node=N -m wbclib.train --dataset wbc ...` = `wbc train ...`
    from .cli import main as _cli_main

    sys.exit(_cli_main(["train", *sys.argv[1:]]))
