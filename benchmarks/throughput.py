"""Training throughput, achieved model FLOP/s and data-loader throughput, measured in one run.

    python benchmarks/throughput.py --profile quick --json benchmarks/results/cpu-quick.json

Measures, on the current device:

- the machine's matmul FLOP/s (square fp32 matmuls on the CPU, plus bf16 where the CPU has it natively;
  bf16 on a GPU), the yardstick;
- training steps of the profile's model on random tensors (no data loading) for each variant that can run
  here: eager fp32 NCHW (the baseline), channels_last, bf16 autocast, torch.compile; FLOPs per image are
  counted with ``torch.utils.flop_counter`` over one forward + backward pass;
- JPEG decoding of 575 x 575 images with PIL (full and draft-mode) and ``torchvision.io.decode_jpeg``;
- what the data loader delivers alone (decode + joint augmentation + collate) with the run's workers.

Prints a table and writes a JSON file with the keys ``device``, ``profile``, ``train_images_per_s``,
``model_flops_per_s``, ``matmul_flops_per_s``, ``loader_images_per_s`` (for the default variant) plus every
variant's figures. This is a measurement, not a test: timings on a shared machine are noisy, so compare
ratios from the same run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbclib.core import config as cfg
from wbclib.data import datasets, images
from wbclib.model.losses import MultiTaskLoss
from wbclib.model.network import build_model, flops_per_image
from wbclib.training import runtime, train


def cpu_model() -> str:
    """The CPU's model name, its thread count and whether it has native bf16."""
    native = " with native bf16" if runtime.cpu_has_native_bf16() else ""
    return f"{runtime.device_name()}, {torch.get_num_threads()} threads{native}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype: torch.dtype, bursts: int = 5, n: int | None = None,
                 reps: int = 3, warmup: int = 1) -> float:
    """Median FLOP/s of several short bursts of ``reps`` square n x n matmuls in ``dtype`` (one burst can catch
    the machine in a slow or a fast moment; the median of several is the yardstick). n: 2048 on a CPU, 8192
    on a GPU unless given."""
    n = n or (2048 if device.type == "cpu" else 8192)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    sync(device)
    rates = []
    for _ in range(bursts):
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync(device)
        rates.append(reps * 2 * n**3 / (time.perf_counter() - t))
    return statistics.median(rates)


def yardsticks(device: torch.device) -> dict[str, float | None]:
    """The matmul FLOP/s in fp32 and, where the hardware has it, bf16: measured again around every variant."""
    bf16 = device.type == "cuda" or runtime.cpu_has_native_bf16()
    return {"fp32": matmul_flops(device, torch.float32),
            "bf16": matmul_flops(device, torch.bfloat16) if bf16 else None}


def step_throughput(config: cfg.RunConfig, variant: dict, device: torch.device, steps: int, warmup: int) -> float:
    """Images per second of the library's own training step (:func:`wbclib.training.train.train_step`: forward,
    the run's multi-task loss, backward, the run's clipping, Adam with the run's learning rate) on batches of
    random tensors, so no data loading is timed."""
    c = config.replace(device=str(device), channels_last=variant["channels_last"],
                       precision=variant["precision"], compile=variant["compile"],
                       compile_mode=variant.get("compile_mode"), upsample_bf16=variant.get("upsample_bf16", False))
    rt = runtime.Runtime.from_config(c)
    torch.manual_seed(0)
    model = build_model(c).to(device)
    model = model.to(memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
    step_model = torch.compile(model, mode=c.compile_mode) if c.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, fused=device.type == "cuda" or None)
    loss_fn = MultiTaskLoss.from_config(c)
    b, s = c.batch_size, c.input_size
    batch = {"image": torch.rand(b, 3, s, s), "label": torch.randint(0, c.num_classes, (b,)),
             "mask": (torch.rand(b, 1, s, s) > 0.5).to(torch.uint8), "has_mask": torch.arange(b) % 4 == 0}
    if variant.get("on_device"):  # the batch already where the model runs (resident data): no copy per step
        batch = {k: v.to(device) for k, v in batch.items()}
        if rt.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        train.train_step(step_model, batch, loss_fn, opt, c, rt)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train.train_step(step_model, batch, loss_fn, opt, c, rt)
    sync(device)
    return steps * b / (time.perf_counter() - t)


def decode_rates(paths: list[Path], resize: int | None) -> dict[str, float]:
    """Images per second of decoding 575 x 575 JPEGs three ways (single process)."""
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file

    def rate(fn):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        return len(paths) / (time.perf_counter() - t)

    out = {"pil_full": rate(lambda p: Image.open(p).convert("RGB").load()),
           "torchvision_decode_jpeg": rate(lambda p: decode_jpeg(read_file(str(p))))}
    if resize:
        out["pil_draft"] = rate(lambda p: images.open_image(p, draft_size=resize))
        # what a run's loader does: draft decode, Lanczos resize and the JPEG round trip of `wbc prepare --size`
        out["prepare_rule"] = rate(lambda p: images.load_image(p, resize))
    return out


def loader_throughput(config: cfg.RunConfig, rt: runtime.Runtime, root: Path, seconds: float = 8.0) -> float:
    """Images per second that the training DataLoader delivers alone (decode + augmentation + collate)."""
    splits = datasets.build_splits(config, root, check=False)
    loader = runtime.make_loader(splits.train, config, rt, shuffle=True, generator=torch.Generator().manual_seed(0))
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for batch in loader:
            n += len(batch["image"])
            if time.perf_counter() - t >= seconds:
                break
    return n / (time.perf_counter() - t)


