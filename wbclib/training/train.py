"""The training loop shared by every run of the study: ``fit(config, run_dir)``.

Read top to bottom: :func:`start` resolves the device and the data, checks every input and builds (or
restores) the model, Adam, the schedule and the loaders; :func:`run_epoch` trains one epoch and, at the
validation cadence, validates, checkpoints atomically, appends the history and logs a line (images/s, model
FLOP/s, data waits); :func:`finish` evaluates the reported split and writes ``metrics.json`` last, so its
presence means "finished", after the embeddings and the manifest. One optimiser step is :func:`train_step`
(the walkthrough and the benchmarks take the same one). The forward pass and the metrics of a split live in
:mod:`wbclib.training.inference`, the device and the loaders in :mod:`wbclib.training.runtime`; where the data
lives, in :mod:`wbclib.data.datasets`.

Randomness is re-seeded at the start of every epoch from ``(seed, epoch)``: shuffling, augmentation and
loader workers depend only on the epoch, so a run killed after epoch k and resumed ends exactly where an
uninterrupted run ends (on CPU, where the kernels are deterministic).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wbclib import WbcError, __version__
from wbclib.core import config as cfg
from wbclib.core import faults, storage
from wbclib.data import datasets, readers
from wbclib.model.losses import LOSS_PARTS, Averages, MultiTaskLoss
from wbclib.model.network import build_model, describe_network, flops_per_image, load_matching
from wbclib.training import distributed, resident, runs
from wbclib.training.inference import check_finite, predict, summarise
from wbclib.training.runtime import (
    Runtime,
    cpu_has_native_bf16,
    cpu_loader_workers,
    device_name,
    gpu_peak_flops,
    make_loader,
    to_device,
)

#: The columns of ``history.csv``: one row per epoch, each loss part on the training and the validation set.
HISTORY_COLUMNS = ["epoch", "lr", *(f"train_{k}" for k in LOSS_PARTS), *(f"val_{k}" for k in LOSS_PARTS),
                   "val_accuracy", "seconds"]


# -- randomness and schedule ------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a function of the run seed and the epoch only (what makes resume exact)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


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

def timed(iterable, timing: dict, key: str = "data_wait"):
    """Yield from ``iterable``, adding the seconds spent waiting for each item to ``timing[key]``: with the
    per-step loss check synchronising the device, this is the time the model waits for the data loader."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t
        yield item


@dataclass
class Step:
    """What one training step reports: each loss part (keyed by :data:`wbclib.model.losses.LOSS_PARTS`), the
    images of the batch and how many of them the Dice term used."""

    losses: dict[str, float]
    images: int
    masked: int


def train_step(model, batch: dict, loss_fn: MultiTaskLoss, optimizer, config: cfg.RunConfig, rt: Runtime,
               batch_scheduler=None, epoch: int | None = None, step: int = 1) -> Step:
    """One optimiser step on one batch, in training mode: forward (under the runtime's autocast), the multi-task
    loss, a check that every part is finite (``epoch`` and ``step`` name where, if not), backward, the config's
    gradient clipping, the optimiser step and, if given, a per-batch scheduler step."""
    model.train()
    images, labels, masks, has_mask = to_device(batch, rt)
    with rt.autocast():
        out = model(images)
    parts = loss_fn(out, images, labels, masks, has_mask)
    bad = faults.poison("train-loss")
    if bad is not None:
        parts = parts._replace(mse=parts.mse + bad, total=parts.total + bad)
    values = check_finite(parts, epoch, step)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    if batch_scheduler is not None:
        batch_scheduler.step()
    faults.point("step")
    return Step(values, len(images), int(loss_fn.dice_samples(labels, has_mask).sum()))


def train_epoch(model, loader, loss_fn, optimizer, config, rt, epoch: int, bar=None,
                ctx: distributed.Context | None = None, batch_scheduler=None) -> dict[str, float]:
    """One pass over the training loader (:func:`train_step` per batch); ``batch_scheduler`` (if any) steps
    after every batch. Returns the epoch's mean of each loss part over all processes."""
    avg = Averages()
    for step, batch in enumerate(loader, start=1):
        done = train_step(model, batch, loss_fn, optimizer, config, rt, batch_scheduler, epoch, step)
        avg.add(done.losses, done.images, done.masked)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{done.losses[LOSS_PARTS[0]]:.3f}", refresh=False)
    return avg.reduce(ctx or distributed.Context()).means()


