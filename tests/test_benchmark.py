"""The throughput benchmark's CPU side: it times the library's step and takes each ratio from its own yardstick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_writes_ratios_against_interleaved_yardsticks(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--profile", "quick",
                           "--default-only", "--no-compile", "--steps", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    (v,) = r["variants"]
    assert v["name"] == r["default_variant"] and v["images_per_s"] > 0
    stick = v["yardstick"]
    assert stick["fp32"] > 0 and v["fraction_of_fp32_matmul"] == pytest.approx(
        v["model_flops_per_s"] / stick["fp32"])
    assert v["flag"] is None or "not trustworthy" in v["flag"]
    assert r["matmul_flops_per_s"] == pytest.approx(stick["fp32"])
    assert "% of fp32" in done.stdout


def test_gpu_check_refuses_without_cuda_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for minutes")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_writes_every_part(tmp_path):
    """--cpu-dry-run runs the check's code paths on the CPU at toy sizes: the JSON a GPU run would write, with
    the same keys, the real reduced grid included (three runs, one at a time and two side by side)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path), "--cpu-dry-run",
                           "--budget-s", "3000"], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "gpu-check.json").read_text())
    parts = r["parts"]
    assert not [name for name, part in parts.items() if "error" in part], parts
    assert parts["matmul"]["bf16_flops_per_s"] > 0 and parts["matmul"]["tf32_flops_per_s"] > 0
    eager = [v for v in parts["steps"]["variants"] if v["batch_size"] == 2]
    assert [v["name"] for v in eager] == ["fp32", "bf16", "bf16 + channels_last",
                                          "bf16 + channels_last + cudnn.benchmark",
                                          "bf16 + channels_last, batch on the GPU",
                                          "bf16 + channels_last + upsample_bf16, batch on the GPU"]
    assert all(v["images_per_s"] > 0 and v["share_of_bf16_peak"] == pytest.approx(
        v["model_flops_per_s"] / parts["matmul"]["bf16_flops_per_s"]) for v in eager)
    loaders = parts["loaders"]
    assert loaders["cpu_loader_images_per_s"] > 0 and loaders["resident_images_per_s"] > 0
    rows = parts["epoch"]["rows"]
    assert [row["name"] for row in rows] == ["CPU loader", "resident", "resident + levers"]
    assert all(0 <= row["data_wait_share"] <= 1 and row["train_images"] > 0 for row in rows)
    assert not any(line.startswith("resident:") for line in rows[0]["log"])
    assert all(any(line.startswith("resident:") for line in row["log"]) for row in rows[1:])
    grid = parts["grid"]["rows"]
    assert [g["slots_per_gpu"] for g in grid] == [1, 2] and all(g["returncode"] == 0 for g in grid)
    assert all(sorted(run["status"] for run in g["runs"]) == ["finished"] * 3 for g in grid)
    assert parts["shared"]["gain"]["1"] == 1 and parts["shared"]["gain"]["2"] > 0
    assert len(parts["estimate"]["runs"]) == 21 and parts["estimate"]["total_gpu_hours"] > 0
    proj = parts["projection"]
    assert len(proj["runs"]) == 21 and set(proj["gpu_hours_by_slots_per_gpu"]) == {"1", "2"}
    assert proj["total_gpu_hours"] == min(proj["gpu_hours_by_slots_per_gpu"].values()) > 0
    assert parts["cuda_tests"] == {"skipped": "--tiny: no CUDA", "seconds": pytest.approx(0, abs=1)}
    assert len(r["verdicts"]) == 3 and (tmp_path / "gpu-check.log").read_text().count("goal:") == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-check.json", "gpu-check.log"]


def test_paper_study_estimate_adds_up_the_course_counts():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    check = gpu_check.Check.__new__(gpu_check.Check)
    check.log, check.t0, check.budget = (lambda line: None), 0.0, 1.0
    rates = {"train_images_per_s": 400.0, "eval_images_per_s": 1600.0, "setup_s_per_image": 0.001,
             "load_s_per_image": 0.004, "workers": 8}
    est = gpu_check.estimate(check, rates)
    runs = {r["run"]: r for r in est["runs"]}
    assert len(runs) == 21
    w = runs["wbc100-scratch-mask-s0"]  # 8447 training and 1728 validation images (course counts), 32 epochs
    assert (w["train_images"], w["eval_images"], w["epochs"]) == (8447, 1728, 32)
    assert w["gpu_seconds"] == pytest.approx(32 * 8447 / 400 + 32 * 1728 / 1600 + (8447 + 1728) * 0.001)
    p = runs["prcc-s0"]  # 2000 px tiles: decoding (8 workers, 12x the cost of a 575 px cell) is slower than the step
    decode = 8 / (0.004 * (2000 / 575) ** 2)
    assert p["gpu_seconds"] == pytest.approx(32 * p["train_images"] / decode + 32 * p["eval_images"] / 1600
                                             + (p["train_images"] + p["eval_images"]) * 0.001 * (2000 / 575) ** 2)
    assert est["total_gpu_hours"] == pytest.approx(sum(r["gpu_seconds"] for r in est["runs"]) / 3600)
