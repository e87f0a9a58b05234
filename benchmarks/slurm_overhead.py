"""What a Slurm job per run costs over a local study, measured in one run on the one-node Slurm of `make slurm-up`.

    python benchmarks/slurm_overhead.py --json benchmarks/results/slurm-onenode-epyc.json

Runs the same chain of three dependent runs (prcc-s0 -> cam16-ce-prcc-dice-s0 -> wbc1-pretrained-mask-s0, tiny
networks on the synthetic stand-in, no book) twice into fresh runs folders: locally with one kept-alive kernel,
then with ``--executor slurm``. Reports each study's wall time, their ratio, and the seconds from ``sbatch`` to
the job's Python starting (the median the study prints). A measurement, not a test: the machine is shared, so
compare the ratio from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--set", "epochs=3", "--set", "input_size=32", "--set", "resize=48", "--set", "base_width=4", "--set",
        "depth=2", "--set", "batch_size=4", "--set", "min_steps=0", "--set", "synthetic_scale=0.003"]


def study(runs_dir: Path, extra: list[str], env: dict, only: str = "wbc1-pretrained-mask-s0") -> tuple[float, str]:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "wbclib.cli", "study", "--data", "synthetic", "--only", only,
                        "--no-book", "--runs-dir", str(runs_dir), *TINY, *extra],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"study failed:\n{p.stdout}\n{p.stderr}")
    return time.time() - t0, p.stdout


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "WBC_CACHE": str(Path(tmp) / "cache")}
        study(Path(tmp) / "warm", [], env, only="prcc-s0")  # the synthetic data generated, the caches warm
        local_s, _ = study(Path(tmp) / "local", ["--jobs", "1"], env)
        slurm_s, out = study(Path(tmp) / "slurm", ["--executor", "slurm", "--gpus", "0", "--cpus", "1"], env)
    m = re.search(r"submission to start ([\d.]+) s median \(([\d.]+)-([\d.]+) s\) over (\d+)", out)
    result = {"what": "a chain of 3 dependent tiny runs, locally (one kept-alive kernel) and one Slurm job per run",
              "cpu": f"{cpu_name()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "local_wall_s": round(local_s, 1), "slurm_wall_s": round(slurm_s, 1),
              "slurm_over_local": round(slurm_s / local_s, 2),
              "submission_to_start_s": {"median": float(m.group(1)), "min": float(m.group(2)),
                                        "max": float(m.group(3)), "jobs": int(m.group(4))} if m else None}
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
