"""The paper profile on one NVIDIA GPU, measured in one go (about 8 minutes, at most ``--budget-s``, 500 s).

    bash benchmarks/gpu_check.sh OUTDIR          # the same as: python benchmarks/gpu_check.py OUTDIR

Writes ``OUTDIR/gpu-check.json`` (after every part, so a cut-off run keeps what it measured) and
``OUTDIR/gpu-check.log``; scratch files (synthetic images, run directories) go to a temporary folder. Parts, in
the order they run (each skipped, and said so, when the budget left is too short for it):

1. ``machine``: ``nvidia-smi``, the torch / CUDA / cuDNN versions, the CPU cores;
2. ``matmul``: dense bf16 and tf32 matmul FLOP/s (8192³, median of bursts): the peak the step is judged by;
3. ``steps``: the paper profile's training step (384 px, width 64, the library's ``train.train_step`` on
   random tensors) with each lever on and off: fp32, bf16, channels_last, cuDNN autotuning, the batch already
   on the GPU (as the resident data gives it) and ``upsample_bf16``, at batch 16, and the best of them at
   batches 32, 64 and 128: images/s, model FLOP/s as a share of the bf16 peak, peak memory;
4. ``resident``: what the loaders deliver alone on 575 px synthetic JPEGs: the CPU DataLoader (its worker
   processes decoding and augmenting) against the decoded data resident on the GPU (cut and augmented there):
   images/s, the decode time and the GPU memory it takes;
5. ``epoch``: ``wbc train --profile paper`` for two epochs on the same images with the CPU loader, with the
   resident data, and with the resident data plus the step levers and a validation batch of 128: training and
   validation images/s and the share of step time spent waiting for data (the trainer's own timings);
6. ``grid``: a real reduced grid, ``wbc study --profile paper --data synthetic`` over every stage of the chain
   (pRCC, CAM16, WBC_100/50/10/1, pretrained with masks) at a small scale and two epochs, once with one run per
   GPU and once with ``--slots-per-gpu 3``: wall time, GPU utilisation and memory (``nvidia-smi`` sampled every
   half second), and each run's own timings;
7. ``cuda_tests``: the test suite's CUDA tests (``pytest -m cuda``: resume on the GPU among them);
8. ``shared``: the training step in one and in three processes on the GPU at once: the summed images/s (what
   several runs per GPU gain where the step leaves the GPU idle);
9. ``profile``: the operators that take the step's device time (``torch.profiler``);
10. ``compile``: the step with ``torch.compile`` in its default mode, ``reduce-overhead`` (CUDA graphs) and
    ``max-autotune-no-cudagraphs``, as far as the budget allows (compiling takes a minute or more each);
11. ``estimate`` and ``projection``: the GPU time of the full 21-run paper study (one seed) from the measured
    rates at the course's image counts, and from the reduced grid's per-run timings, for one run per GPU and
    for several.

Without CUDA it refuses with one line and exit status 2. ``--cpu-dry-run`` (or ``--tiny``) runs the same code
paths on the CPU at toy sizes (no compile, no CUDA tests): what the test suite checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from wbclib.core import config as cfg  # noqa: E402
from wbclib.data import datasets, synth  # noqa: E402
from wbclib.model.network import build_model, flops_per_image  # noqa: E402
from wbclib.study import runner  # noqa: E402
from wbclib.training import resident, runtime  # noqa: E402

#: The goals the issue sets for the GPU numbers.
GOALS = {"step_share_of_bf16_peak": 0.40, "data_wait_share": 0.05, "paper_study_gpu_hours": 1.0}


class Check:
    """The results so far, written out after every part; ``left()`` is the time budget still open."""

    def __init__(self, out: Path, budget_s: float, tiny: bool):
        self.out, self.budget, self.tiny, self.t0 = out, budget_s, tiny, time.time()
        self.results: dict = {"tiny": tiny, "goals": GOALS, "parts": {}}
        self.log_file = (out / "gpu-check.log").open("a")

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def log(self, line: str) -> None:
        stamp = f"[{time.time() - self.t0:6.1f}s] "
        print(stamp + line, flush=True)
        self.log_file.write(stamp + line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.results["elapsed_s"] = time.time() - self.t0
        tmp = self.out / ".gpu-check.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / "gpu-check.json")

    def part(self, name: str, fn, *args, need_s: float = 0.0):
        """Run one part; a failure or a lack of time is recorded and the check goes on."""
        if self.left() < need_s:
            self.results["parts"][name] = {"skipped": f"{self.left():.0f} s of the budget left, {need_s:.0f} s needed"}
            self.log(f"{name}: skipped (budget)")
        else:
            t = time.time()
            try:
                self.results["parts"][name] = {**fn(self, *args), "seconds": time.time() - t}
            except Exception as exc:  # recorded, so the other parts still run
                self.results["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                                               "seconds": time.time() - t}
                self.log(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
        self.save()
        return self.results["parts"][name]


# -- 1. the machine ---------------------------------------------------------------------------------------

def machine(check: Check) -> dict:
    smi = shutil.which("nvidia-smi")
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cpu_cores": os.cpu_count(),
           "nvidia_smi": subprocess.run([smi], capture_output=True, text=True).stdout if smi else None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out |= {"gpu": p.name, "gpu_memory_gib": p.total_memory / 2**30, "multiprocessors": p.multi_processor_count,
                "capability": f"{p.major}.{p.minor}"}
    check.results["device"] = out.get("gpu", f"cpu ({platform.processor() or platform.machine()})")
    check.log(f"machine: {check.results['device']}, torch {out['torch']}, CUDA {out['cuda']}, cuDNN {out['cudnn']}, "
              f"{out['cpu_cores']} CPU cores")
    return out


# -- 2. the yardstick --------------------------------------------------------------------------------------

def matmul(check: Check, device: torch.device) -> dict:
    from throughput import matmul_flops

    n = 256 if check.tiny else 8192
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        bf16 = matmul_flops(device, torch.bfloat16, n=n, reps=10, warmup=3)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = matmul_flops(device, torch.float32, n=n, reps=10, warmup=3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    check.log(f"matmul {n}³: bf16 {bf16 / 1e12:.1f} TFLOP/s, tf32 {tf32 / 1e12:.1f} TFLOP/s")
    return {"n": n, "bf16_flops_per_s": bf16, "tf32_flops_per_s": tf32}


# -- 3. the training step, each lever on and off -----------------------------------------------------------

BASE = {"channels_last": True, "precision": "bf16", "compile": False}
VARIANTS = [
    {"name": "fp32", "channels_last": False, "precision": "fp32", "compile": False},
    {"name": "bf16", "channels_last": False, "precision": "bf16", "compile": False},
    {"name": "bf16 + channels_last", **BASE},
    {"name": "bf16 + channels_last + cudnn.benchmark", **BASE, "cudnn_benchmark": True},
    {"name": "bf16 + channels_last, batch on the GPU", **BASE, "on_device": True},
    {"name": "bf16 + channels_last + upsample_bf16, batch on the GPU", **BASE, "on_device": True,
     "upsample_bf16": True},
]
COMPILE_MODES = (None, "reduce-overhead", "max-autotune-no-cudagraphs")
BATCHES = (32, 64, 128)  # batch 256 does not run: upsample_bilinear2d_nhwc refuses outputs of 2³¹ elements


def paper_config(check: Check, device: torch.device) -> cfg.RunConfig:
    """The paper profile; at toy size under ``--tiny``."""
    c = cfg.from_profile("paper", device=str(device))
    if check.tiny:
        c = c.replace(input_size=64, base_width=4, batch_size=2)
    return c


def _step(check: Check, config: cfg.RunConfig, variant: dict, device: torch.device, steps: int) -> dict:
    from throughput import step_throughput

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warmup = 3 if variant["compile"] else 2
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = variant.get("cudnn_benchmark", False)  # autotuned convolution algorithms
    try:
        ips = step_throughput(config, variant, device, steps, warmup)
    finally:
        torch.backends.cudnn.benchmark = old
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": ips, "peak_memory_gib": peak}


def best_lever(check: Check) -> dict:
    """The faster of the two on-device eager variants (with or without ``upsample_bf16``) at the base batch."""
    rows = [r for r in check.results["parts"].get("steps", {}).get("variants", [])
            if r.get("on_device") and not r.get("compile") and "images_per_s" in r]
    base = [r for r in rows if r["batch_size"] == min(x["batch_size"] for x in rows)] if rows else []
    best = max(base, key=lambda r: r["images_per_s"]) if base else VARIANTS[4]
    return next(v for v in VARIANTS if v["name"] == best["name"])


def steps(check: Check, device: torch.device, peak_bf16: float | None, compiled: bool = False) -> dict:
    """The eager variants at the base batch, then the best on-device lever at larger batches; with
    ``compiled``, the ``torch.compile`` modes of the best lever at the base batch, added to the eager rows."""
    config = paper_config(check, device)
    before = check.results["parts"].get("steps", {})
    fpi = before.get("flops_per_image") or flops_per_image(config)
    n_steps = 2 if check.tiny else 30
    rows = list(before.get("variants", []))
    if not compiled:
        check.log(f"steps: {fpi / 1e9:.1f} GFLOP per training image (forward + backward, {config.input_size} px, "
                  f"width {config.base_width})")

    def run(variant: dict, batch: int) -> None:
        try:
            r = _step(check, config.replace(batch_size=batch), variant, device, n_steps)
        except Exception as exc:  # e.g. torch.compile without a working toolchain: recorded, the rest goes on
            rows.append({**variant, "batch_size": batch, "error": f"{type(exc).__name__}: {exc}"[:500]})
            check.log(f"  {variant['name']:58s} batch {batch:4d}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
            return
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        flops = r["images_per_s"] * fpi
        share = flops / peak_bf16 if peak_bf16 else None
        rows.append({**variant, "batch_size": batch, **r, "model_flops_per_s": flops, "share_of_bf16_peak": share})
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "–"
        check.log(f"  {variant['name']:58s} batch {batch:4d}: {r['images_per_s']:8.1f} img/s  "
                  f"{flops / 1e12:7.1f} TFLOP/s" + (f"  {100 * share:5.1f} % of bf16 peak" if share else "")
                  + f"  peak memory {mem}")
        check.results["parts"]["steps"] = {**before, "flops_per_image": fpi, "variants": rows, "partial": True}
        check.save()

    if compiled:
        lever = best_lever(check)
        for mode in COMPILE_MODES:
            if check.left() < 90:
                check.log(f"  compile mode {mode or 'default'}: skipped ({check.left():.0f} s of the budget left)")
                continue
            name = lever["name"].replace(", batch on the GPU", "") + f" + compile {mode or 'default'}, batch on the GPU"
            run({**lever, "name": name, "compile": True, "compile_mode": mode}, config.batch_size)
    else:
        for v in VARIANTS:
            run(v, config.batch_size)
        lever = best_lever(check)
        for b in (4,) if check.tiny else BATCHES:
            if check.left() > 60:
                run(lever, b)
    ok = [r for r in rows if "images_per_s" in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    return {"flops_per_image": fpi, "steps_timed": n_steps, "variants": rows,
            "best": best and {k: best[k] for k in ("name", "batch_size", "images_per_s", "share_of_bf16_peak")},
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def compiled_steps(check: Check, device: torch.device, peak_bf16: float | None) -> dict:
    """The compile variants, appended to the ``steps`` part (its rows and best are rewritten there)."""
    if check.tiny:
        return {"skipped": "--tiny: no torch.compile"}
    check.results["parts"]["steps"] = {**steps(check, device, peak_bf16, compiled=True),
                                       "seconds": check.results["parts"].get("steps", {}).get("seconds")}
    return {"done": True}


def profile(check: Check, device: torch.device) -> dict:
    """Where the best eager step spends its device time: the operators with the most self time over a few steps
    at the base batch (``torch.profiler``)."""
    from throughput import step_throughput
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    config = paper_config(check, device)
    cuda = device.type == "cuda"
    lever = best_lever(check)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        step_throughput(config, lever, device, 2 if check.tiny else 6, 1)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [(e.key, getattr(e, key), e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in ops) or 1.0
    top = sorted(ops, key=lambda o: -o[1])[:20]
    rows = [{"op": k, "ms": t / 1e3, "share": t / total, "calls": n} for k, t, n in top]
    for r in rows[:12]:
        check.log(f"  {100 * r['share']:5.1f} %  {r['ms']:9.1f} ms  {r['calls']:6d}x  {r['op'][:90]}")
    return {"variant": lever["name"], "time": key, "total_ms": total / 1e3, "top": rows}


# -- 4. and 5. the loaders alone, and epochs of `wbc train` -------------------------------------------------

def child_env(**extra) -> dict:
    """The environment of a child process: this checkout first on PYTHONPATH (packages installed beside it kept)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), **extra}


