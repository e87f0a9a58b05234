"""The domain-shift switches: GroupNorm (norm=group), AdaBN (wbc evaluate --adabn), hue and zoom augmentation,
the opt-in shift-* runs of the study and the helpers of the book's chapter."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from conftest import make_wbc_tree, write_image
from wbclib import cli
from wbclib.core import config as cfg
from wbclib.core import grid
from wbclib.data import datasets, transforms
from wbclib.model.network import MultiTaskUNet, build_model
from wbclib.results import adabn, evaluate, shift
from wbclib.study import book, runner
from wbclib.training import runs, train

TINY = dict(input_size=32, resize=None, base_width=4, depth=2, batch_size=4, epochs=1, min_steps=0)


# -- norm=group -------------------------------------------------------------------------------------------

def test_group_norm_model_has_group_norm_layers_only_and_the_same_outputs():
    bn = build_model(cfg.from_profile("quick"))
    gn = build_model(cfg.from_profile("quick", norm="group"))
    assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())
    norms = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == len(adabn.batchnorm_layers(bn)) == 20 and not adabn.batchnorm_layers(gn)
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups == math.gcd(8, m.num_channels) for m in norms)
    gn.eval()
    out = gn(torch.rand(2, 3, 64, 64))
    assert out.class_logits.shape == (2, 5) and out.reconstruction.shape == (2, 3, 64, 64)
    assert out.mask_logits.shape == (2, 5, 64, 64) and out.embedding.shape == (2, 128)
    # GroupNorm normalises each image alone: an image's output does not depend on the rest of the batch.
    x = torch.rand(3, 3, 32, 32)
    small = MultiTaskUNet(5, 4, 2, norm="group").train()
    assert torch.allclose(small(x).class_logits[:1], small(x[:1]).class_logits, atol=1e-5)
    with pytest.raises(ValueError, match="norm must be one of"):
        MultiTaskUNet(norm="layer")


def test_new_fields_round_trip_and_are_validated(tmp_path):
    c = cfg.from_profile("quick", norm="group", hue_jitter=0.1, zoom=(1.0, 3.0))
    assert c.zoom == [1.0, 3.0]
    (tmp_path / "config.json").write_text(c.to_json())
    assert cfg.load(tmp_path / "config.json") == c
    assert cfg.from_profile("paper").norm == "batch" and cfg.RunConfig().norm == "batch"
    for change, fragment in (({"norm": "layer"}, "norm must be one of"), ({"hue_jitter": 0.7}, "hue_jitter"),
                             ({"zoom": [3, 1]}, "zoom"), ({"zoom": [0, 2]}, "zoom"), ({"zoom": 2}, "zoom")):
        with pytest.raises(cfg.ConfigError, match=fragment):
            cfg.from_profile("quick", **change)


def test_train_set_norm_group_and_the_augmentation_switches_reach_the_config():
    a = cli.parser().parse_args(["train", "--run-dir", "r", "--set", "norm=group", "--set", "hue_jitter=0.05",
                                 "--set", "zoom=[1, 2.5]"])
    c = cli.config_from_args(a)
    assert (c.norm, c.hue_jitter, c.zoom) == ("group", 0.05, [1, 2.5])


# -- augmentation ------------------------------------------------------------------------------------------

def test_hue_jitter_is_torchvisions_and_changes_colour_not_geometry():
    tf = transforms.train_transform(32, None, color_jitter=0.0, hue_jitter=0.2)
    jitter = [t for t in tf.transforms if isinstance(t, v2.ColorJitter)]
    assert len(jitter) == 1 and jitter[0].hue == (-0.2, 0.2) and jitter[0].brightness is None
    assert not any(isinstance(t, v2.ColorJitter) for t in transforms.train_transform(32, None).transforms)
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[0], img[2] = 120, 200  # violet
    hues = set()
    for i in range(10):
        torch.manual_seed(i)
        out, m = tf(tv_tensors.Image(img), tv_tensors.Mask(torch.ones(1, 32, 32, dtype=torch.uint8)))
        assert out.shape == (3, 32, 32) and bool(m.all())
        hues.add(tuple(out[:, 0, 0].mul(255).round().tolist()))
    assert len(hues) > 5


def test_zoom_enlarges_some_cells_and_keeps_image_and_mask_aligned():
    img = torch.zeros(3, 96, 96, dtype=torch.uint8)
    img[:, 40:56, 40:56] = 255  # a 16-px "cell" in the centre
    mask = (img[:1] > 0).to(torch.uint8)
    tf = transforms.train_transform(64, 96, zoom=[2.0, 3.0])
    areas = []
    for i in range(30):
        torch.manual_seed(i)
        out, m = tf(tv_tensors.Image(img), tv_tensors.Mask(mask))
        assert out.shape == (3, 64, 64) and m.shape == (1, 64, 64)
        assert ((out[0] > 0.5) == m[0].bool()).float().mean() > 0.95  # antialiased edges aside
        areas.append(int(m.sum()))
    assert min(areas) == 256 and max(areas) >= 4 * 256 * 0.9  # some unchanged, some enlarged 2-3x per side
    assert 5 < sum(a > 300 for a in areas) < 25  # about half of them (ZOOM_P)


# -- AdaBN ------------------------------------------------------------------------------------------------

def _batches(images, labels, batch=4):
    return [{"image": images[i:i + batch], "label": labels[i:i + batch]} for i in range(0, len(images), batch)]


def test_adabn_sets_batchnorm_statistics_to_the_targets_without_labels():
    torch.manual_seed(0)
    model = MultiTaskUNet(5, 4, 2)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(8, 3, 32, 32))  # "source" statistics
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    target = 0.3 * torch.rand(8, 3, 32, 32) + 0.6  # brighter, lower contrast
    first = model.inc[1]
    before = first.running_mean.clone()
    assert adabn.adapt_batchnorm(model, _batches(target, torch.zeros(8, dtype=torch.long))) == 12  # depth 2
    with torch.no_grad():
        conv = model.inc[0](target)  # the first BatchNorm's input: equal batches, so the mean of batch means
    assert torch.allclose(first.running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(first.running_mean, before, atol=1e-3)
    assert not model.training and all(m.momentum == 0.1 for m in adabn.batchnorm_layers(model))
    for k, v in model.state_dict().items():  # no weight changed
        if k in weights:
            assert torch.equal(v, weights[k]), k
    # Labels are never read: other (even nonsense) labels give identical statistics.
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    adabn.adapt_batchnorm(model, _batches(target, torch.full((8,), -99)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())


def test_adabn_is_a_no_op_for_group_norm():
    model = MultiTaskUNet(5, 4, 2, norm="group").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adabn.adapt_batchnorm(model, _batches(torch.rand(4, 3, 32, 32), torch.zeros(4))) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()) and not model.training


@pytest.fixture(scope="module")
def shift_runs(tmp_path_factory):
    """Two tiny finished runs named as the study names them (BatchNorm and GroupNorm), and a shifted set."""
    base = tmp_path_factory.mktemp("shift")
    root = make_wbc_tree(base / "data", per_class=3, val_per_class=1, size=(48, 48))
    for name, norm in (("bn", "batch"), ("gn", "group")):
        config = cfg.from_profile("quick", data_root=str(root), norm=norm, **TINY)
        run_dir = base / "runs" / f"shift-{name}-s0"
        train.fit(config, run_dir, progress=False, log=lambda s: None)
        runs.write_structure(run_dir, grid.structure(grid.get(f"shift-{name}"), 0))  # as the study records it
    target = base / "target"
    for i, cls in enumerate(["Lymphocyte", "Neutrophil", "Monocyte"]):
        for j in range(3):
            path = write_image(target / cls / f"{cls}_{j}.png", size=(40, 40), seed=100 + 10 * i + j)
            arr = np.asarray(Image.open(path), dtype=np.float32)
            Image.fromarray((0.3 * arr + 150).astype(np.uint8)).save(path)  # brighter, lower contrast
    return base


def test_evaluate_adabn_differs_from_plain_and_says_what_it_did(shift_runs, tmp_path, capsys):
    bn, target = shift_runs / "runs" / "shift-bn-s0", shift_runs / "target"
    plain = evaluate.evaluate(bn, target, tmp_path / "plain")
    adapted = evaluate.evaluate(bn, target, tmp_path / "adabn", adabn=True)
    assert "adabn" not in plain and adapted["adabn"]["layers"] > 0 and adapted["adabn"]["images"] == 9
    assert json.loads((tmp_path / "adabn" / "metrics.json").read_text())["adabn"]["layers"] > 0
    p_plain = (tmp_path / "plain" / "predictions.csv").read_text()
    p_adapted = (tmp_path / "adabn" / "predictions.csv").read_text()
    assert p_plain != p_adapted  # the probabilities changed
    # the checkpoint itself is untouched: a plain evaluation afterwards gives the first answer again
    evaluate.evaluate(bn, target, tmp_path / "again")
    assert (tmp_path / "again" / "predictions.csv").read_text() == p_plain
    assert cli.main(["evaluate", "--checkpoint", str(bn), "--data", str(target), "--out", str(tmp_path / "c"),
                     "--adabn", "--no-progress"]) == 0
    assert "BatchNorm layer(s) re-estimated on 9 images" in capsys.readouterr().out


def test_evaluate_adabn_on_a_group_norm_model_says_it_changes_nothing(shift_runs, tmp_path, capsys):
    gn, target = shift_runs / "runs" / "shift-gn-s0", shift_runs / "target"
    plain = evaluate.evaluate(gn, target, tmp_path / "plain")
    assert cli.main(["evaluate", "--checkpoint", str(gn), "--data", str(target), "--out", str(tmp_path / "a"),
                     "--adabn", "--no-progress"]) == 0
    assert "no BatchNorm layer" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["accuracy"] == plain["accuracy"]


# -- the study's shift-* runs and the chapter ------------------------------------------------------------

def test_shift_runs_are_opt_in_and_carry_their_settings(tmp_path, capsys):
    jobs = runner.jobs_of(("shift",), [0, 1])
    assert [j.id for j in jobs[:2]] == ["shift-bn-s0", "shift-gn-s0"] and len(jobs) == 2 * len(shift.SETTINGS)
    assert jobs[0].structure == {"configuration": "shift-bn", "seed": 0, "chapter": "shift", "dataset": "wbc",
                                 "subset": 100, "masks": True, "pretrained": False, "setting": "bn"}
    for job in jobs:
        c = runner.job_config(job, "quick", None, tmp_path, {"epochs": 2})
        changes = shift.SETTINGS[job.structure["setting"]][0]
        assert c.epochs == 2 and c.subset == 100 and c.masks and c.init is None
        assert all(getattr(c, k) == v for k, v in changes.items()), job.id
    assert book.describe(jobs[len(shift.SETTINGS) + 1].structure).startswith("domain shift: GroupNorm")
    assert cli.main(["study", "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    assert "shift-" not in capsys.readouterr().out  # not in the default study
    assert cli.main(["study", "--dry-run", "--only", "shift-gn-*", "--seeds", "2", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shift-gn-s1" in out and "shift-bn-s0" not in out and "wbc100" not in out


def test_chapter_page_without_shift_runs_says_how_to_train_them(tmp_path):
    (tmp_path / "runs").mkdir()
    page = book.write_shift_page(tmp_path, tmp_path / "runs", None)
    assert page.name == "domain-shift.md" and "wbc study --only 'shift-*'" in page.read_text()


@pytest.mark.slow
def test_chapter_notebook_runs_on_shift_runs(shift_runs, tmp_path):
    """The chapter executed on two tiny runs: tables, verdicts and the chosen remedy, and no error."""
    import papermill

    out = tmp_path / "domain-shift.ipynb"
    target = str(shift_runs / "target")
    papermill.execute_notebook(str(book.NOTEBOOKS / "domain-shift.ipynb"), str(out), kernel_name=book.KERNEL,
                               parameters={"runs_dir": str(shift_runs / "runs"), "external": [target, target],
                                           "select_on": "target", "report_on": "target", "stats_limit": 5},
                               cwd=str(book.NOTEBOOKS), progress_bar=False)
    nb = json.loads(out.read_text())
    text = "\n".join("".join(o.get("data", {}).get("text/markdown", "")) + "".join(o.get("data", {}).get(
        "text/plain", "")) + "".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert "2 finished domain-shift run(s)" in text and "bn+adabn" in text and "Chosen on target" in text
    assert "Goal" in text and "gn" in text
    assert (shift_runs / "runs" / "shift-bn-s0" / "external-target-adabn" / "metrics.json").is_file()
    assert not (shift_runs / "runs" / "shift-gn-s0" / "external-target-adabn").exists()
    # executed again (a later study), the evaluations are reused, not recomputed
    written = sorted((shift_runs / "runs").glob("*/external-target*/metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in written]
    again = shift.evaluate_runs(shift.shift_runs(shift_runs / "runs"), {"target": target})
    assert len(again) == 3 and len(written) == 3 and [p.stat().st_mtime_ns for p in written] == stamps


def test_stained_fraction_and_image_statistics():
    rgb = np.ones((100, 100, 3), np.float32) * np.array([0.9, 0.75, 0.75], np.float32)  # pink background
    yy, xx = np.mgrid[:100, :100]
    disk = (yy - 50) ** 2 + (xx - 50) ** 2 < 20 ** 2
    rgb[disk] = [0.45, 0.3, 0.7]  # a violet nucleus
    assert abs(shift.stained_fraction(rgb) - disk.mean()) < 0.01
    assert shift.stained_fraction(np.full((10, 10, 3), 0.8, np.float32)) == 0
    df = shift.image_statistics(datasets.EMBEDDED / "external" / "bccd", limit=12)
    assert len(df) == 12 and set(df["set"]) == {"bccd"} and df["stained_fraction"].between(0, 1).all()
    assert df[["red", "green", "blue", "saturation", "brightness"]].stack().between(0, 1).all()
    assert df["hue"].between(-0.5, 0.5).all()


def test_verdicts_balanced_bootstrap_and_the_selection_rule():
    clear_up, clear_down = {"low": 0.05, "high": 0.15}, {"low": -0.2, "high": -0.05}
    assert shift.verdict({"low": 0.02, "high": 0.2}, clear_up) == "helps"
    assert shift.verdict({"low": -0.2, "high": -0.1}, clear_down) == "hurts"
    assert shift.verdict({"low": None, "high": None}, clear_up).startswith("probably helps")
    assert shift.verdict({"low": -0.3, "high": 0.4}, {"low": -0.02, "high": 0.02}) == "no clear effect"
    assert shift.verdict({"low": 0.1, "high": 0.2}, clear_down).startswith("mixed")
    # balanced accuracy: A right on every image of the rare class, B on every image of the common one
    labels = np.array([0] * 6 + [1] * 14)
    a, b = labels == 0, labels == 1
    boot = shift.balanced_bootstrap(a, b, labels, n_boot=500)
    assert boot["diff"] == pytest.approx(0.0) and boot["low"] < 0 < boot["high"]
    boot = shift.balanced_bootstrap(np.ones(20, bool), b, labels, n_boot=500)
    assert boot["diff"] == pytest.approx(0.5) and boot["low"] > 0
    table = pd.DataFrame([{"remedy": "a", "pbc_mean": 0.97, "segwbc_mean": 0.5},
                          {"remedy": "b", "pbc_mean": 0.955, "segwbc_mean": 0.9},   # > 1 point below the best
                          {"remedy": "c", "pbc_mean": 0.962, "segwbc_mean": 0.7}])
    assert shift.choose(table, "segwbc")["remedy"] == "c"
