"""torch.distributed: two gloo processes on the CPU train the same model as one process with the same global
batch; rank 0 alone writes the run directory.

The comparison is made where it can fail: GroupNorm (no per-process batch statistics), fp32, a learning rate at
which six Adam steps move the weights by about 10^-2, and training images that every random flip leaves
unchanged (mirror-symmetric, as large as the crop), so one process and two draw different augmentation
numbers yet see the very same pixels. Then the final weights of one and two processes must agree within
10^-4 (they differ by about 2e-6, from the order of the sums), while training moves them by about 4e-2; a run
whose processes do not average their gradients ends about 7e-2 away and fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wbclib import WBC_CLASSES, WbcError
from wbclib.core import config as cfg
from wbclib.model.network import build_model
from wbclib.training import runs
from wbclib.training.distributed import Context, ShardedBatchSampler, local_batch_size
from wbclib.training.train import seed_everything

ARGS = ["--epochs", "2", "--no-progress", "--no-masks", "--set", "input_size=32", "--set", "resize=null",
        "--set", "base_width=4", "--set", "min_steps=0", "--set", "rot90=false", "--set", "color_jitter=0",
        "--set", "depth=2", "--set", "batch_size=8", "--set", "lr=1e-2", "--set", "grad_clip=0",
        "--set", "norm=group", "--set", "precision=fp32"]


def sampled(n: int, batch: int, world: int, seed: int = 3) -> list[list[list[int]]]:
    """Every process's batches of one epoch: ``[rank][step] -> indices``."""
    return [list(ShardedBatchSampler(n, batch, Context(rank=r, world=world), torch.Generator().manual_seed(seed)))
            for r in range(world)]


def test_shares_of_a_step_make_up_the_single_process_batch():
    single, = sampled(11, 4, 1)
    shares = sampled(11, 4, 2)
    assert len(shares[0]) == len(shares[1]) == len(single) == 3
    for step, batch in enumerate(single):
        assert shares[0][step] + shares[1][step] == batch
    assert sorted(i for b in single for i in b) == list(range(11))


@pytest.mark.parametrize("n,batch,world,steps", [
    (9, 4, 3, 2),  # last batch of 1 < 3 processes: dropped on every process
    (10, 4, 3, 2),  # last batch of 2 < 3: dropped
    (11, 4, 3, 3),  # last batch of 3: one image each
    (5, 4, 2, 1),  # last batch of 1 < 2: dropped
])
def test_a_last_batch_smaller_than_the_process_count_is_dropped_on_every_process(n, batch, world, steps):
    """Every process must take the same number of steps (a process with one step more waits forever for the
    others' gradients), and no process may get an empty share."""
    shares = sampled(n, batch, world)
    single, = sampled(n, batch, 1)
    for r, mine in enumerate(shares):
        assert len(mine) == steps == len(ShardedBatchSampler(n, batch, Context(rank=r, world=world),
                                                             torch.Generator()))
        assert all(len(share) >= 1 for share in mine)
    for step in range(steps):  # the kept steps are the single process's batches, split
        assert [i for r in range(world) for i in shares[r][step]] == single[step]
    if steps < len(single):
        assert len(single[-1]) < world  # what was dropped is exactly the too-small last batch


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    assert local_batch_size(8, Context(rank=1, world=2)) == 4
    assert local_batch_size(8, Context()) == 8
    with pytest.raises(WbcError, match=r"batch_size 6 .* not divisible by the 4 processes"):
        local_batch_size(6, Context(rank=0, world=4))


def symmetric_tree(root: Path, per_class: int = 4, val_per_class: int = 1, size: int = 32) -> Path:
    """A WBC tree of PNG images equal to their horizontal and vertical mirror images, ``size`` pixels square:
    the training crop (of the same size) and the random flips leave every image exactly as it is."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, cls in enumerate(WBC_CLASSES):
            for i in range(n):
                q = rng.integers(0, 256, (size // 2, size // 2, 3), dtype=np.uint8)
                q[..., c % 3] //= 2  # a little class signal
                half = np.concatenate([q, q[:, ::-1]], axis=1)
                img = np.concatenate([half, half[::-1]], axis=0)
                path = root / f"WBC_100/{split}/data/{cls}/{split}_{c}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img, "RGB").save(path)
    return root


def train(root: Path, run: Path, processes: int, extra=()) -> subprocess.CompletedProcess:
    launch = [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                        f"--nproc_per_node={processes}"]
    cmd = [sys.executable, *launch, "-m", "wbclib.cli", "train", "--data-root", str(root), *ARGS, *extra,
           "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = runs.load_checkpoint(run)["model"]
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    root = symmetric_tree(tmp_path / "data")  # 20 training images, global batch 8: steps of 8, 8 and 4 images
    one = train(root, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(root, tmp_path / "two", 2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert two.stdout.count("finished:") == 1  # rank 0 reports

    # Training moved the weights far: six Adam steps at lr 1e-2 (the largest change is about 4e-2).
    config = cfg.load(tmp_path / "one" / "config.json")
    seed_everything(config.seed)  # what `wbc train` does right before it builds the model
    w0 = {k: v.double() for k, v in build_model(config).state_dict().items() if v.is_floating_point()}
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    gap = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 2e-2, moved
    # One process and two agree to float rounding (the reduction order of the averaged gradients differs).
    assert gap < 1e-4, f"two processes end {gap:.2e} from one process (training moves weights {moved:.2e})"

    h1, h2 = (pd.read_csv(tmp_path / d / "history.csv") for d in ("one", "two"))
    assert len(h1) == len(h2) == 2
    for col in ("train_total", "train_mse", "train_ce", "val_total", "val_mse", "val_ce"):
        assert h2[col].to_numpy() == pytest.approx(h1[col].to_numpy(), rel=1e-4, abs=1e-6), col
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and m2["val"]["n"] == 5
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")) == sorted(
        ["checkpoint.pt", "config.json", "embeddings.npz", "history.csv", "manifest.json", "metrics.json"])


@pytest.mark.slow
def test_a_global_batch_the_processes_cannot_share_is_refused_in_one_line(tmp_path):
    root = symmetric_tree(tmp_path / "data", per_class=1)
    p = train(root, tmp_path / "r", 2, ["--set", "batch_size=5"])
    assert p.returncode != 0
    # each process says it in one line and exits 2 (torchrun then reports the failed processes its own way)
    assert p.stderr.count("wbc: error: batch_size 5 (the global batch) is not divisible by the 2 processes") >= 1
    assert "exitcode  : 2" in p.stderr and "wbclib/" not in p.stderr  # no traceback through the library
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