def synthetic(check: Check, scratch: Path) -> tuple[Path, float]:
    """The synthetic stand-in the loader and epoch parts read (written once per check)."""
    scale = 0.01 if check.tiny else 0.2
    root = scratch / "synthetic"
    if not (root / "SYNTHETIC.json").exists():
        t = time.time()
        synth.generate(root, scale=scale, cam16_scale=0.01, seed=0, progress=False, workers=os.cpu_count())
        check.log(f"synthetic WBC_100 at scale {scale} (575 px JPEGs) written in {time.time() - t:.0f} s")
    return root, scale


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loaders(check: Check, device: torch.device, scratch: Path) -> dict:
    """Images/s the CPU DataLoader delivers (decode + augmentation + collate in its workers) against the resident
    data (one epoch of batches cut and augmented on the device), for the paper profile's crop."""
    from throughput import loader_throughput

    root, _ = synthetic(check, scratch)
    config = paper_config(check, device).replace(data_root=str(root), subset=100, resident="on")
    rt = runtime.Runtime.from_config(config)
    t = time.time()
    cpu_rate = loader_throughput(config, rt, root, seconds=2.0 if check.tiny else 8.0)
    cpu_s = time.time() - t
    splits = datasets.build_splits(config, root, check=False)
    gen = torch.Generator()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.time()
    train_batches, _ = resident.loaders(splits, config, 64, device, gen, None, rt.num_workers, check.log)
    decode_s = time.time() - t
    nbytes = train_batches.split.nbytes
    n, rates = 0, []
    for epoch in (1, 2):  # the second epoch is the steady state
        gen.manual_seed(epoch)
        sync(device)
        t, n = time.perf_counter(), 0
        for batch in train_batches:
            n += len(batch["label"])
        sync(device)
        rates.append(n / (time.perf_counter() - t))
    out = {"train_images": len(splits.train), "input_size": config.input_size, "num_workers": rt.num_workers,
           "cpu_loader_images_per_s": cpu_rate, "cpu_loader_seconds": cpu_s, "resident_images_per_s": rates[-1],
           "resident_first_epoch_images_per_s": rates[0], "resident_decode_s": decode_s,
           "resident_train_gib": nbytes / 2**30, "ratio": rates[-1] / cpu_rate}
    check.log(f"loaders: CPU DataLoader ({rt.num_workers} workers) {cpu_rate:.0f} img/s, resident {rates[-1]:.0f} "
              f"img/s ({out['ratio']:.0f}x); decoding {len(splits.train)} images onto {device} took {decode_s:.1f} s "
              f"and {out['resident_train_gib']:.2f} GiB")
    return out


