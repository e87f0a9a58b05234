"""Faults and bad input through the real commands, each `wbc` run in a subprocess.

Kills land deterministically through the ``WBC_FAULT`` hook (see :mod:`wbclib.core.faults`): a process is SIGKILLed
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

from conftest import assert_same_outcome, comparable, make_wbc_tree, write_image, write_mask
from wbclib.cli import main
from wbclib.training.runs import load_checkpoint

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


@pytest.mark.slow
def test_sigkill_mid_epoch_with_two_loader_workers_then_resume_ends_exactly_alike(root, tmp_path):
    """Two loader processes draw the augmentation; they are re-seeded from the epoch, so a run killed in its
    seventh step (epoch 2) and resumed ends bit for bit where an uninterrupted run with the same workers ends."""
    workers = ("--set", "num_workers=2")
    full = tmp_path / "full" / "r"
    assert main([str(a) for a in train_args(root, full, 3, *workers)]) == 0
    assert json.loads((full / "manifest.json").read_text())["num_workers"] == 2
    run = tmp_path / "cut" / "r"
    p = wbc(*train_args(root, run, 3, *workers), env={"WBC_FAULT": "kill@step#7"})
    assert p.returncode == -signal.SIGKILL, f"the fault did not fire: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert load_checkpoint(run)["epoch"] == 1  # epoch 1 was saved; epoch 2 was cut short
    assert main([str(a) for a in train_args(root, run, 3, *workers, "--resume")]) == 0
    assert temp_files(run) == []
    assert_same_outcome(full, run)


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
    from wbclib.core import config as cfg
    from wbclib.results import analysis
    from wbclib.study import runner
    from wbclib.training import runs
    from wbclib.training.train import fit

    data = make_wbc_tree(tmp_path / "data", per_class=4, val_per_class=2, size=(48, 48), subsets=(1,))
    runs_dir = tmp_path / "runs"
    args = ["study", "--data-root", data, "--only", "wbc1-scratch-*", "--runs-dir", runs_dir, "--no-book",
            "--jobs", "2", *STUDY_SET]
    done, held = runs_dir / "wbc1-scratch-nomask-s0", runs_dir / "wbc1-scratch-mask-s0"
    proc = popen_wbc(*args, env={"WBC_FAULT": "pause@after-checkpoint#1", "WBC_FAULT_RUN": held.name})
    try:
        wait_for(lambda: runner.notebook_complete(done / "train.ipynb") and (held / "checkpoint.pt").exists(),
                 "one run finished and the other checkpointed", proc=proc)
        refused(cli(capsys, *args), f"runs folder {runs_dir} is in use by pid {proc.pid} on ")
    finally:
        proc.kill()  # the runner only: what it started must end by itself
        proc.wait()
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
    for job in runner.select(runner.grid([0]), "wbc1-scratch-*"):
        fit(runner.job_config(job, "quick", str(data.resolve()), runs_dir, overrides), reference / job.id,
            progress=False, log=lambda s: None)
        runs.write_structure(reference / job.id, job.structure)  # what the study records beside each run
        assert_same_outcome(reference / job.id, runs_dir / job.id)
    tables = [analysis.load_runs(d).drop(columns=["minutes", "path"]) for d in (reference, runs_dir)]
    pd.testing.assert_frame_equal(*tables, check_exact=True)
    pd.testing.assert_frame_equal(*(analysis.table2(t) for t in tables))


# -- 2. never write into data --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(root, tmp_path_factory) -> Path:
    """A finished one-epoch run (five steps): a model to apply, for the tests that are not about training."""
    run = tmp_path_factory.mktemp("model") / "r"
    assert main([str(a) for a in train_args(root, run, 1)]) == 0
    return run


def test_every_writing_command_refuses_an_output_inside_a_data_folder_it_reads(root, model_dir, tmp_path,
                                                                               capsys):
    from wbclib.data.datasets import EMBEDDED

    before = tree_listing(root)
    val = root / "WBC_100" / "val" / "data"
    cases = [
        (["train", "--data-root", root, "--run-dir", root / "runs" / "x", *TINY], root),
        (["train", "--run-dir", EMBEDDED / "runs" / "x", *TINY], EMBEDDED),  # the default data: embedded/
        (["study", "--data-root", root, "--runs-dir", root / "runs", "--only", "wbc1-scratch-nomask-s0"], root),
        (["study", "--data-root", tmp_path / "elsewhere", "--runs-dir", val / "runs", "--external", val,
          "--only", "wbc1-scratch-nomask-s0"], val),
        (["study", "--data-root", root, "--runs-dir", tmp_path / "runs", "--book-root", root / "book",
          "--only", "wbc1-scratch-nomask-s0"], root),
        (["evaluate", "--checkpoint", model_dir, "--data", val, "--out", val / "eval"], val),
        (["predict", "--checkpoint", model_dir, val, "--out", val / "predictions"], val),
        (["predict", "--checkpoint", model_dir, next((val / "Basophil").iterdir()), "--out", val / "Basophil"],
         val / "Basophil"),
        (["prepare", "folders", "--from", val, "--out", val / "course"], val),
        (["book", "--book-root", EMBEDDED / "book"], EMBEDDED),
    ]
    for args, data in cases:
        err = refused(cli(capsys, *args), f" is inside the data folder {data}" if args[0] != "prepare" else
                      f"lies inside the source folder {data}")
        assert "nothing is ever written inside a data folder" in err or args[0] == "prepare", err
    assert tree_listing(root) == before
    assert not (EMBEDDED / "runs").exists() and not (EMBEDDED / "book").exists()


def test_predict_never_reads_its_own_output(root, model_dir, tmp_path, capsys):
    cells = root / "WBC_100" / "val" / "data" / "Monocyte"
    code, _, err = cli(capsys, "predict", "--checkpoint", model_dir, cells, "--out", tmp_path / "first")
    assert code == 0, err
    assert len(list((tmp_path / "first").glob("*.png"))) == len(list(cells.iterdir()))
    refused(cli(capsys, "predict", "--checkpoint", model_dir, tmp_path, "--out", tmp_path.parent / "second"),
            f"{tmp_path / 'first'} holds the output of an earlier wbc predict")
    refused(cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "empty"), "not found")
    (tmp_path / "empty").mkdir()
    refused(cli(capsys, "predict", "--checkpoint", model_dir, tmp_path / "empty"), "no image found in")


# -- 4. bad checkpoints ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_checkpoints(model_dir, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each bad checkpoint and a fragment of the message it must give."""
    from wbclib.core import config as cfg
    from wbclib.model.network import MultiTaskUNet

    d = tmp_path_factory.mktemp("checkpoints")
    good = (model_dir / "checkpoint.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    (d / "zero.pt").write_bytes(b"")
    (d / "text.pt").write_text("epoch,loss\n1,0.5\n")
    write_image(d / "image.pt", fmt="PNG")

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model": {}, "payload": Payload()}, d / "code.pt")
    tiny = dict(input_size=32, resize=None, base_width=4, depth=2)
    cam = cfg.from_profile("quick", dataset="cam16", **tiny)
    torch.save({"model": MultiTaskUNet(2, 4, 2).state_dict(), "config": cam.to_dict()}, d / "cam16.pt")
    prcc = cfg.from_profile("quick", dataset="prcc", masks=False, **tiny)
    torch.save({"model": MultiTaskUNet(1, 4, 2).state_dict(), "config": prcc.to_dict()}, d / "prcc.pt")
    paper = cfg.from_profile("paper", base_width=8)  # the paper profile's network, at a width the test can afford
    torch.save({"model": MultiTaskUNet(5, 8, 4).state_dict(), "config": paper.to_dict()}, d / "paper.pt")
    torch.save(MultiTaskUNet(5, 8, 4).state_dict(), d / "bare-paper.pt")  # weights alone: no wbc command writes it
    torch.save({"model": MultiTaskUNet(5, 8, 4).state_dict(), "config": cfg.from_profile("quick").to_dict()},
               d / "mismatched.pt")  # a config of another network than its weights
    return {
        "truncated": (d / "truncated.pt", "truncated, damaged or not a PyTorch checkpoint"),
        "zero-byte": (d / "zero.pt", "it is empty (0 bytes)"),
        "text file": (d / "text.pt", "not a PyTorch checkpoint"),
        "image file": (d / "image.pt", "not a PyTorch checkpoint"),
        "pickle needing code": (d / "code.pt", "needs arbitrary code to unpickle"),
        "missing": (d / "missing.pt", "checkpoint not found"),
    }, d


def test_bad_checkpoints_give_one_message_each_to_evaluate_predict_and_init(root, bad_checkpoints, tmp_path,
                                                                            capsys):
    bad, _ = bad_checkpoints
    val = root / "WBC_100" / "val" / "data"
    for name, (path, message) in bad.items():
        for args in (["evaluate", "--checkpoint", path, "--data", val, "--out", tmp_path / "eval"],
                     ["predict", "--checkpoint", path, val / "Basophil"],
                     ["train", "--data-root", root, "--run-dir", tmp_path / "run", "--init", path, *TINY]):
            err = refused(cli(capsys, *args), str(path), message)
            assert err.count("\n") == 1, (name, args[0], err)  # one line
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run").exists()


def test_a_model_of_another_task_or_network_is_refused(root, bad_checkpoints, tmp_path, capsys):
    _, d = bad_checkpoints
    val = root / "WBC_100" / "val" / "data"
    refused(cli(capsys, "evaluate", "--checkpoint", d / "cam16.pt", "--data", val, "--out", tmp_path / "e"),
            "is a cam16 model (classes normal, tumor), but the class folders of", "Basophil")
    refused(cli(capsys, "evaluate", "--checkpoint", d / "prcc.pt", "--data", val, "--out", tmp_path / "e"),
            "is a prcc model (reconstruction only, no classifier)")
    refused(cli(capsys, "predict", "--checkpoint", d / "prcc.pt", val), "no classifier")
    refused(cli(capsys, "train", "--data-root", root, "--run-dir", tmp_path / "r", "--init", d / "paper.pt", *TINY),
            "none of its encoder weights fit this run's network", "paper profile, wbc, 5 classes, base width 8, "
            "depth 4", "quick profile, wbc, 5 classes, base width 4, depth 2")
    refused(cli(capsys, "evaluate", "--checkpoint", d / "bare-paper.pt", "--data", val, "--out", tmp_path / "e"),
            "is not a wbc checkpoint (no 'model' weights)")
    refused(cli(capsys, "evaluate", "--checkpoint", d / "mismatched.pt", "--data", val, "--out", tmp_path / "e"),
            "its weights do not fit the network its config describes", "quick profile, wbc, 5 classes, base width 16")
    assert not (tmp_path / "e").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_truncated_checkpoint_through_a_real_process(root, bad_checkpoints, tmp_path):
    bad, _ = bad_checkpoints
    path = bad["truncated"][0]
    refused(wbc("evaluate", "--checkpoint", path, "--data", root / "WBC_100" / "val", "--out", tmp_path / "e"),
            f"cannot read checkpoint {path}: truncated")


# -- 5. bad data at the command line, for the three layouts ------------------------------------------------------

def odd_but_valid_images(folder: Path) -> list[Path]:
    """Images that are not 8-bit RGB but are cells all the same: each is read as RGB."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), "RGB")
    rgb.convert("L").save(folder / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(48)[None, :] < 24, 0, 255).astype(np.uint8).repeat(48, 0)))
    rgba.save(folder / "transparent.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (48, 48))).astype(np.uint16)).save(folder / "sixteen.png")
    return [folder / n for n in ("gray.png", "transparent.png", "cmyk.jpg", "sixteen.png")]


def plant_bad_files(data_dir: Path, mask_dir: Path | None, cls: str, other: str) -> dict[Path, str]:
    """Broken files under ``data_dir/<cls>`` (and ``mask_dir``); returns each with the reason it must be named."""
    d = data_dir / cls
    (d / "zero.jpg").write_bytes(b"")
    good = next(p for p in sorted(d.iterdir()) if p.suffix == ".jpg" and p.stat().st_size > 0)
    (d / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (d / "notes.jpg").write_text("not an image\n")
    write_image(data_dir / "Platelet" / "p.jpg", (48, 48))
    bad = {d / "zero.jpg": "zero-byte file", d / "truncated.jpg": "unreadable or truncated image",
           d / "notes.jpg": "unreadable or truncated image", data_dir / "Platelet": "unknown class folder"}
    if mask_dir is not None:
        write_mask(mask_dir / "Erythroblast" / "e.jpg", (48, 48))
        write_mask(mask_dir / cls / "orphan.jpg", (48, 48))
        small = next(p for p in sorted((data_dir / other).iterdir()) if p.suffix == ".jpg")
        write_mask(mask_dir / other / small.name, (40, 40))
        bad.update({mask_dir / "Erythroblast": "unknown class folder", mask_dir / cls / "orphan.jpg":
                    "mask without image", mask_dir / other / small.name: "mask size differs"})
    return bad


def assert_listed(err: str, bad: dict[Path, str], fine: list[Path]) -> None:
    for path, why in bad.items():
        assert f"  {path}: {why}" in err, f"{path} ({why}) not listed:\n{err}"
    for path in fine:
        assert str(path) not in err, f"{path} is a valid image but was listed:\n{err}"
    assert "expected layout:" in err and "pass --skip-bad" in err


def test_bad_wbc_data_is_listed_in_one_message_and_nothing_is_written(tmp_path, capsys):
    root = make_wbc_tree(tmp_path / "root", per_class=3, size=(48, 48))
    train = root / "WBC_100" / "train"
    bad = plant_bad_files(train / "data", train / "mask", "Basophil", "Eosinophil")
    fine = odd_but_valid_images(train / "data" / "Monocyte")
    before = tree_listing(root)
    err = refused(cli(capsys, "train", "--data-root", root, "--run-dir", tmp_path / "run", *TINY),
                  f"7 problem(s) in {train / 'data'}")
    assert_listed(err, bad, fine)
    assert tree_listing(root) == before and not (tmp_path / "run").exists()


def test_bad_cam16_data_is_listed_in_one_message(tmp_path, capsys):
    base = tmp_path / "root" / "CAM16_100cls_10mask"
    for split in ("train", "val", "test"):
        for c, cls in enumerate(("normal", "tumor")):
            for i in range(2):
                write_image(base / split / "data" / cls / f"{split}_{c}_{i}.jpg", (48, 48), seed=c * 10 + i)
    write_mask(base / "train" / "mask" / "tumor" / "train_1_0.jpg", (48, 48))
    bad = plant_bad_files(base / "train" / "data", base / "train" / "mask", "normal", "tumor")
    fine = odd_but_valid_images(base / "train" / "data" / "tumor")
    before = tree_listing(tmp_path / "root")
    err = refused(cli(capsys, "train", "--dataset", "cam16", "--data-root", tmp_path / "root", "--run-dir",
                      tmp_path / "run", *TINY), "CAM16_100cls_10mask/{train,val,test}/data/{normal,tumor}")
    assert_listed(err, {p: w.replace("unknown class folder", "unknown class folder: expected one of normal, tumor")
                        for p, w in bad.items()}, fine)
    assert tree_listing(tmp_path / "root") == before and not (tmp_path / "run").exists()


def test_bad_prcc_data_is_listed_in_one_message(tmp_path, capsys):
    base = tmp_path / "root" / "pRCC_nolabel"
    for i in range(12):
        write_image(base / f"slide{i % 2}" / f"tile_{i:02d}.jpg", (48, 48), seed=i)
    (base / "slide0" / "tile_00.jpg").write_bytes(b"")
    (base / "slide0" / "tile_02.jpg").write_bytes((base / "slide0" / "tile_04.jpg").read_bytes()[:300])
    (base / "slide1" / "notes.txt").write_text("tiles of two slides\n")
    odd_but_valid_images(base / "odd")
    before = tree_listing(tmp_path / "root")
    err = refused(cli(capsys, "train", "--dataset", "prcc", "--data-root", tmp_path / "root", "--run-dir",
                      tmp_path / "run", *TINY), "pRCC_nolabel/**/<name>.jpg")
    assert f"{base / 'slide0' / 'tile_00.jpg'}: zero-byte file" in err
    assert f"{base / 'slide0' / 'tile_02.jpg'}: unreadable or truncated image" in err
    assert f"{base / 'slide1' / 'notes.txt'}: not an image" in err
    assert "odd" not in err
    assert tree_listing(tmp_path / "root") == before and not (tmp_path / "run").exists()


def test_missing_root_missing_split_and_empty_split_for_each_layout(tmp_path, capsys):
    from wbclib import WBC_CLASSES

    missing, run = tmp_path / "nowhere", tmp_path / "out" / "r"
    (tmp_path / "data").mkdir()
    for dataset, layout in (("wbc", "WBC_<n>/train/data/<Class>"), ("cam16", "CAM16_100cls_10mask/"),
                            ("prcc", "pRCC_nolabel/")):
        refused(cli(capsys, "train", "--dataset", dataset, "--data-root", missing, "--run-dir", run, *TINY),
                f"data root not found: {missing} does not exist", layout)
        refused(cli(capsys, "train", "--dataset", dataset, "--data-root", tmp_path / "data", "--run-dir", run,
                    *TINY), "not found", layout)
    empty = make_wbc_tree(tmp_path / "empty", per_class=1)
    for cls in WBC_CLASSES:
        for f in (empty / "WBC_100" / "val" / "data" / cls).iterdir():
            f.unlink()
    refused(cli(capsys, "train", "--data-root", empty, "--run-dir", run, *TINY),
            f"empty split: no usable image in {empty / 'WBC_100' / 'val' / 'data'} (WBC_100 val)")
    (tmp_path / "data" / "pRCC_nolabel").mkdir()
    refused(cli(capsys, "train", "--dataset", "prcc", "--data-root", tmp_path / "data", "--run-dir", run, *TINY),
            "empty split: no usable image in")
    assert not run.parent.exists()


def test_odd_image_modes_are_read_as_rgb_cells(tmp_path):
    from wbclib.data import images

    gray, transparent, cmyk, sixteen = odd_but_valid_images(tmp_path)
    for path in (gray, transparent, cmyk, sixteen):
        img = images.open_image(path)
        assert img.mode == "RGB" and img.size == (48, 48), path
    assert np.all(np.asarray(images.open_image(transparent))[:, :24] == 255)  # transparent: white, not black
    assert np.asarray(images.open_image(sixteen)).max() > 0


def test_skip_bad_drops_bad_files_keeps_the_image_of_a_bad_mask_and_trains(tmp_path, capsys):
    root = make_wbc_tree(tmp_path / "root", per_class=4, val_per_class=2, size=(48, 48))
    train = root / "WBC_100" / "train"
    masked = train / "mask" / "Lymphocyte" / "img_2_0.jpg"
    masked.write_bytes(masked.read_bytes()[:120])  # a truncated mask: the image stays, without a mask
    (train / "data" / "Neutrophil" / "broken.jpg").write_bytes(b"")
    odd_but_valid_images(train / "data" / "Monocyte")
    before = tree_listing(root)
    code, out, err = cli(capsys, "train", "--data-root", root, "--run-dir", tmp_path / "run", "--skip-bad",
                         "--epochs", 1, *TINY)
    assert code == 0, err
    assert f"wbc: skipping 2 bad file(s) under {train / 'data'}" in err
    assert "data: 24 training images (4 with masks)" in out  # 20 + 4 odd-mode images; 5 masks less the bad one
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data_fingerprint"]["files"] == 24 + 4 + 10
    assert tree_listing(root) == before


# -- 6. numerical faults -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fault,where", [
    ("nan@train-loss#7", "loss became nan at epoch 2, step 2 (component: mse)"),
    ("inf@train-loss#12", "loss became inf at epoch 3, step 2 (component: mse)"),
    ("nan@val-loss#4", "loss became nan at epoch 2, validation batch 1 (component: mse)"),
    ("inf@val-loss#9", "loss became inf at epoch 3, validation batch 3 (component: mse)"),
])
def test_a_nan_or_inf_loss_stops_the_run_keeps_the_last_good_checkpoint_and_resume_works(
        root, uninterrupted, tmp_path, capsys, monkeypatch, fault, where):
    from wbclib.training import runs

    run = tmp_path / "r"
    monkeypatch.setenv("WBC_FAULT", fault)
    refused(cli(capsys, *train_args(root, run)), where, "the last good checkpoint is kept")
    monkeypatch.delenv("WBC_FAULT")
    last_good = int(where.split("epoch ")[1][0]) - 1
    state = runs.load_checkpoint(run)
    assert state["epoch"] == last_good and len(pd.read_csv(run / "history.csv")) == last_good
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run / "metrics.json").exists()
    code, out, err = cli(capsys, *train_args(root, run, 3, "--resume"))
    assert code == 0 and f"resume: continuing after epoch {last_good} of 3" in out, err
    assert_same_outcome(uninterrupted, run)  # the fault was injected: the resumed run is the uninterrupted one


# -- 7. devices ----------------------------------------------------------------------------------------------------

def test_unavailable_devices_are_refused_with_one_message(root, tmp_path, capsys, monkeypatch):
    import torch.cuda

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "r"
    for device in ("cuda", "cuda:7"):
        refused(cli(capsys, *train_args(root, run, 1, "--device", device)),
                f"device '{device}' requested but CUDA is not available on this machine")
    refused(cli(capsys, *train_args(root, run, 1, "--device", "tpu")), "device 'tpu'", "use auto, cpu, cuda or cuda:N")
    refused(cli(capsys, *train_args(root, run, 1, "--device", "cuda:x")), "unknown device 'cuda:x'")
    assert not run.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    refused(cli(capsys, *train_args(root, run, 1, "--device", "cuda:7")),
            "device 'cuda:7' requested but this machine has 1 CUDA device(s): cuda:0")
    assert not run.exists()


def test_bf16_on_a_cpu_without_native_bf16_trains_and_says_it_is_emulated(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WBC_FAULT", "pretend@cpu-without-bf16")
    code, out, err = cli(capsys, *train_args(root, tmp_path / "r", 1, "--precision", "bf16"))
    assert code == 0, err
    assert "note: precision bf16 on a CPU without native bf16" in out and "emulates it" in out
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["precision"] == "bf16"
    code, out, _ = cli(capsys, *train_args(root, tmp_path / "auto", 1, "--set", "precision=auto"))
    assert code == 0 and "note: precision bf16" not in out
    assert json.loads((tmp_path / "auto" / "manifest.json").read_text())["precision"] == "fp32"


@pytest.mark.slow
def test_cuda_on_a_machine_without_it_through_a_real_process(root, tmp_path):
    import torch.cuda

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(wbc(*train_args(root, tmp_path / "r", 1, "--device", "cuda")), "CUDA is not available")
    assert not (tmp_path / "r").exists()


def test_a_run_whose_notebook_did_not_complete_is_executed_again_not_reused(tmp_path):
    """A study killed after a run's metrics.json but before papermill saved its executed notebook must not
    publish the half-executed notebook: the run is executed again (which retrains nothing)."""
    from wbclib.core import storage
    from wbclib.study import runner

    job = runner.Job("wbc1-scratch-mask-s0", {"dataset": "wbc", "subset": 1, "masks": True, "seed": 0})
    config = runner.job_config(job, "quick", None, tmp_path, {})
    run_dir = tmp_path / job.id
    storage.write_atomic(run_dir / "config.json", config.to_json())
    storage.write_json(run_dir / "metrics.json", {"accuracy": 0.5})
    job.notebook = run_dir / "train.ipynb"
    for papermill, reused in (({"start_time": "t0", "end_time": None}, False), (None, False),
                              ({"start_time": "t0", "end_time": "t1", "exception": None}, True)):
        job.status = "pending"
        job.notebook.write_text(json.dumps({"cells": [], "metadata": {"papermill": papermill} if papermill else {}}))
        assert runner._decide(job, {}, config, run_dir) is not reused and (job.status == "reused") is reused
    job.notebook.write_text('{"cells": [')  # a notebook cut short by the kill
    assert runner._decide(job, {}, config, run_dir)


# -- 1 with loader worker processes ----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_epoch_with_two_loader_workers_then_resume_ends_exactly_like_an_uninterrupted_run(
        root, uninterrupted, tmp_path):
    """Worker processes (what a CPU run uses on large images) are re-seeded from the epoch every epoch: a run
    killed with its workers mid-epoch and resumed ends exactly where an uninterrupted run with them ends."""
    workers = ["--set", "num_workers=2"]
    full = tmp_path / "full" / "r"
    assert main([str(a) for a in train_args(root, full, 3, *workers)]) == 0
    run = tmp_path / "cut" / "r"
    p = wbc(*train_args(root, run, 3, *workers), env={"WBC_FAULT": "kill@step#7"})
    assert p.returncode == -signal.SIGKILL, f"the fault did not fire: exit {p.returncode}\n{p.stderr[-2000:]}"
    assert main([str(a) for a in train_args(root, run, 3, "--resume", *workers)]) == 0
    assert json.loads((run / "manifest.json").read_text())["num_workers"] == 2
    assert_same_outcome(full, run)
    assert not comparable(run)[0].equals(comparable(uninterrupted)[0])  # the workers drew the augmentations
