"""The throughput benchmark's CPU side: it times the library's step and takes each ratio from its own yardstick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