def epoch_rows(check: Check) -> list[dict]:
    """The three ``wbc train`` set-ups of the ``epoch`` part: the CPU loader, the resident data, and the resident
    data with the faster step lever and a larger validation batch."""
    lever = best_lever(check)
    levers = ["resident=on", "val_batch_size=128"] + (["upsample_bf16=true"] if lever.get("upsample_bf16") else [])
    return [{"name": "CPU loader", "set": ["resident=off"]}, {"name": "resident", "set": ["resident=on"]},
            {"name": "resident + levers", "set": levers}]


def epoch(check: Check, device: torch.device, scratch: Path) -> dict:
    """``wbc train --profile paper`` for two epochs (one under ``--tiny``) on the 575 px synthetic JPEGs, once per
    set-up of :func:`epoch_rows`."""
    root, scale = synthetic(check, scratch)
    n_train = sum(c["data"] for c in synth.planned_counts(scale, 0.01)["WBC_100"]["train"].values())
    epochs = 1 if check.tiny else 2
    extra = ["--set", "input_size=64", "--set", "base_width=4", "--set", "batch_size=2"] if check.tiny else []
    rows = []
    for setup in epoch_rows(check):
        if check.left() < (10 if check.tiny else 45):
            rows.append({**setup, "skipped": "budget"})
            continue
        run_dir = scratch / f"train-{len(rows)}"
        cmd = [sys.executable, "-m", "wbclib.cli", "train", "--profile", "paper", "--data-root", str(root),
               "--subset", "100", "--epochs", str(epochs), "--set", f"device={device.type}", "--run-dir",
               str(run_dir), "--no-progress", *extra, *[x for kv in setup["set"] for x in ("--set", kv)]]
        t = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(),
                                  timeout=max(30, check.left()))
        except subprocess.TimeoutExpired:
            rows.append({**setup, "error": f"still running after {time.time() - t:.0f} s: stopped"})
            check.log(f"  {setup['name']:18s}: stopped at the budget")
            break
        wall = time.time() - t
        if done.returncode != 0:
            rows.append({**setup, "error": done.stderr[-1500:]})
            check.log(f"  {setup['name']:18s}: FAILED (exit {done.returncode}) {done.stderr.strip()[-300:]}")
            continue
        m = json.loads((run_dir / "metrics.json").read_text())
        ts = m["timing_s"]
        n_val = m["val"]["n"]
        row = {**setup, "wall_s": wall, "epochs": m["epochs"], "train_images": m["train_images"], "timing_s": ts,
               "train_images_per_s": m["epochs"] * m["train_images"] / ts["train_steps"],
               "data_wait_share": ts["data_wait"] / ts["train_steps"], "val_images": n_val,
               "val_images_per_s": m["epochs"] * n_val / max(ts["validation"], 1e-9),
               "log": [line for line in done.stdout.strip().splitlines() if line.startswith(("resident", "epoch"))]}
        rows.append(row)
        check.log(f"  {setup['name']:18s}: {row['train_images_per_s']:7.1f} img/s, data wait "
                  f"{100 * row['data_wait_share']:5.1f} % of step time, validation {row['val_images_per_s']:.0f} "
                  f"img/s, set-up {ts['setup']:.1f} s, wall {wall:.0f} s")
        check.results["parts"]["epoch"] = {"rows": rows, "partial": True}
        check.save()
    return {"scale": scale, "train_images": n_train, "rows": rows}