# -- the run ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything one training run holds while it trains (built by :func:`start`, advanced by
    :func:`run_epoch`, closed by :func:`finish`)."""

    config: cfg.RunConfig
    run_dir: Path
    rt: Runtime
    ctx: distributed.Context
    log: object
    progress: bool
    splits: datasets.Splits
    model: torch.nn.Module
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: MultiTaskLoss
    generator: torch.Generator
    train_loader: object
    val_loader: object
    local: cfg.RunConfig  # the config with this process's share of the batch
    epochs: int
    val_every: int
    flops_per_image: float
    history: list = field(default_factory=list)
    start_epoch: int = 1
    init_report: dict | None = None
    timing: dict = field(default_factory=dict)
    t_start: float = 0.0
    val_pred: dict | None = None


def fit(config: cfg.RunConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None,
        log=print) -> dict:
    """Train one configuration into ``run_dir`` and return its final metrics.

    With ``resume``, continue from ``run_dir/checkpoint.pt`` (whose config must match). ``progress`` shows
    tqdm bars (default: when stderr is a terminal). ``log`` receives one line per validated epoch. Under
    torchrun the processes train one model together (see :mod:`wbclib.training.distributed`); rank 0 alone writes.

    The run directory is locked while the run trains (a second process on it is refused, naming the holder),
    and may not lie inside the data folder the run reads.
    """
    with contextlib.ExitStack() as held:
        run = start(config, Path(run_dir), resume, progress, log, held)
        with tqdm(total=run.epochs, initial=run.start_epoch - 1, desc="epochs", disable=not run.progress,
                  position=0, leave=True) as bar:
            for epoch in range(run.start_epoch, run.epochs + 1):
                run_epoch(run, epoch)
                bar.update(1)
        faults.point("after-last-epoch")
        return finish(run)


def start(config: cfg.RunConfig, run_dir: Path, resume: bool, progress: bool | None, log,
          held: contextlib.ExitStack) -> Run:
    """Resolve the device and the data, check every input, then build (or restore) the model, optimiser,
    schedule and loaders. The run directory is locked and written only once every input is checked."""
    t_start = time.time()
    faults.enter_run(run_dir.name)
    rt = Runtime.from_config(config)
    ctx, rt.device = distributed.setup(rt.device)
    log = log if ctx.is_main else (lambda line: None)
    progress = (sys.stderr.isatty() if progress is None else progress) and ctx.is_main
    if rt.device.type == "cpu" and config.precision == "bf16" and not cpu_has_native_bf16():
        log("note: precision bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): PyTorch emulates it, "
            "which is slower than fp32 (precision auto picks fp32 on this CPU)")
    torch.use_deterministic_algorithms(rt.device.type == "cpu", warn_only=True)
    splits = open_data(config, run_dir, log, progress)
    if config.num_workers is None and rt.device.type == "cpu":
        rt.num_workers = cpu_loader_workers(config, splits.train)
        if rt.num_workers:
            log(f"loader: {rt.num_workers} worker process{'es' if rt.num_workers > 1 else ''}, as decoding the "
                "stored images would hold up training on this CPU (--set num_workers=0: load in this process)")
    state = read_checkpoint(config, run_dir, resume, log)
    seed_everything(config.seed)
    model = build_model(config)
    init_report = initialise(model, config, log) if config.init and state is None else None
    local = config.replace(batch_size=distributed.local_batch_size(config.batch_size, ctx))  # refuses an odd split
    if ctx.is_main:  # every input is checked: from here on the run directory is written
        lock = held.enter_context(storage.FolderLock(run_dir, "run directory"))
        if lock.note:
            log(lock.note)
        for tmp in storage.remove_stale_temps(run_dir):
            log(f"note: removed {tmp.name}, left by an interrupted write")
        storage.write_atomic(run_dir / "config.json", config.to_json())
        for stale in ("metrics.json", "embeddings.npz"):
            (run_dir / stale).unlink(missing_ok=True)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = torch.nn.parallel.DistributedDataParallel(model) if ctx.active else model
    step_model = torch.compile(step_model, mode=config.compile_mode) if config.compile else step_model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=rt.device.type == "cuda" or None)
    generator = torch.Generator()
    val_batch = config.val_batch_size or (max(64, local.batch_size) if rt.device.type == "cuda" else local.batch_size)
    train_loader, val_loader = resident.loaders(splits, config, val_batch, rt.device, generator, ctx, rt.num_workers,
                                                log) or (  # decoded data on the device, else the CPU loader
        make_loader(splits.train, config, rt, shuffle=True, generator=generator, ctx=ctx),
        make_loader(splits.val, local.replace(batch_size=val_batch), rt))
    epochs = total_epochs(config, len(train_loader))
    run = Run(config, run_dir, rt, ctx, log, progress, splits, model, step_model, optimizer,
              make_scheduler(optimizer, config, len(train_loader), epochs),
              MultiTaskLoss.from_config(config), generator,
              train_loader, val_loader, local, epochs,
              val_every=math.ceil(epochs / config.epochs),  # about config.epochs validations, always the last
              flops_per_image=flops_per_image(config), init_report=init_report, t_start=t_start)
    if epochs > config.epochs:
        log(f"schedule: {epochs} epochs of {len(train_loader)} step(s) to reach min_steps={config.min_steps}; "
            f"validation every {run.val_every} epoch(s)")
    if state is not None:
        restore(run, state)
    run.timing = {"setup": time.time() - t_start, "train_steps": 0.0, "validation": 0.0, "checkpoints": 0.0,
                  "data_wait": 0.0}  # data_wait is the part of train_steps spent waiting for batches
    return run


def open_data(config: cfg.RunConfig, run_dir: Path, log, progress: bool) -> datasets.Splits:
    """The run's data folder (never the folder the run writes into) and its checked splits."""
    root = datasets.data_root(config, progress)
    storage.refuse_inside(run_dir, [root], "--run-dir")
    source = datasets.data_source(config)
    if source == "synthetic":
        log(f"data: synthetic stand-in at {root} (scale {config.synthetic_scale:g}); not real cells")
    elif source == "embedded":
        log("data: the embedded real cells (embedded/, see its README); pass --data-root for the course data")
    splits = datasets.build_splits(config, root)
    log(f"data: {len(splits.train)} training images ({splits.train.num_masks} with masks), "
        f"{len(splits.val)} validation, reported split '{splits.report_name}' ({len(splits.report)})")
    return splits


