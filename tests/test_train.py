"""The training engine: determinism, exact resume, atomic checkpoints, NaN stops, head swap, safe loading."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import Killed, assert_same_outcome, comparable, killed_at, make_wbc_tree
from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.data import datasets
from wbclib.model.losses import LOSS_PARTS
from wbclib.model.network import MultiTaskUNet
from wbclib.training import inference, runs, runtime, train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_wbc_tree(tmp_path_factory.mktemp("data") / "root", per_class=4, val_per_class=2, size=(48, 48))


def tiny(root, **kw):
    base = dict(data_root=str(root), input_size=32, resize=None, base_width=4, depth=2, batch_size=4, epochs=3,
                lr=1e-2, min_steps=0)
    return cfg.from_profile("quick", **{**base, **kw})


@pytest.mark.slow
def test_run_directory_contents(root, tmp_path):
    m = train.fit(tiny(root), tmp_path / "r", progress=False, log=lambda s: None)
    for name in ("config.json", "history.csv", "metrics.json", "manifest.json", "checkpoint.pt", "embeddings.npz"):
        assert (tmp_path / "r" / name).is_file(), name
    h = pd.read_csv(tmp_path / "r" / "history.csv")
    assert list(h.columns) == train.HISTORY_COLUMNS and len(h) == 3
    assert cfg.load(tmp_path / "r" / "config.json") == tiny(root)
    assert set(m["val"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "majority_baseline",
                             "psnr", "per_class"}
    assert m["train_masks"]["n"] == 5 and 0 <= m["train_masks"]["dice"] <= 1
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["device"] == "cpu" and man["data_fingerprint"]["files"] == 20 + 5 + 10
    assert len(man["data_fingerprint"]["sha256"]) == 64 and man["packages"]["torch"]
    import numpy as np
    z = np.load(tmp_path / "r" / "embeddings.npz")
    assert z["embedding"].shape == (10, 8) and z["label"].shape == (10,) and len(z["path"]) == 10


@pytest.mark.slow
def test_same_seed_same_numbers_and_other_seed_differs(root, tmp_path):
    quiet = dict(progress=False, log=lambda s: None)
    train.fit(tiny(root), tmp_path / "a", **quiet)
    train.fit(tiny(root), tmp_path / "b", **quiet)
    train.fit(tiny(root, seed=1), tmp_path / "c", **quiet)
    assert_same_outcome(tmp_path / "a", tmp_path / "b")
    assert not comparable(tmp_path / "a")[0].equals(comparable(tmp_path / "c")[0])


@pytest.mark.slow
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(root, tmp_path):
    config = tiny(root, epochs=4)
    train.fit(config, tmp_path / "full", progress=False, log=lambda s: None)

    with pytest.raises(Killed):
        train.fit(config, tmp_path / "cut", progress=False, log=killed_at("epoch 2/"))
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert runs.load_checkpoint(tmp_path / "cut")["epoch"] == 2
    lines = []
    train.fit(config, tmp_path / "cut", resume=True, progress=False, log=lines.append)
    assert any("resume: continuing after epoch 2" in s for s in lines)
    assert_same_outcome(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_small_sets_train_min_steps_validating_at_a_cadence_and_resume_exactly(root, tmp_path):
    """20 images at batch 4 are 5 steps an epoch: min_steps=20 trains 4 epochs instead of 2, validates (and
    checkpoints) every 2nd epoch, and a run killed after its first validation resumes to the same end."""
    config = tiny(root, epochs=2, min_steps=20)
    m = train.fit(config, tmp_path / "full", progress=False, log=lambda s: None)
    h = pd.read_csv(tmp_path / "full" / "history.csv")
    assert m["epochs"] == 4 and list(h["epoch"]) == [1, 2, 3, 4]
    assert list(h["val_total"].notna()) == [False, True, False, True]

    with pytest.raises(Killed):  # after the first validation
        train.fit(config, tmp_path / "cut", progress=False, log=killed_at("epoch 2/4"))
    assert runs.load_checkpoint(tmp_path / "cut")["epoch"] == 2
    train.fit(config, tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    assert_same_outcome(tmp_path / "full", tmp_path / "cut")


def test_resume_refuses_a_different_config(root, tmp_path):
    train.fit(tiny(root, epochs=1), tmp_path / "r", progress=False, log=lambda s: None)
    with pytest.raises(WbcError, match="different config"):
        train.fit(tiny(root, epochs=2), tmp_path / "r", resume=True, progress=False, log=lambda s: None)


def test_nan_loss_stops_with_epoch_step_and_component_and_keeps_the_checkpoint(root, tmp_path, monkeypatch):
    real = train.MultiTaskLoss

    class Poisoned(real):
        calls = 0

        def forward(self, *args):
            parts = super().forward(*args)
            Poisoned.calls += 1
            if Poisoned.calls == 10:  # epoch 2, step 2 (an epoch is 5 training + 3 validation batches)
                return parts._replace(ce=parts.ce * float("nan"), total=parts.total * float("nan"))
            return parts

    monkeypatch.setattr(train, "MultiTaskLoss", Poisoned)
    with pytest.raises(inference.TrainingDiverged, match=r"epoch 2, step 2 \(component: ce\)"):
        train.fit(tiny(root), tmp_path / "r", progress=False, log=lambda s: None)
    state = runs.load_checkpoint(tmp_path / "r")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_pretrained_start_records_loaded_and_skipped_keys(root, tmp_path):
    cam = tiny(root, epochs=1)
    train.fit(cam, tmp_path / "src", progress=False, log=lambda s: None)
    # reload as a 2-class checkpoint to exercise the head swap 2 -> 5 classes
    state = runs.load_checkpoint(tmp_path / "src")
    model2 = MultiTaskUNet(2, 4, 2)
    state["model"] = model2.state_dict()
    torch.save(state, tmp_path / "two.pt")
    lines = []
    train.fit(tiny(root, epochs=1, init=str(tmp_path / "two.pt")), tmp_path / "dst", progress=False,
              log=lines.append)
    man = json.loads((tmp_path / "dst" / "manifest.json").read_text())
    skipped = {s.split(" ")[0] for s in man["init"]["skipped"]}
    assert skipped == {"classifier.fc.weight", "classifier.fc.bias", "mask_head.weight", "mask_head.bias"}
    assert man["init"]["loaded"] == len(model2.state_dict()) - 4
    assert any(s.startswith("init:") for s in lines)


def test_checkpoint_needing_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WbcError, match=r"refusing to load .*evil\.pt"):
        runs.load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("precision,channels_last", [("bf16", True), ("fp32", False)])
def test_precision_and_memory_format_switches(root, tmp_path, precision, channels_last):
    """The speed defaults (bf16 autocast, channels_last) and their off switches both train, on the CPU too."""
    m = train.fit(tiny(root, epochs=1, channels_last=channels_last, precision=precision), tmp_path / "r",
                  progress=False, log=lambda s: None)
    assert m["val"]["n"] == 10 and 0 <= m["val"]["accuracy"] <= 1
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["precision"] == precision and man["channels_last"] is channels_last


def test_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.Runtime.from_config(cfg.from_profile("quick")).amp_dtype is None
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.Runtime.from_config(cfg.from_profile("quick")).amp_dtype == torch.bfloat16


@pytest.mark.slow
def test_torch_compile_path_trains_on_the_cpu(root, tmp_path):
    m = train.fit(tiny(root, epochs=1, compile=True), tmp_path / "r", progress=False, log=lambda s: None)
    assert m["val"]["n"] == 10
    state = runs.load_checkpoint(tmp_path / "r")
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # saved from the uncompiled module


def test_set_resize_none_trains_at_native_resolution(tmp_path):
    """``--set resize=none`` reaches the data pipeline: a 1-pixel checkerboard survives the centre crop only
    when nothing rescales it (resize=96 blends its pixels)."""
    from PIL import Image

    from wbclib import WBC_CLASSES
    from wbclib.cli import config_from_args, parser

    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    for split in ("WBC_100/train/data", "WBC_100/val/data"):
        for cls in WBC_CLASSES:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.stack([board] * 3, -1)).save(tmp_path / split / cls / "a.png")
    argv = ["train", "--data-root", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--set", "input_size=32"]
    native = config_from_args(parser().parse_args([*argv, "--set", "resize=none"]))
    scaled = config_from_args(parser().parse_args(argv))
    assert native.resize is None and scaled.resize == 96
    crop = datasets.build_splits(native, tmp_path).val[0]["image"]
    assert crop.shape == (3, 32, 32) and set(crop.unique().tolist()) == {0.0, 1.0}
    blended = datasets.build_splits(scaled, tmp_path).val[0]["image"]
    assert len(blended.unique()) > 2


def test_a_cpu_run_loads_in_worker_processes_only_when_decoding_large_images_holds_it_up(tmp_path):
    """Stored images many times the network's input (full-size PBC: 360 px for a 96-px resize) are decoded in a
    worker per spare thread; images at the input's size (the embedded cells) load in the training process."""
    large = make_wbc_tree(tmp_path / "large", per_class=1, val_per_class=1, size=(200, 200))
    config = tiny(large, resize=48, epochs=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert runtime.cpu_loader_workers(config, datasets.build_splits(config, large).train) == 1
        assert runtime.cpu_loader_workers(config.replace(resize=150), datasets.build_splits(config, large).train) == 0
        lines = []
        train.fit(config, tmp_path / "r", progress=False, log=lines.append)
        assert any(s.startswith("loader: 1 worker process,") for s in lines), lines
        assert json.loads((tmp_path / "r" / "manifest.json").read_text())["num_workers"] == 1
        torch.set_num_threads(1)  # no spare thread (a study's slot on two cores): no worker
        assert runtime.cpu_loader_workers(config, datasets.build_splits(config, large).train) == 0
    finally:
        torch.set_num_threads(threads)


def test_history_csv_refuses_a_column_it_does_not_have(tmp_path):
    row = {"epoch": 1, "lr": 1e-3, **{f"train_{k}": 0.5 for k in LOSS_PARTS}, "seconds": 2.0}
    train.write_history(tmp_path / "history.csv", [row])
    assert list(pd.read_csv(tmp_path / "history.csv").columns) == train.HISTORY_COLUMNS
    with pytest.raises(ValueError, match=r"history\.csv has no column for train_new_term"):
        train.write_history(tmp_path / "history.csv", [{**row, "train_new_term": 0.1}])  # never dropped silently
    assert "new_term" not in (tmp_path / "history.csv").read_text()


def test_every_loss_part_has_its_history_columns():
    assert [c for c in train.HISTORY_COLUMNS if c.startswith("train_")] == [f"train_{k}" for k in LOSS_PARTS]
    assert [c for c in train.HISTORY_COLUMNS if c.startswith("val_") and c != "val_accuracy"] == \
        [f"val_{k}" for k in LOSS_PARTS]