# -- 6. and 7. several runs on one GPU: a real reduced grid, and the step in several processes --------------

class Sampler:
    """GPU utilisation (%) and memory in use (MiB), sampled every ``every`` seconds by ``nvidia-smi`` in a
    thread while a part runs (nothing on a machine without it)."""

    def __init__(self, every: float = 0.5):
        import threading

        self.every, self.samples, self.stop = every, [], threading.Event()
        self.smi = shutil.which("nvidia-smi")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                out = subprocess.run([self.smi, "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = (float(x) for x in out.stdout.strip().splitlines()[0].split(","))
                self.samples.append((util, mem))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass

    def __enter__(self) -> Sampler:
        if self.smi:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.smi:
            self.thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"samples": 0, "note": "no nvidia-smi: utilisation not sampled"}
        util = [u for u, _ in self.samples]
        return {"samples": len(util), "utilisation_mean_pct": sum(util) / len(util),
                "utilisation_busy_share": sum(u > 0 for u in util) / len(util),
                "memory_max_mib": max(m for _, m in self.samples)}


GRID_ONLY = {"tiny": "prcc-s0,cam16-ce-prcc-dice-s0,wbc1-pretrained-mask-s0", "gpu": "wbc*-pretrained-mask-s0"}
JOB_LINE = re.compile(r"^\s+(\S+-s\d+)\s+(finished|failed|skipped|reused)\s+([\d.]+)s")


def grid_scale(check: Check) -> tuple[float, int]:
    return (0.004, 1) if check.tiny else (0.05, 2)


def grid(check: Check, device: torch.device, scratch: Path, slots: tuple[int, ...]) -> dict:
    """``wbc study --profile paper --data synthetic`` over every stage of the chain at a small scale, once per
    number of runs per GPU in ``slots`` (on the CPU dry run: ``--jobs``, as slots per GPU mean nothing there)."""
    scale, epochs = grid_scale(check)
    cache = scratch / "grid-cache"
    t = time.time()
    synth.generate(cache / f"synthetic-scale{scale:g}-cam16-{scale:g}-seed0", scale=scale, cam16_scale=scale, seed=0,
                   progress=False, workers=os.cpu_count())
    gen_s = time.time() - t
    only = GRID_ONLY["tiny" if check.tiny else "gpu"]
    sets = [f"synthetic_scale={scale}", f"synthetic_cam16_scale={scale}", f"epochs={epochs}"]
    if check.tiny:
        sets += ["input_size=64", "base_width=4", "batch_size=2", "resident=on"]
    check.log(f"grid: {only} at synthetic scale {scale}, {epochs} epoch(s); data written in {gen_s:.0f} s")
    rows = []
    for k in slots:
        if check.left() < (20 if check.tiny else 60):
            rows.append({"slots_per_gpu": k, "skipped": "budget"})
            continue
        runs_dir = scratch / f"grid-k{k}"
        flag = ["--slots-per-gpu", str(k)] if device.type == "cuda" else ["--jobs", str(k)]
        cmd = [sys.executable, "-m", "wbclib.cli", "study", "--profile", "paper", "--data", "synthetic", "--seeds",
               "1", "--only", only, "--no-book", "--runs-dir", str(runs_dir), *flag,
               *[x for kv in sets for x in ("--set", kv)]]
        t = time.time()
        with Sampler() as sampler:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(30, check.left()),
                                      env=child_env(WBC_CACHE=str(cache)))
            except subprocess.TimeoutExpired:
                rows.append({"slots_per_gpu": k, "error": f"still running after {time.time() - t:.0f} s: stopped"})
                check.log(f"  {k} run(s) per GPU: stopped at the budget")
                break
        wall = time.time() - t
        jobs = {m.group(1): {"status": m.group(2), "seconds": float(m.group(3))}
                for m in map(JOB_LINE.match, done.stdout.splitlines()) if m}
        runs = []
        for run_id, job in jobs.items():
            m = json.loads((runs_dir / run_id / "metrics.json").read_text()) \
                if (runs_dir / run_id / "metrics.json").exists() else None
            if m:
                n_val = (m.get("val") or m[m["reported_split"]])["n"]
                job |= {"wall_time_s": m["wall_time_s"], "timing_s": m["timing_s"], "epochs": m["epochs"],
                        "train_images": m["train_images"], "val_images": n_val,
                        "report_images": m[m["reported_split"]]["n"]}
            runs.append({"run": run_id, **job})
        row = {"slots_per_gpu": k, "returncode": done.returncode, "wall_s": wall, "runs": runs,
               "gpu": sampler.summary(), "log_tail": done.stdout.strip().splitlines()[-6:],
               "stderr_tail": done.stderr[-1500:] if done.returncode else ""}
        rows.append(row)
        finished = sum(r["status"] == "finished" for r in runs)
        util = row["gpu"].get("utilisation_mean_pct")
        check.log(f"  {k} run(s) per GPU: {finished}/{len(runs)} runs finished in {wall:.0f} s wall"
                  + (f", GPU busy {util:.0f} % on average, up to {row['gpu']['memory_max_mib'] / 1024:.1f} GiB"
                     if util is not None else "") + (f"; exit {done.returncode}" if done.returncode else ""))
        check.results["parts"]["grid"] = {"rows": rows, "partial": True}
        check.save()
    return {"only": only, "scale": scale, "epochs": epochs, "synthetic_seconds": gen_s, "rows": rows}


