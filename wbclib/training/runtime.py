"""Where and how the model runs: the device and its precision (:class:`Runtime`), the data loaders in training
and evaluation order, batches moved to the device, and what the hardware is (its name, its bf16 peak)."""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.core import faults
from wbclib.data import datasets, images
from wbclib.training import distributed

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

    @classmethod
    def plain(cls, device: str | torch.device = "cpu") -> Runtime:
        """fp32, NCHW, loading in this process: what the figures and the walkthrough's single batches use."""
        return cls(torch.device(device), None, False, 0)

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


def images_to_device(batch: dict, rt: Runtime) -> torch.Tensor:
    """A batch's images on the device, in the runtime's memory format."""
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    return batch["image"].to(rt.device, non_blocking=rt.device.type == "cuda").contiguous(memory_format=fmt)


def targets_to_device(batch: dict, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's labels, masks and has-mask flags on the device (what the loss compares the outputs with)."""
    nb = rt.device.type == "cuda"
    labels = torch.as_tensor(batch["label"]).to(rt.device, non_blocking=nb)
    masks = batch["mask"].to(rt.device, non_blocking=nb)
    has_mask = torch.as_tensor(batch["has_mask"]).to(rt.device, non_blocking=nb)
    return labels, masks, has_mask


def to_device(batch: dict, rt: Runtime):
    """``images, labels, masks, has_mask`` of a batch on the device."""
    return images_to_device(batch, rt), *targets_to_device(batch, rt)


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


# -- the hardware --------------------------------------------------------------------------------------------

#: Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), for the MFU of the epoch log.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def gpu_peak_flops(device: torch.device) -> float | None:
    """The datasheet bf16 peak of this GPU, where it is one of :data:`GPU_PEAK_BF16`; None on a CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)


def device_name(device: str | torch.device = "cpu") -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one): what every timing names."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
