"""Faults and bad input through the real commands, each `wbc` run in a subprocess.

Kills land deterministically through the ``WBC_FAULT`` hook (see :mod:`wbclib.faults`): a process is SIGKILLed
at a named point, then resumed, and must end exactly where an uninterrupted run ends (on CPU). Bad data, bad
checkpoints, outputs inside a data folder, a second process on a busy folder, NaN losses and unavailable
devices must each give one ``wbc: error:`` line (or one listing), exit status 2, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_wbc_tree, write_image, write_mask
from wbclib.cli import main

TINY = ["--no-progress", "--set", "input_size=32", "--set", "resize=null", "--set", "base_width=4", "--set",
        "depth=2", "--set", "batch_size=4", "--set", "min_steps=0", "--set", "precision=fp32"]


def wbc(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run ``wbc ARGS`` as its own process (faults come through ``env``), one thread like the in-process runs."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WBC_FAULT")}
    full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "wbclib.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``wbc ARGS`` through its entry point in this process (cheap: no interpreter start, no torch import):
    exit status, stdout, stderr. An exception that ``wbc`` would show as a traceback fails the test."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(p, *fragments: str) -> str:
    """Assert the one-message refusal (a subprocess result or a ``cli`` triple): exit 2, one ``wbc: error:``
    and no traceback; return stderr."""
    code, out, err = (p.returncode, p.stdout, p.stderr) if hasattr(p, "returncode") else p
    assert code == 2, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err and err.count("wbc: error:") == 1, err[-3000:]
    for f in fragments:
        assert f in err, f"{f!r} not in:\n{err[-3000:]}"
    return err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Runs in this process use one thread, like the subprocesses: the same arithmetic, hence the same bits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tree_listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (hidden ones included) with its size and mtime."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def temp_files(folder: Path) -> list[str]:
    """Temporary files left in a folder: every name ending in .tmp, hidden or not."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_wbc_tree(tmp_path_factory.mktemp("data") / "root", per_class=4, val_per_class=2, size=(48, 48))


def train_args(root: Path, run: Path, epochs: int = 3, *extra) -> list:
    return ["train", "--data-root", root, "--run-dir", run, "--epochs", epochs, *TINY, *extra]


def outcome(run: Path) -> tuple[pd.DataFrame, dict, dict]:
    """What a run leaves that must not depend on interruptions: history (but its timings), metrics (but wall
    time) and the exported embeddings."""
    history = pd.read_csv(run / "history.csv").drop(columns="seconds")
    m = json.loads((run / "metrics.json").read_text())
    for key in ("wall_time_s", "timing_s"):
        m.pop(key)
    with np.load(run / "embeddings.npz") as z:
        emb = {k: z[k] for k in z.files}
    return history, m, emb


def assert_same_outcome(a: Path, b: Path) -> None:
    ha, ma, ea = outcome(a)
    hb, mb, eb = outcome(b)
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    assert ma == mb
    assert ea.keys() == eb.keys() and all(np.array_equal(ea[k], eb[k]) for k in ea)