def step_worker(spec: dict) -> int:
    """One process of the ``shared`` part: the best eager step on the device, warmed up, then timed over a
    window of ``seconds`` that all processes start together (each says it is ready by a file, and waits for
    the parent's ``go`` file, which holds the common start); prints the images it trained as JSON."""
    from wbclib.model.losses import MultiTaskLoss
    from wbclib.training import train

    device = torch.device(spec["device"])
    check = Check.__new__(Check)
    check.tiny = spec["tiny"]
    c = paper_config(check, device).replace(channels_last=True, precision=spec["precision"],
                                            upsample_bf16=spec["upsample_bf16"])
    rt = runtime.Runtime.from_config(c)
    torch.manual_seed(0)
    model = build_model(c).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr, fused=device.type == "cuda" or None)
    loss_fn = MultiTaskLoss.from_config(c)
    b, s = c.batch_size, c.input_size
    batch = {"image": torch.rand(b, 3, s, s, device=device).contiguous(memory_format=torch.channels_last),
             "label": torch.randint(0, c.num_classes, (b,), device=device),
             "mask": (torch.rand(b, 1, s, s, device=device) > 0.5).to(torch.uint8),
             "has_mask": torch.arange(b, device=device) % 4 == 0}
    for _ in range(3):
        train.train_step(model, batch, loss_fn, opt, c, rt)
    sync(device)
    Path(spec["ready"]).touch()
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.05)
    time.sleep(max(0.0, float(go.read_text()) - time.time()))
    t0, n = time.time(), 0
    while time.time() < t0 + spec["seconds"]:
        for _ in range(4):
            train.train_step(model, batch, loss_fn, opt, c, rt)
        n += 4 * b
    sync(device)
    print(json.dumps({"images": n, "seconds": time.time() - t0}))
    return 0