def read_checkpoint(config: cfg.RunConfig, run_dir: Path, resume: bool, log) -> dict | None:
    """The checkpoint to resume from (``resume`` and one exists), which must have been trained with ``config``."""
    ckpt_path = run_dir / runs.CHECKPOINT
    if resume and ckpt_path.exists():
        state = runs.load_checkpoint(ckpt_path)
        if not cfg.same_config(state.get("config"), config.to_dict()):
            raise WbcError(f"cannot resume {run_dir}: its checkpoint was trained with a different config")
        return state
    if ckpt_path.exists():
        log(f"note: {run_dir} already holds a checkpoint; starting over (use --resume to continue it)")
    return None


def initialise(model: torch.nn.Module, config: cfg.RunConfig, log) -> dict:
    """Load the weights of ``config.init`` that fit (the head swap of pretraining); refuse a network whose
    encoder does not fit at all."""
    init_state = runs.load_checkpoint(config.init)
    loaded = load_matching(model, init_state["model"])
    if not any(n.startswith(("inc.", "downs.")) and not n.endswith("num_batches_tracked")
               for n in loaded.loaded):  # no encoder weight fits
        was = describe_network(cfg.from_dict(init_state["config"]))
        raise WbcError(f"--init {config.init} ({was}): none of its encoder weights fit this run's network "
                       f"({describe_network(config)}); start from a run of the same base width and depth")
    log(f"init: {len(loaded.loaded)} tensors loaded from {config.init}, {len(loaded.skipped)} skipped "
        f"(re-initialised: {', '.join(sorted({s.split('.')[0] for s in loaded.skipped})) or 'none'})")
    return {"source": str(config.init), "loaded": loaded.loaded, "skipped": loaded.skipped}