@pytest.fixture(scope="module")
def uninterrupted(root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "r"
    assert main([str(a) for a in train_args(root, run)]) == 0
    return run


# -- 1. kill anywhere, resume exactly -----------------------------------------------------------------------

#: (fault, what the kill interrupts): three epochs of five steps, validated and checkpointed every epoch.
KILLS = [
    ("kill@step#7", "mid-epoch (epoch 2, step 2)"),
    ("kill@write:checkpoint.pt#2", "during epoch 2's checkpoint write"),
    ("kill@write:history.csv#1", "during epoch 1's history write"),
    ("kill@after-checkpoint#3", "between the last checkpoint and its history row"),
    ("kill@after-last-epoch", "after the last epoch, before the final evaluation"),
    ("kill@write:embeddings.npz", "during the embedding export"),
    ("kill@write:metrics.json", "during the metrics write"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault", [k for k, _ in KILLS], ids=[w for _, w in KILLS])
def test_sigkill_anywhere_then_resume_ends_exactly_like_an_uninterrupted_run(root, uninterrupted, tmp_path,
                                                                             fault):
    run = tmp_path / "r"  # the same directory name as the uninterrupted run's ("run" in metrics.json)
    p = wbc(*train_args(root, run), env={"WBC_FAULT": fault})
    assert p.returncode == -signal.SIGKILL, f"the fault did not fire: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert not (run / "metrics.json").exists()  # not finished: a study would not reuse it
    assert main([str(a) for a in train_args(root, run, 3, "--resume")]) == 0
    assert temp_files(run) == []
    assert_same_outcome(uninterrupted, run)


def wait_for(condition, what: str, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def lock_is_free(folder: Path) -> bool:
    import fcntl

    with open(folder / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def popen_wbc(*args, env: dict, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WBC_FAULT")}
    full_env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env})
    return subprocess.Popen([sys.executable, "-m", "wbclib.cli", *map(str, args)], env=full_env, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True)


# -- 3. concurrent use -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_train_on_a_busy_run_directory_is_refused_and_a_killed_holder_leaves_no_stale_lock(
        root, uninterrupted, tmp_path, capsys):
    run = tmp_path / "r"
    holder = popen_wbc(*train_args(root, run), env={"WBC_FAULT": "pause@after-checkpoint#1"})
    try:
        wait_for(lambda: (run / "checkpoint.pt").exists(), "the first checkpoint", proc=holder)
        refused(cli(capsys, *train_args(root, run, 3, "--resume")),
                f"run directory {run} is in use by pid {holder.pid} on ", "lock file")
    finally:
        holder.kill()
        holder.wait()
    assert main([str(a) for a in train_args(root, run, 3, "--resume")]) == 0  # the killed holder's lock is gone
    assert_same_outcome(uninterrupted, run)


# -- 1 and 3 through the study runner ---------------------------------------------------------------------------

STUDY_SET = ["--set", "epochs=2", "--set", "input_size=32", "--set", "resize=null", "--set", "base_width=4", "--set",
             "depth=2", "--set", "batch_size=4", "--set", "min_steps=0", "--set", "precision=fp32"]


@pytest.mark.slow
def test_killed_study_reruns_to_the_same_tables_and_a_second_study_on_its_runs_folder_is_refused(tmp_path,
                                                                                                capsys):
    """Two runs side by side; one finishes, the other is held right after its first checkpoint. A second study
    on the same runs folder is refused; the runner is SIGKILLed (its notebooks' processes go with it); the
    rerun reuses the finished run, resumes the other, and every number the tables are made of equals that of
    runs trained without interruption."""
    from wbclib import analysis, study
    from wbclib import config as cfg
    from wbclib.train import fit

    data = make_wbc_tree(tmp_path / "data", per_class=4, val_per_class=2, size=(48, 48), subsets=(1,))
    runs_dir = tmp_path / "runs"
    args = ["study", "--data-root", data, "--only", "wbc1-scratch-*", "--runs-dir", runs_dir, "--no-book",
            "--jobs", "2", *STUDY_SET]
    done, held = runs_dir / "wbc1-scratch-nomask-s0", runs_dir / "wbc1-scratch-mask-s0"
    runner = popen_wbc(*args, env={"WBC_FAULT": "pause@after-checkpoint#1", "WBC_FAULT_RUN": held.name})
    try:
        wait_for(lambda: study.notebook_complete(done / "train.ipynb") and (held / "checkpoint.pt").exists(),
                 "one run finished and the other checkpointed", proc=runner)
        refused(cli(capsys, *args), f"runs folder {runs_dir} is in use by pid {runner.pid} on ")
    finally:
        runner.kill()  # the runner only: what it started must end by itself
        runner.wait()
    wait_for(lambda: lock_is_free(held), "the killed study's notebook to end", timeout=30)
    assert not (held / "metrics.json").exists()

    p = wbc(*args)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    status = {line.split()[0]: line.split()[1] for line in p.stdout.splitlines() if line.startswith("  wbc1-")}
    assert status == {done.name: "reused", held.name: "finished"}, p.stdout
    assert "resume: continuing after epoch 1 of 2" in (held / "train.ipynb").read_text()
    assert temp_files(runs_dir) == []

    reference = tmp_path / "reference"  # the same configurations, trained without interruption
    overrides = dict(cfg.parse_assignment(s) for s in STUDY_SET[1::2])
    for job in study.select(study.grid([0]), "wbc1-scratch-*"):
        fit(study.job_config(job, "quick", str(data.resolve()), runs_dir, overrides), reference / job.id,
            progress=False, log=lambda s: None)
        assert_same_outcome(reference / job.id, runs_dir / job.id)
    tables = [analysis.load_runs(d).drop(columns=["minutes", "path"]) for d in (reference, runs_dir)]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    pd.testing.assert_frame_equal(*(analysis.table2(t) for t in tables))