def shared(check: Check, device: torch.device, counts: tuple[int, ...], scratch: Path) -> dict:
    """The step in 1, 2, ... processes at once on the one GPU: summed images/s over a common time window."""
    lever = best_lever(check)
    precision = "bf16" if device.type == "cuda" or runtime.cpu_has_native_bf16() else "fp32"
    window = 4.0 if check.tiny else 8.0
    rows = []
    for k in counts:
        if check.left() < window + 45:
            rows.append({"processes": k, "skipped": "budget"})
            continue
        sync_dir = Path(tempfile.mkdtemp(prefix=f"shared-{k}-", dir=scratch))
        spec = {"device": str(device), "tiny": check.tiny, "precision": precision, "seconds": window,
                "upsample_bf16": bool(lever.get("upsample_bf16")), "go": str(sync_dir / "go")}
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--step-worker",
                                   json.dumps({**spec, "ready": str(sync_dir / f"ready-{i}")})],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                  env=child_env(**({"OMP_NUM_THREADS": "1"} if device.type == "cpu" else {})))
                 for i in range(k)]
        deadline = time.time() + max(30.0, check.left() - window - 10)
        while (len(list(sync_dir.glob("ready-*"))) < k and time.time() < deadline
               and all(p.poll() is None for p in procs)):
            time.sleep(0.1)
        (sync_dir / "go.tmp").write_text(str(time.time() + 0.5))
        os.replace(sync_dir / "go.tmp", sync_dir / "go")
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=window + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            if p.returncode == 0:
                results.append(json.loads(out.strip().splitlines()[-1]))
            else:
                rows.append({"processes": k, "error": err[-800:]})
        if len(results) != k:
            check.log(f"  {k} process(es): FAILED")
            continue
        total = sum(r["images"] / r["seconds"] for r in results)
        rows.append({"processes": k, "images_per_s": total, "per_process": results})
        check.log(f"  {k} process(es) on one {device.type.upper()}: {total:.1f} img/s together"
                  + (f" ({total / rows[0]['images_per_s']:.2f}x one)" if k > 1 and "images_per_s" in rows[0] else ""))
    one = next((r["images_per_s"] for r in rows if r.get("processes") == 1 and "images_per_s" in r), None)
    gains = {str(r["processes"]): r["images_per_s"] / one for r in rows if one and "images_per_s" in r}
    return {"variant": lever["name"], "window_s": window, "rows": rows, "gain": gains}


# -- 9. the suite's CUDA tests ------------------------------------------------------------------------------

def cuda_tests(check: Check) -> dict:
    if check.tiny:
        return {"skipped": "--tiny: no CUDA"}
    t = time.time()
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], capture_output=True, text=True, cwd=ROOT,
                          env=child_env(), timeout=max(30, check.left() - 20))
    tail = done.stdout.strip().splitlines()[-15:]
    check.log(f"cuda tests: exit {done.returncode} in {time.time() - t:.0f} s: {tail[-1] if tail else ''}")
    return {"returncode": done.returncode, "summary": tail, "stderr": done.stderr[-1500:]}


# -- 11. the paper study's GPU time --------------------------------------------------------------------------

def course_counts(job) -> tuple[int, int, int]:
    """A grid job's images at the course's counts: training, validation (every epoch) and the extra evaluation
    at the end (CAM16's test split)."""
    counts = synth.planned_counts(1.0)
    dataset = job.params["dataset"]
    if dataset == "wbc":
        return (sum(c["data"] for c in counts[f"WBC_{job.params['subset']}"]["train"].values()),
                sum(c["data"] for c in counts["WBC_100"]["val"].values()), 0)
    if dataset == "cam16":
        cam = counts[synth.CAM16_DIR]
        return (sum(c["data"] for c in cam["train"].values()), sum(c["data"] for c in cam["val"].values()),
                sum(c["data"] for c in cam["test"].values()))
    total = counts[synth.PRCC_DIR]["data"]
    n_eval = len(range(9, total, 10))
    return total - n_eval, n_eval, 0


def estimate(check: Check, rates: dict) -> dict:
    """GPU time of each run of ``wbc study --profile paper --seeds 1`` (the grid's report chapter) on the course data.

    ``rates``: ``train_images_per_s`` (the step with the real loader, data waits included),
    ``eval_images_per_s``, ``setup_s_per_image`` (the pre-training decode check) and ``load_s_per_image``
    (one worker decoding one 575 px image). A 2000 px pRCC tile costs (2000/575)² times as much to decode;
    with the CPU loader its rate is the slower of the step and ``workers`` decoders (with ``resident`` true the
    tiles are decoded once, in the set-up)."""
    config = cfg.from_profile("paper")
    epochs = config.epochs
    tile_cost = (synth.PRCC_SIDE / synth.WBC_SIZE) ** 2
    rows = []
    for job in runner.grid([0]):
        dataset = job.params["dataset"]
        n_train, n_eval, extra_eval = course_counts(job)
        train_rate = rates["train_images_per_s"]
        if dataset == "prcc" and not rates.get("resident"):
            train_rate = min(train_rate, rates["workers"] / (rates["load_s_per_image"] * tile_cost))
        seconds = (epochs * n_train / train_rate + (epochs * n_eval + extra_eval) / rates["eval_images_per_s"]
                   + (n_train + n_eval + extra_eval) * rates["setup_s_per_image"]
                   * (tile_cost if dataset == "prcc" else 1))
        rows.append({"run": job.id, "train_images": n_train, "eval_images": n_eval + extra_eval,
                     "epochs": epochs, "gpu_seconds": seconds})
    total = sum(r["gpu_seconds"] for r in rows)
    check.log(f"estimate: the {len(rows)}-run paper study (one seed) takes about {total / 3600:.2f} GPU-hours "
              f"({total / 60:.0f} min) one run at a time, from the epoch part's rates (goal ≤ "
              f"{GOALS['paper_study_gpu_hours']:g})")
    return {"runs": rows, "total_gpu_hours": total / 3600, "rates": rates,
            "note": "estimate from the measured rates and the course counts (synthetic counts at scale 1)"}