def restore(run: Run, state: dict) -> None:
    """Continue after the checkpoint's epoch: weights, optimiser, schedule and history as they were."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.history = list(state["history"])
    run.init_report = state.get("init_report")
    run.start_epoch = int(state["epoch"]) + 1
    if run.ctx.is_main:  # a kill between a checkpoint and its history row leaves history.csv one epoch behind
        write_history(run.run_dir / "history.csv", run.history)
    run.log(f"resume: continuing after epoch {state['epoch']} of {run.epochs}")


def run_epoch(run: Run, epoch: int) -> None:
    """One epoch: train on every batch; at the validation cadence (and always at the last epoch) validate,
    checkpoint atomically, append the history and log one line."""
    config, timing, t0 = run.config, run.timing, time.time()
    seed_everything(epoch_seed(config.seed, epoch))
    run.generator.manual_seed(epoch_seed(config.seed, epoch))
    lr = run.optimizer.param_groups[0]["lr"]
    wait0 = timing["data_wait"]
    with tqdm(total=len(run.train_loader), desc=f"epoch {epoch}", disable=not run.progress, position=1,
              leave=False) as bar:
        train = train_epoch(run.step_model, timed(run.train_loader, timing), run.loss_fn, run.optimizer, config,
                            run.rt, epoch, bar, run.ctx, run.scheduler if config.lr_schedule == "cosine" else None)
    seconds = time.time() - t0
    timing["train_steps"] += seconds
    if config.lr_schedule == "step":
        run.scheduler.step()
    row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train.items()}}
    if epoch % run.val_every and epoch != run.epochs:
        run.history.append({**row, "seconds": time.time() - t0})
        return  # validation, checkpoint and log line at the cadence only
    t1 = time.time()
    run.val_pred = predict(run.step_model, run.val_loader, run.rt, run.loss_fn, epoch)
    timing["validation"] += time.time() - t1
    val_acc = (float((run.val_pred["logits"].argmax(1) == run.val_pred["label"]).mean())
               if config.num_classes > 1 else float("nan"))
    row.update({f"val_{k}": v for k, v in run.val_pred["losses"].items()}, val_accuracy=val_acc,
               seconds=time.time() - t0)
    run.history.append(row)
    t1 = time.time()
    if run.ctx.is_main:
        runs.save_checkpoint(run.run_dir / runs.CHECKPOINT, {
            "format": 1, "epoch": epoch, "config": config.to_dict(), "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "history": run.history, "init_report": run.init_report, "classes": list(run.splits.classes),
            "wbclib_version": __version__})
        faults.point("after-checkpoint")
        write_history(run.run_dir / "history.csv", run.history)
    timing["checkpoints"] += time.time() - t1
    run.ctx.barrier()
    total, *terms = LOSS_PARTS
    run.log(f"epoch {epoch}/{run.epochs}  train {train[total]:.4f} ("
            + " ".join(f"{k} {train[k]:.4f}" for k in terms) + f")  val {run.val_pred['losses'][total]:.4f}"
            + ("" if math.isnan(val_acc) else f"  val acc {val_acc:.4f}")
            + f"  lr {lr:.1e}  {row['seconds']:.1f}s  " + speed(run, seconds, timing["data_wait"] - wait0))


def speed(run: Run, seconds: float, waited: float) -> str:
    """The epoch's images/s, model FLOP/s (and its share of the GPU's datasheet bf16 peak, nanoGPT's MFU)
    and the share of its step time spent waiting for data."""
    images = len(run.splits.train) / seconds
    flops = images * run.flops_per_image
    peak = gpu_peak_flops(run.rt.device)
    mfu = f", MFU {100 * flops / peak:.0f} %" if peak else ""
    return f"({images:.0f} img/s, {flops / 1e12:.2f} TFLOP/s{mfu}, data wait {100 * waited / seconds:.0f} %)"


def finish(run: Run) -> dict:
    """Evaluate the last epoch's model (no selection on the reported split), then write the embeddings, the
    manifest and, last, ``metrics.json``: its presence means the run finished."""
    config, splits, t_final = run.config, run.splits, time.time()
    if run.val_pred is None:  # resumed after the last epoch's checkpoint: only the final evaluation was missing
        run.val_pred = predict(run.step_model, run.val_loader, run.rt, run.loss_fn)
    majority = int(np.bincount(splits.train.labels[splits.train.labels >= 0]).argmax()) \
        if config.num_classes > 1 else None
    report_pred = run.val_pred if splits.report is splits.val else predict(
        run.step_model, make_loader(splits.report, run.local, run.rt), run.rt, run.loss_fn)
    final = {"run": run.run_dir.name, "dataset": config.dataset,
             "subset": config.subset if config.dataset == "wbc" else None, "reported_split": splits.report_name,
             "epochs": run.epochs, "classes": list(splits.classes), "train_images": len(splits.train),
             "train_masks_available": splits.train.num_masks,
             splits.report_name: summarise(report_pred, splits.classes, majority)}
    if splits.report is not splits.val:
        final["val"] = summarise(run.val_pred, splits.classes, majority)
    masked = [r for r in splits.train.records if r.mask_path is not None]
    if masked and config.num_classes > 1:
        mask_set = splits.report.with_records(masked)  # the evaluation transform
        seg = predict(run.step_model, make_loader(mask_set, run.local, run.rt), run.rt)["segmentation"]
        final["train_masks"] = {**seg, "note": "training images that have masks, centre-cropped (no held-out masks)"}
    final["accuracy"] = final[splits.report_name].get("accuracy")
    final["processes"] = run.ctx.world
    if run.ctx.is_main:
        if config.export_embeddings and config.num_classes > 1:
            buf = io.BytesIO()
            np.savez_compressed(buf, embedding=report_pred["embedding"].astype(np.float32),
                                label=report_pred["label"], prediction=report_pred["logits"].argmax(1),
                                path=report_pred["path"], classes=np.array(splits.classes))
            storage.write_atomic(run.run_dir / "embeddings.npz", buf.getvalue())
        wall = time.time() - run.t_start
        storage.write_json(run.run_dir / "manifest.json", manifest(config, run.rt, splits, wall, run.init_report))
        final["wall_time_s"] = wall
        final["timing_s"] = {**run.timing, "final_evaluation": time.time() - t_final}  # where the time went
        storage.write_json(run.run_dir / "metrics.json", final)
        faults.point("finished")
    run.ctx.barrier()
    run.ctx.close()
    return final


def write_history(path: Path, history: list[dict]) -> None:
    """Write ``history.csv`` (atomically): the :data:`HISTORY_COLUMNS` of each row, blank where a row has none
    (an epoch without validation). A key that is not a column is refused, never dropped: a new value in the
    history needs its column."""
    unknown = sorted({k for row in history for k in row} - set(HISTORY_COLUMNS))
    if unknown:
        raise ValueError(f"history.csv has no column for {', '.join(unknown)}: add it to HISTORY_COLUMNS "
                         f"(columns: {', '.join(HISTORY_COLUMNS)})")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    storage.write_atomic(path, buf.getvalue())


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(config, rt: Runtime, splits: datasets.Splits, wall: float, init_report) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "pillow"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "wbclib": __version__, "git_commit": git_commit(), "python": platform.python_version(), "packages": versions,
        "device": str(rt.device), "device_name": device_name(rt.device), "threads": torch.get_num_threads(),
        "precision": "bf16" if rt.amp_dtype else "fp32", "channels_last": rt.channels_last,
        "num_workers": rt.num_workers, "data_root": str(splits.root),
        "synthetic": datasets.data_source(config) == "synthetic",
        "data_source": datasets.data_source(config),
        "data_fingerprint": readers.fingerprint(splits.records, splits.root), "wall_time_s": wall,
        "init": init_report and {"source": init_report["source"], "loaded": len(init_report["loaded"]),
                                 "skipped": init_report["skipped"]},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