def measure_variant(config: cfg.RunConfig, v: dict, device: torch.device, steps: int, fpi: float) -> dict:
    """One variant's throughput, each ratio taken against the yardstick measured just before and just after it.
    The reference is the matmul rate of the variant's own precision (bf16 variants against bf16 matmuls where
    the hardware has them; a bf16 step may well beat fp32 matmuls). A share above 100 % of its reference cannot
    be real: the variant is measured once more, and flagged if the second measurement is still above."""
    for _ in range(2):
        before = yardsticks(device)
        ips = step_throughput(config, v, device, steps, warmup=3 if v["compile"] else 1 if steps < 5 else 2)
        after = yardsticks(device)
        stick = {k: (before[k] + after[k]) / 2 if before[k] else None for k in before}
        fp32 = ips * fpi / stick["fp32"]
        bf16 = ips * fpi / stick["bf16"] if stick["bf16"] else None
        reference = bf16 if bf16 and (device.type == "cuda" or v["precision"] == "bf16") else fp32
        if reference <= 1.0:
            break
    return {**v, "images_per_s": ips, "model_flops_per_s": ips * fpi, "yardstick": stick,
            "fraction_of_fp32_matmul": fp32, "fraction_of_bf16_matmul": bf16, "fraction_of_matmul": reference,
            "flag": None if reference <= 1.0 else "above 100 % of the matmul yardstick twice: not trustworthy"}


def variants_for(device: torch.device, with_compile: bool) -> list[dict]:
    base = {"name": "eager fp32 NCHW", "channels_last": False, "precision": "fp32", "compile": False}
    out = [base, {**base, "name": "channels_last", "channels_last": True}]
    bf16_ok = device.type == "cuda" or runtime.cpu_has_native_bf16()
    out.append({**base, "name": "bf16 autocast" + ("" if bf16_ok else " (no bf16 instructions)"),
                "precision": "bf16"})
    out.append({**base, "name": "channels_last + bf16", "channels_last": True, "precision": "bf16"})
    if with_compile:
        out.append({**base, "name": "torch.compile", "compile": True})
        out.append({**base, "name": "torch.compile + channels_last + bf16", "compile": True,
                    "channels_last": True, "precision": "bf16"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(cfg.PROFILES), default="quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per variant")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--default-only", action="store_true", help="measure the device's default variant only")
    ap.add_argument("--data-root", default=None,
                    help="course data for the loader measurement (default: the embedded real cells)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)

    config = cfg.from_profile(a.profile, device=a.device, data_root=a.data_root)
    rt = runtime.Runtime.from_config(config)
    device = rt.device
    steps = a.steps or (20 if device.type == "cpu" and a.profile == "quick" else 2 if device.type == "cpu" else 50)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"device {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")

    # The yardstick: matmul FLOP/s in fp32 (the reference on a CPU) and bf16 (the reference on a GPU, and the
    # headroom on a CPU with native bf16), measured again before and after every variant.
    fpi = flops_per_image(config)
    print(f"model: {fpi / 1e9:.3f} GFLOP per training image (forward + backward, {config.input_size}px, "
          f"width {config.base_width}, batch {config.batch_size})")
    results, sticks = [], []
    variants = variants_for(device, not a.no_compile)
    if a.default_only:
        variants = [v for v in variants if not v["compile"] and v["channels_last"] == rt.channels_last
                    and v["precision"] == ("bf16" if rt.amp_dtype else "fp32")]
    for v in variants:
        try:
            r = measure_variant(config, v, device, steps, fpi)
        except Exception as exc:  # e.g. no compiler toolchain for torch.compile
            print(f"  {v['name']:40s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            continue
        results.append(r)
        sticks.append(r["yardstick"])
        bf16 = f"  {100 * r['fraction_of_bf16_matmul']:5.1f} % of bf16" if r["fraction_of_bf16_matmul"] else ""
        print(f"  {v['name']:40s} {r['images_per_s']:8.1f} img/s  {r['model_flops_per_s'] / 1e9:8.1f} GFLOP/s  "
              f"{100 * r['fraction_of_fp32_matmul']:5.1f} % of fp32{bf16}" + (f"  [{r['flag']}]" if r["flag"] else ""))
    mm = statistics.median(s["fp32"] for s in sticks)
    mm_bf16 = statistics.median(s["bf16"] for s in sticks) if sticks and sticks[0]["bf16"] else None
    print(f"matmul yardstick (median over the variants): fp32 {mm / 1e9:.1f} GFLOP/s"
          + (f", bf16 {mm_bf16 / 1e9:.1f} GFLOP/s" if mm_bf16 else ""))
    default = next(r for r in results if not r["compile"]
                   and r["channels_last"] == rt.channels_last
                   and r["precision"] == ("bf16" if rt.amp_dtype else "fp32"))

    root = datasets.data_root(config)
    jpegs = sorted((root / "WBC_100" / "train" / "data").rglob("*.jpg"))[:64]
    decode = decode_rates(jpegs, config.resize) if jpegs else {}
    for k, v in decode.items():
        print(f"  decode {k:28s} {v:8.1f} img/s")
    loader = loader_throughput(config, rt, root)
    print(f"loader ({rt.num_workers} workers): {loader:.1f} img/s = {loader / default['images_per_s']:.1f}x the "
          f"training step's {default['images_per_s']:.1f} img/s")

    out = {"device": f"{device} ({name})", "profile": a.profile, "train_images_per_s": default["images_per_s"],
           "model_flops_per_s": default["model_flops_per_s"], "matmul_flops_per_s": mm,
           "matmul_bf16_flops_per_s": mm_bf16,
           "loader_images_per_s": loader, "default_variant": default["name"], "flops_per_image": fpi,
           "threads": torch.get_num_threads(), "loader_workers": rt.num_workers, "batch_size": config.batch_size,
           "input_size": config.input_size, "base_width": config.base_width, "variants": results,
           "decode_images_per_s": decode, "torch": torch.__version__,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"written: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