def rates_from(results: dict) -> dict | None:
    """The rates the estimate needs, from the epoch runs (the fastest set-up)."""
    rows = [r for r in results["parts"].get("epoch", {}).get("rows", []) if "timing_s" in r]
    if not rows:
        return None
    cpu = next((r for r in rows if r["name"] == "CPU loader"), rows[0])
    best = max(rows, key=lambda r: r["train_images_per_s"])
    ts = best["timing_s"]
    return {"setup": best["name"], "resident": best["name"] != "CPU loader",
            "train_images_per_s": best["train_images_per_s"], "eval_images_per_s": best["val_images_per_s"],
            "setup_s_per_image": ts["setup"] / (best["train_images"] + best["val_images"]),
            "workers": max(1, min(8, (os.cpu_count() or 1) - 1)),  # the CPU loader's processes on CUDA
            "load_s_per_image": cpu["timing_s"]["data_wait"] / (cpu["epochs"] * cpu["train_images"])}


def stage(run_id: str) -> str:
    return "prcc" if run_id.startswith("prcc") else "cam16" if run_id.startswith("cam16") else "wbc"


def projection(check: Check) -> dict:
    """The 21-run paper study (one seed) projected from the reduced grid: each stage's rates from its largest run
    of the one-run-per-GPU grid (training and validation images/s, set-up and final evaluation per image,
    checkpoint per epoch, the notebook around a run), applied to the course's counts and 32 epochs. With K runs
    per GPU, the training and validation part is divided by the ``shared`` part's measured gain of K processes
    (where measured; else by the grid's own wall-time gain) and the rest by the grid's wall-time gain.
    Small runs of two epochs overstate the per-image costs (warm-up, first-epoch set-up), so the projection
    errs long."""
    parts = check.results["parts"]
    rows = [r for r in parts.get("grid", {}).get("rows", []) if r.get("runs")]
    one = next((r for r in rows if r["slots_per_gpu"] == 1), None)
    if one is None:
        return {"skipped": "no grid run with one run per GPU"}
    measured = [r for r in one["runs"] if "timing_s" in r]
    if not measured:
        return {"skipped": "the grid finished no run"}
    rates = {}
    for kind in ("prcc", "cam16", "wbc"):
        mine = [r for r in measured if stage(r["run"]) == kind]
        if not mine:
            continue
        r = max(mine, key=lambda r: r["train_images"])
        ts, e = r["timing_s"], r["epochs"]
        rates[kind] = {"from": r["run"], "train_images_per_s": e * r["train_images"] / max(ts["train_steps"], 1e-9),
                       "val_images_per_s": e * r["val_images"] / max(ts["validation"], 1e-9),
                       "setup_s_per_image": ts["setup"] / (r["train_images"] + r["val_images"]),
                       "final_s_per_image": ts.get("final_evaluation", 0.0) / max(1, r["report_images"]),
                       "checkpoint_s_per_epoch": ts["checkpoints"] / e}
    overhead = sorted(max(0.0, r["seconds"] - r["wall_time_s"]) for r in measured)
    notebook_s = overhead[len(overhead) // 2]
    epochs = cfg.from_profile("paper").epochs
    runs, compute_total, rest_total = [], 0.0, 0.0
    for job in runner.grid([0]):
        kind = stage(job.id)
        rate = rates.get(kind) or rates.get("wbc") or next(iter(rates.values()))
        n_train, n_eval, extra = course_counts(job)
        compute = epochs * n_train / rate["train_images_per_s"] + epochs * n_eval / rate["val_images_per_s"]
        rest = ((n_train + n_eval + extra) * rate["setup_s_per_image"] + (n_eval + extra) * rate["final_s_per_image"]
                + epochs * rate["checkpoint_s_per_epoch"] + notebook_s)
        compute_total += compute
        rest_total += rest
        runs.append({"run": job.id, "train_images": n_train, "eval_images": n_eval + extra,
                     "compute_s": compute, "other_s": rest})
    serial = compute_total + rest_total
    by_slots = {"1": serial / 3600}
    gains = parts.get("shared", {}).get("gain", {})
    for r in rows:
        k = r["slots_per_gpu"]
        if k == 1 or r.get("returncode"):
            continue
        wall_gain = one["wall_s"] / r["wall_s"]
        step_gain = gains.get(str(min(k, max((int(x) for x in gains), default=1)))) if gains else None
        by_slots[str(k)] = (compute_total / (step_gain or wall_gain) + rest_total / wall_gain) / 3600
    best = min(by_slots, key=by_slots.get)
    check.log(f"projection: the 21-run paper study (one seed) from the reduced grid: {by_slots['1']:.2f} GPU-hours "
              "one run at a time" + "".join(f", {h:.2f} with {k} runs per GPU" for k, h in by_slots.items()
                                            if k != "1") + f" (goal ≤ {GOALS['paper_study_gpu_hours']:g})")
    return {"rates": rates, "notebook_s_per_run": notebook_s, "runs": runs, "gpu_hours_by_slots_per_gpu": by_slots,
            "best_slots_per_gpu": int(best), "total_gpu_hours": by_slots[best], "method": projection.__doc__}


# -- the check ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="folder for gpu-check.json and gpu-check.log (created)")
    ap.add_argument("--budget-s", type=float, default=500, help="time the check may take (default 500)")
    ap.add_argument("--tiny", "--cpu-dry-run", dest="tiny", action="store_true",
                    help="every part on the CPU at toy sizes: the same code paths, known not to crash")
    ap.add_argument("--only", default=None, help="comma-separated parts to run (default: all): machine, "
                    "matmul, steps, loaders, epoch, grid, shared, profile, cuda_tests, compile, estimate")
    ap.add_argument("--slots", default="1,3", help="runs per GPU of the grid part (default 1,3)")
    ap.add_argument("--step-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.step_worker:
        return step_worker(json.loads(a.step_worker))
    if a.out is None:
        ap.error("the output folder is required")
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to PyTorch (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU, or pass --cpu-dry-run for the CPU dry run", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if a.tiny else "cuda")
    check = Check(out, a.budget_s, a.tiny)
    only = set(a.only.split(",")) if a.only else None
    slots = tuple(int(k) for k in a.slots.split(","))
    if a.tiny:
        slots = tuple(min(k, 2) for k in slots)

    def want(name: str) -> bool:
        return only is None or name in only

    with tempfile.TemporaryDirectory(prefix="wbc-gpu-check-") as scratch:
        os.environ.setdefault("WBC_CACHE", str(Path(scratch) / "cache"))
        check.part("machine", machine)
        peak = None
        if want("matmul"):
            peak = check.part("matmul", matmul, device).get("bf16_flops_per_s")
        if want("steps"):
            check.part("steps", steps, device, peak, need_s=60)
        if want("loaders"):
            check.part("loaders", loaders, device, Path(scratch), need_s=40)
        if want("epoch"):
            check.part("epoch", epoch, device, Path(scratch), need_s=60)
        if want("grid"):
            check.part("grid", grid, device, Path(scratch), slots, need_s=90)
        if want("cuda_tests"):
            check.part("cuda_tests", cuda_tests, need_s=120)
        if want("shared"):
            check.part("shared", shared, device, (1, 2) if a.tiny else (1, 3), Path(scratch), need_s=60)
        if want("profile"):
            check.part("profile", profile, device, need_s=20)
        if want("compile"):
            check.part("compile", compiled_steps, device, peak, need_s=90)
        rates = rates_from(check.results)
        if rates and want("estimate"):
            check.part("estimate", estimate, rates)
        if want("estimate"):
            check.part("projection", projection)
    check.results["verdicts"] = verdicts(check.results)
    for line in check.results["verdicts"]:
        check.log("goal: " + line)
    check.save()
    check.log(f"written: {out / 'gpu-check.json'}")
    return 0


def verdicts(results: dict) -> list[str]:
    """Each goal against what was measured, in one line each."""
    parts, lines = results["parts"], []
    best = (parts.get("steps") or {}).get("best")
    if best and best.get("share_of_bf16_peak") is not None:
        s = best["share_of_bf16_peak"]
        lines.append(f"training step {100 * s:.1f} % of the bf16 peak ({best['name']}, batch {best['batch_size']}): "
                     f"{'met' if s >= GOALS['step_share_of_bf16_peak'] else 'not met'} (goal ≥ 40 %)")
    rows = [r for r in (parts.get("epoch") or {}).get("rows", []) if "data_wait_share" in r]
    if rows:
        r = min(rows, key=lambda r: r["data_wait_share"])
        lines.append(f"data waits {100 * r['data_wait_share']:.1f} % of step time with the {r['name']}: "
                     f"{'met' if r['data_wait_share'] < GOALS['data_wait_share'] else 'not met'} (goal < 5 %)")
    proj = parts.get("projection") or {}
    est = parts.get("estimate") or {}
    if "total_gpu_hours" in proj:
        h = proj["total_gpu_hours"]
        lines.append(f"paper study about {h:.2f} GPU-hours per seed, projected from the reduced grid "
                     f"({proj['best_slots_per_gpu']} run(s) per GPU): "
                     f"{'met' if h <= GOALS['paper_study_gpu_hours'] else 'not met'} (goal ≤ 1)")
    elif "total_gpu_hours" in est:
        h = est["total_gpu_hours"]
        lines.append(f"paper study about {h:.2f} GPU-hours per seed (estimate from the epoch rates): "
                     f"{'met' if h <= GOALS['paper_study_gpu_hours'] else 'not met'} (goal ≤ 1)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
