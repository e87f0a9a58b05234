"""torch.distributed: two gloo processes on the CPU train the same model as one process with the same global
batch; rank 0 alone writes the run directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import make_wbc_tree
from wbclib.distributed import Context, ShardedBatchSampler

ARGS = ["--epochs", "2", "--no-progress", "--no-masks", "--set", "input_size=32", "--set", "resize=null",
        "--set", "base_width=4", "--set", "min_steps=0", "--set", "rot90=false", "--set", "color_jitter=0",
        "--set", "depth=2", "--set", "batch_size=4", "--set", "lr=1e-4", "--set", "grad_clip=0"]


def test_shares_of_a_step_make_up_the_single_process_batch():
    single = list(ShardedBatchSampler(11, 4, Context(), torch.Generator().manual_seed(3)))
    shares = [list(ShardedBatchSampler(11, 4, Context(rank=r, world=2), torch.Generator().manual_seed(3)))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(single) == 3
    for step, batch in enumerate(single):
        assert shares[0][step] + shares[1][step] == batch
    assert sorted(i for b in single for i in b) == list(range(11))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    root = make_wbc_tree(tmp_path / "data", per_class=4, val_per_class=2, size=(48, 48))
    common = ["--data-root", str(root), *ARGS]
    one = subprocess.run([sys.executable, "-m", "wbclib.cli", "train", *common, "--run-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "wbclib.cli", "train", *common, "--run-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert two.stdout.count("finished:") == 1  # rank 0 reports
    h1, h2 = (pd.read_csv(tmp_path / d / "history.csv") for d in ("one", "two"))
    assert len(h1) == len(h2) == 2
    # Same samples per step, averaged gradients: only BatchNorm's per-process statistics differ.
    for col in ("train_total", "train_mse", "train_ce", "val_total", "val_mse"):
        assert h2[col].to_numpy() == pytest.approx(h1[col].to_numpy(), rel=0.05), col
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and m2["val"]["n"] == 10
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoint.pt", "config.json", "embeddings.npz", "history.csv", "manifest.json", "metrics.json"])
