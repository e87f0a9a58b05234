"""The paper profile on one NVIDIA GPU, measured in one go (about 5 minutes, at most ``--budget-s``).

    bash benchmarks/gpu_check.sh OUTDIR          # the same as: python benchmarks/gpu_check.py OUTDIR

Writes ``OUTDIR/gpu-check.json`` (after every part, so a cut-off run keeps what it measured) and
``OUTDIR/gpu-check.log``; scratch files (synthetic images, run directories) go to a temporary folder. Parts:

1. ``machine``: ``nvidia-smi``, the torch / CUDA / cuDNN versions, the CPU cores;
2. ``matmul``: dense bf16 and tf32 matmul FLOP/s (8192³, median of bursts): the peak the step is judged by;
3. ``steps``: the paper profile's training step (384 px, width 64, the library's ``train.train_step`` on
   random tensors) at batch 16 and at the largest batch that fits, in fp32, bf16, bf16 + channels_last and
   bf16 + channels_last + ``torch.compile``: images/s, model FLOP/s as a share of the bf16 peak, peak memory;
4. ``epoch``: ``wbc train --profile paper`` for one epoch on the synthetic stand-in (WBC_100 layout, 575 px
   JPEGs) with the real loader at ``num_workers`` 0, 4, 8, 15: images/s and the share of step time spent
   waiting for data (the trainer's own ``data_wait`` timing);
5. ``profile``: the operators that take the step's device time (``torch.profiler``), and
   ``cuda_tests``: the test suite's CUDA tests (``pytest -m cuda``);
6. ``estimate``: the GPU time of the full 21-run paper study (one seed), per run, from the measured rates
   and the course's image counts.

Without CUDA it refuses with one line and exit status 2. ``--tiny`` runs every part on the CPU at toy
sizes (no compile, no CUDA tests): what the test suite checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
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
from wbclib.data import synth  # noqa: E402
from wbclib.model.network import flops_per_image  # noqa: E402
from wbclib.study import runner  # noqa: E402

#: The goals the issue sets for the GPU numbers.
GOALS = {"step_share_of_bf16_peak": 0.40, "data_wait_share": 0.05, "paper_study_gpu_hours": 1.0}
WORKERS = (0, 4, 8, 15)


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


# -- 3. the training step ------------------------------------------------------------------------------------

VARIANTS = [
    {"name": "fp32", "channels_last": False, "precision": "fp32", "compile": False},
    {"name": "bf16", "channels_last": False, "precision": "bf16", "compile": False},
    {"name": "bf16 + channels_last", "channels_last": True, "precision": "bf16", "compile": False},
    {"name": "bf16 + channels_last + compile", "channels_last": True, "precision": "bf16", "compile": True},
    {"name": "bf16 + channels_last + cudnn.benchmark", "channels_last": True, "precision": "bf16", "compile": False,
     "cudnn_benchmark": True},
]


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


def largest_batch(check: Check, config: cfg.RunConfig, device: torch.device) -> int:
    """The largest power-of-two batch (from 32) whose bf16 + channels_last step runs: it fits in GPU memory
    and no kernel refuses its size (cuDNN's channels_last bilinear upsampling refuses outputs of 2³¹ elements
    or more: batch 256 at 384 px and width 64)."""
    from throughput import step_throughput

    best = config.batch_size
    candidates = (4,) if check.tiny else (32, 64, 128, 256, 512)
    variant = VARIANTS[2]
    for b in candidates:
        if check.left() < 60 and not check.tiny:
            break
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            step_throughput(config.replace(batch_size=b), variant, device, 1, 1)
            best = b
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:  # out of memory, or a kernel's size limit
            why = "out of memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else str(exc).splitlines()[0][:200]
            check.log(f"  batch {b}: does not run ({why})")
            check.results.setdefault("notes", []).append(f"batch {b} does not run: {why}")
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def steps(check: Check, device: torch.device, peak_bf16: float | None, compiled: bool = False) -> dict:
    """The eager variants at batch 16 and at the largest batch that fits; with ``compiled``, the
    ``torch.compile`` variant at both batches, added to the eager rows (compiling takes a minute or two, so it
    runs last, when the rest is safe)."""
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
            check.log(f"  {variant['name']:32s} batch {batch:4d}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
            return
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        flops = r["images_per_s"] * fpi
        share = flops / peak_bf16 if peak_bf16 else None
        rows.append({**variant, "batch_size": batch, **r, "model_flops_per_s": flops, "share_of_bf16_peak": share})
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "–"
        check.log(f"  {variant['name']:32s} batch {batch:4d}: {r['images_per_s']:8.1f} img/s  "
                  f"{flops / 1e12:7.1f} TFLOP/s" + (f"  {100 * share:5.1f} % of bf16 peak" if share else "")
                  + f"  peak memory {mem}")
        check.results["parts"]["steps"] = {**before, "flops_per_image": fpi, "variants": rows, "partial": True}
        check.save()

    if compiled:
        big = before.get("largest_batch", config.batch_size)
        run(VARIANTS[3], config.batch_size)
        if big != config.batch_size and check.left() > 120:
            run(VARIANTS[3], big)
    else:
        for v in (*VARIANTS[:3], VARIANTS[4]):
            run(v, config.batch_size)
        big = largest_batch(check, config, device)
        check.log(f"  largest power-of-two batch that runs (bf16 + channels_last): {big}")
        for b in (32, 64, 128, 256, 512):
            if b <= big and check.left() > 60:
                run(VARIANTS[2], b)
    ok = [r for r in rows if "images_per_s" in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    return {"flops_per_image": fpi, "largest_batch": big, "steps_timed": n_steps, "variants": rows,
            "best": best and {k: best[k] for k in ("name", "batch_size", "images_per_s", "share_of_bf16_peak")},
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def compiled_steps(check: Check, device: torch.device, peak_bf16: float | None) -> dict:
    """The compile variant, appended to the ``steps`` part (its rows and best are rewritten there)."""
    if check.tiny:
        return {"skipped": "--tiny: no torch.compile"}
    check.results["parts"]["steps"] = {**steps(check, device, peak_bf16, compiled=True),
                                       "seconds": check.results["parts"].get("steps", {}).get("seconds")}
    return {"done": True}


def profile(check: Check, device: torch.device) -> dict:
    """Where the bf16 + channels_last step spends its device time: the operators with the most self time
    over a few steps at batch 16 (``torch.profiler``)."""
    from throughput import step_throughput
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    config = paper_config(check, device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        step_throughput(config, VARIANTS[2], device, 2 if check.tiny else 6, 1)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [(e.key, getattr(e, key), e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in ops) or 1.0
    top = sorted(ops, key=lambda o: -o[1])[:20]
    rows = [{"op": k, "ms": t / 1e3, "share": t / total, "calls": n} for k, t, n in top]
    for r in rows[:12]:
        check.log(f"  {100 * r['share']:5.1f} %  {r['ms']:9.1f} ms  {r['calls']:6d}x  {r['op'][:90]}")
    return {"time": key, "total_ms": total / 1e3, "top": rows}


# -- 4. an epoch-shaped run with the real loader -------------------------------------------------------------

def epoch(check: Check, device: torch.device, scratch: Path, workers: tuple[int, ...] = WORKERS) -> dict:
    """``wbc train --profile paper`` for one epoch on 575 px synthetic JPEGs, once per worker count."""
    scale = 0.01 if check.tiny else 0.2
    root = scratch / "synthetic"
    t = time.time()
    synth.generate(root, scale=scale, cam16_scale=0.01, seed=0, progress=False, workers=os.cpu_count())
    gen = time.time() - t
    n_train = sum(c["data"] for c in synth.planned_counts(scale, 0.01)["WBC_100"]["train"].values())
    check.log(f"epoch: synthetic WBC_100 at scale {scale} ({n_train} training images of 575 px) written in {gen:.0f} s")
    workers = (0,) if check.tiny else workers
    extra = ["--set", "input_size=64", "--set", "base_width=4", "--set", "batch_size=2"] if check.tiny else []
    rows = []
    for w in workers:
        if check.left() < (10 if check.tiny else 45):
            rows.append({"num_workers": w, "skipped": "budget"})
            continue
        run_dir = scratch / f"train-w{w}"
        cmd = [sys.executable, "-m", "wbclib.cli", "train", "--profile", "paper", "--data-root", str(root),
               "--subset", "100", "--epochs", "1", "--set", f"device={device.type}", "--set", f"num_workers={w}",
               "--run-dir", str(run_dir), "--no-progress", *extra]
        t = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=max(30, check.left()))
        except subprocess.TimeoutExpired:
            rows.append({"num_workers": w, "error": f"still running after {time.time() - t:.0f} s: stopped"})
            check.log(f"  num_workers {w:2d}: stopped at the budget")
            break
        wall = time.time() - t
        if done.returncode != 0:
            rows.append({"num_workers": w, "error": done.stderr[-1500:]})
            check.log(f"  num_workers {w:2d}: FAILED (exit {done.returncode}) {done.stderr.strip()[-300:]}")
            continue
        m = json.loads((run_dir / "metrics.json").read_text())
        ts = m["timing_s"]
        n_val = m["val"]["n"]
        row = {"num_workers": w, "wall_s": wall, "train_images": m["train_images"], "timing_s": ts,
               "train_images_per_s": m["train_images"] / ts["train_steps"],
               "data_wait_share": ts["data_wait"] / ts["train_steps"], "val_images": n_val,
               "log_tail": done.stdout.strip().splitlines()[-3:]}
        rows.append(row)
        check.log(f"  num_workers {w:2d}: {row['train_images_per_s']:7.1f} img/s, data wait "
                  f"{100 * row['data_wait_share']:5.1f} % of step time, validation {ts['validation']:.1f} s, "
                  f"set-up {ts['setup']:.1f} s, wall {wall:.0f} s")
        check.results["parts"]["epoch"] = {"rows": rows, "partial": True}
        check.save()
    return {"scale": scale, "synthetic_seconds": gen, "train_images": n_train, "rows": rows}


# -- 5. the suite's CUDA tests ------------------------------------------------------------------------------

def cuda_tests(check: Check) -> dict:
    if check.tiny:
        return {"skipped": "--tiny: no CUDA"}
    t = time.time()
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=max(30, check.left() - 20))
    tail = done.stdout.strip().splitlines()[-15:]
    check.log(f"cuda tests: exit {done.returncode} in {time.time() - t:.0f} s: {tail[-1] if tail else ''}")
    return {"returncode": done.returncode, "summary": tail, "stderr": done.stderr[-1500:]}


# -- 6. the paper study's GPU time --------------------------------------------------------------------------

def estimate(check: Check, rates: dict) -> dict:
    """GPU time of each run of ``wbc study --profile paper --seeds 1`` (the grid's report chapter) on the course data.

    ``rates``: ``train_images_per_s`` (the step with the real loader, data waits included),
    ``eval_images_per_s``, ``setup_s_per_image`` (the pre-training decode check) and ``load_s_per_image``
    (one worker decoding one 575 px image). A 2000 px pRCC tile costs (2000/575)² times as much to decode;
    its rate is the slower of the step and ``workers`` decoders."""
    counts = synth.planned_counts(1.0)
    config = cfg.from_profile("paper")
    epochs = config.epochs
    tile_cost = (synth.PRCC_SIDE / synth.WBC_SIZE) ** 2
    rows = []
    for job in runner.grid([0]):
        dataset = job.params["dataset"]
        if dataset == "wbc":
            n_train = sum(c["data"] for c in counts[f"WBC_{job.params['subset']}"]["train"].values())
            n_eval = sum(c["data"] for c in counts["WBC_100"]["val"].values())
            train_rate, extra_eval = rates["train_images_per_s"], 0
        elif dataset == "cam16":
            cam = counts[synth.CAM16_DIR]
            n_train = sum(c["data"] for c in cam["train"].values())
            n_eval = sum(c["data"] for c in cam["val"].values())
            extra_eval = sum(c["data"] for c in cam["test"].values())
            train_rate = rates["train_images_per_s"]
        else:
            total = counts[synth.PRCC_DIR]["data"]
            n_eval = len(range(9, total, 10))
            n_train, extra_eval = total - n_eval, 0
            decode = rates["workers"] / (rates["load_s_per_image"] * tile_cost)
            train_rate = min(rates["train_images_per_s"], decode)
        seconds = (epochs * n_train / train_rate + (epochs * n_eval + extra_eval) / rates["eval_images_per_s"]
                   + (n_train + n_eval + extra_eval) * rates["setup_s_per_image"]
                   * (tile_cost if dataset == "prcc" else 1))
        rows.append({"run": job.id, "train_images": n_train, "eval_images": n_eval + extra_eval,
                     "epochs": epochs, "gpu_seconds": seconds})
    total = sum(r["gpu_seconds"] for r in rows)
    check.log(f"estimate: the {len(rows)}-run paper study (one seed) takes about {total / 3600:.2f} GPU-hours "
              f"({total / 60:.0f} min) on this device (goal ≤ {GOALS['paper_study_gpu_hours']:g})")
    return {"runs": rows, "total_gpu_hours": total / 3600, "rates": rates,
            "note": "estimate from the measured rates and the course counts (synthetic counts at scale 1)"}


def rates_from(results: dict) -> dict | None:
    """The rates the estimate needs, from the epoch runs (the best worker count)."""
    rows = [r for r in results["parts"].get("epoch", {}).get("rows", []) if "timing_s" in r]
    if not rows:
        return None
    zero = next((r for r in rows if r["num_workers"] == 0), rows[0])
    best = max(rows, key=lambda r: r["train_images_per_s"])
    ts = best["timing_s"]
    n_val = best["val_images"]
    return {"train_images_per_s": best["train_images_per_s"], "workers": max(1, best["num_workers"]),
            "eval_images_per_s": n_val / max(ts["validation"], 1e-9),
            "setup_s_per_image": ts["setup"] / (best["train_images"] + n_val),
            "load_s_per_image": zero["timing_s"]["data_wait"] / zero["train_images"]}


# -- the check ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for gpu-check.json and gpu-check.log (created)")
    ap.add_argument("--budget-s", type=float, default=420, help="time the check may take (default 420)")
    ap.add_argument("--tiny", action="store_true", help="every part on the CPU at toy sizes (for the tests)")
    ap.add_argument("--only", default=None, help="comma-separated parts to run (default: all): machine, "
                    "matmul, steps, profile, cuda_tests, epoch, compile, estimate")
    ap.add_argument("--workers", default=",".join(map(str, WORKERS)),
                    help="loader worker counts of the epoch runs (default 0,4,8,15)")
    a = ap.parse_args(argv)
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to PyTorch (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU, or pass --tiny for the CPU dry run", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if a.tiny else "cuda")
    check = Check(out, a.budget_s, a.tiny)
    only = set(a.only.split(",")) if a.only else None

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
        if want("profile"):
            check.part("profile", profile, device, need_s=30)
        if want("cuda_tests"):
            check.part("cuda_tests", cuda_tests, need_s=30)
        if want("epoch"):
            check.part("epoch", epoch, device, Path(scratch), tuple(int(w) for w in a.workers.split(",")), need_s=60)
        if want("compile"):
            check.part("compile", compiled_steps, device, peak, need_s=90)
        rates = rates_from(check.results)
        if rates and want("estimate"):
            check.part("estimate", estimate, rates)
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
        lines.append(f"data waits {100 * r['data_wait_share']:.1f} % of step time at num_workers "
                     f"{r['num_workers']}: {'met' if r['data_wait_share'] < GOALS['data_wait_share'] else 'not met'}"
                     " (goal < 5 %)")
    est = parts.get("estimate") or {}
    if "total_gpu_hours" in est:
        h = est["total_gpu_hours"]
        lines.append(f"paper study about {h:.2f} GPU-hours: "
                     f"{'met' if h <= GOALS['paper_study_gpu_hours'] else 'not met'} (goal ≤ 1)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
