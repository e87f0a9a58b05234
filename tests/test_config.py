"""The run config: profiles, JSON round trip, clear rejections, and the command line mapping."""

import itertools
import json
import math

import pytest
import torch

from wbclib import cli
from wbclib.core import config as cfg


def test_paper_profile_is_the_reports_recipe():
    c = cfg.from_profile("paper")
    assert (c.input_size, c.resize, c.base_width, c.epochs, c.step_size) == (384, None, 64, 32, 12)
    assert (c.lambda_ce, c.lambda_dice) == (2.0, 1.0) and c.grad_clip > 0


def test_quick_profile_and_the_step_schedules_fraction():
    c = cfg.from_profile("quick")
    assert (c.input_size, c.resize, c.base_width, c.batch_size, c.lr_schedule) == (64, 96, 16, 32, "cosine")
    # With the report's StepLR, a scaled run decays at the paper's fraction of its epochs (12/32).
    assert cfg.from_profile("quick", epochs=32).step_size == 12
    assert cfg.from_profile("quick", epochs=8).step_size == 3
    assert cfg.from_profile("quick", epochs=8, lr_step=5).step_size == 5


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from wbclib.training import train

    c = cfg.from_profile("quick", epochs=4, warmup_epochs=1, lr=1.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.lr)
    sched = train.make_scheduler(opt, c, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over one epoch
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then never increases
    assert lrs[-1] < 0.01 and lrs[24] == pytest.approx(0.5 * (1 + math.cos(math.pi * 14 / 30)))
    step = train.make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                cfg.from_profile("paper"), 10)
    assert isinstance(step, torch.optim.lr_scheduler.StepLR) and step.step_size == 12


def test_json_round_trip(tmp_path):
    c = cfg.from_profile("quick", dataset="cam16", masks=False, seed=3)
    (tmp_path / "c.json").write_text(c.to_json())
    assert cfg.load(tmp_path / "c.json") == c


def test_a_run_made_before_an_option_existed_is_the_same_run(tmp_path):
    """A config.json written before keys were added (here the four of the device-resident data and the step
    levers) is the same config once those take their defaults; a changed value, or a key no config knows, is not."""
    from wbclib.core import storage
    from wbclib.training import runs

    config = cfg.from_profile("quick", subset=10, zoom=[0.7, 1.4])  # a list field: as config.json holds it
    older = {k: v for k, v in json.loads(config.to_json()).items()
             if k not in ("resident", "val_batch_size", "compile_mode", "upsample_bf16")}
    assert cfg.same_config(older, config.to_dict())
    assert not cfg.same_config({**older, "lr": config.lr * 2}, config.to_dict())
    assert not cfg.same_config({**older, "no_such_key": 1}, config.to_dict())
    assert not cfg.same_config(None, config.to_dict())
    storage.write_json(tmp_path / "config.json", older)
    storage.write_json(tmp_path / "metrics.json", {"accuracy": 0.5})
    assert runs.is_finished(tmp_path, config.to_dict())  # the study reuses it instead of training it again
    assert not runs.is_finished(tmp_path, config.replace(epochs=config.epochs + 1).to_dict())


def test_unknown_keys_are_named():
    with pytest.raises(cfg.ConfigError, match=r"unknown config key.*learning_rate"):
        cfg.from_dict({"learning_rate": 1})


@pytest.mark.parametrize("change,fragment", [
    ({"dataset": "mnist"}, "dataset must be one of"),
    ({"subset": 20}, "subset must be one of .1, 10, 50, 100."),
    ({"input_size": 100}, "input_size 100 is not divisible by 32"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"lr": -1.0}, "lr must be > 0"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"lambda_dice": float("nan")}, "lambda_dice must be >= 0"),
])
def test_impossible_values_are_rejected(change, fragment):
    with pytest.raises(cfg.ConfigError, match=fragment):
        cfg.from_profile("quick", **change)


def test_set_assignments_are_typed():
    assert cfg.parse_assignment("lr=3e-4") == ("lr", 3e-4)
    assert cfg.parse_assignment("resize=none") == ("resize", None)
    assert cfg.parse_assignment("compile=true") == ("compile", True)
    assert cfg.parse_assignment("base-width=32") == ("base_width", 32)
    with pytest.raises(cfg.ConfigError, match="unknown config key 'nope'"):
        cfg.parse_assignment("nope=1")


def test_every_train_flag_maps_onto_the_config():
    a = cli.parser().parse_args(["train", "--profile", "paper", "--data-root", "/d", "--dataset", "cam16",
                                 "--subset", "10", "--epochs", "5", "--run-dir", "r", "--seed", "7", "--no-masks",
                                 "--init", "runs/prcc-s0", "--skip-bad", "--set", "lr=0.01", "--set", "epochs=9"])
    c = cli.config_from_args(a)
    assert (c.profile, c.data_root, c.dataset, c.subset, c.epochs, c.seed, c.masks, c.init, c.skip_bad, c.lr) == \
        ("paper", "/d", "cam16", 10, 5, 7, False, "runs/prcc-s0", True, 0.01)


def test_notebook_parameters_apply_profile_then_overrides_then_named_values():
    """A training notebook's parameters: the profile, then ``overrides``, then each named parameter that is not
    None (a parameter left at None keeps what the profile or the overrides say). That the notebook and the
    runner end with the same config is tested in tests/test_study.py."""
    c = cfg.from_parameters("paper", {"lr": 0.01, "epochs": 5, "seed": 4}, epochs=7, subset=10, seed=None,
                            init=None, dataset="wbc")
    paper = cfg.from_profile("paper")
    assert (c.lr, c.epochs, c.seed, c.subset, c.init) == (0.01, 7, 4, 10, None)
    assert (c.input_size, c.base_width, c.batch_size) == (paper.input_size, paper.base_width, paper.batch_size)
    assert c == paper.replace(lr=0.01, epochs=7, seed=4, subset=10)
    with pytest.raises(cfg.ConfigError, match="unknown config key"):
        cfg.from_parameters("quick", {"learning_rate": 1.0})


@pytest.mark.parametrize("args,fragment", [
    (["train", "--data-root", "/nonexistent/root", "--run-dir", "{tmp}/r"], "data root not found: /nonexistent/root"),
    (["train", "--run-dir", "{tmp}/r", "--set", "input_size=100"], "input_size 100 is not divisible by 32"),
    (["evaluate", "--checkpoint", "{tmp}/none", "--data", "{tmp}/d", "--out", "{tmp}/o"], "checkpoint not found"),
])
def test_user_errors_exit_2_with_one_message_and_no_traceback(tmp_path, args, fragment, capsys):
    """Through ``wbc``'s entry point in this process (an exception other than the one-line error would fail
    the test); tests/test_faults.py runs such refusals as separate processes too."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wbc: error: ") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_runconfig_defaults_are_the_quick_profile():
    assert cfg.RunConfig() == cfg.from_profile("quick")
    assert cfg.RunConfig().data == "embedded" and cfg.RunConfig().data_root is None


@pytest.mark.parametrize("text", ["resize=none", "resize=null", "init=none", "lr_step=null"])
def test_set_key_none_reaches_the_config(text):
    """`--set KEY=none` sets the field to None, even where the profile has a value (paper: lr_step=12)."""
    key = text.split("=")[0]
    for profile in ("quick", "paper"):
        a = cli.parser().parse_args(["train", "--profile", profile, "--run-dir", "r", "--set", text])
        assert getattr(cli.config_from_args(a), key) is None
    assert cfg.from_parameters("quick", {"resize": None}).resize is None


def test_resize_none_trains_at_native_resolution(tmp_path):
    """With resize=None the training transform has no Resize: a 40 px image padded to 48 keeps its pixels."""
    from torchvision.transforms import v2

    from conftest import make_wbc_tree
    from wbclib.data import datasets

    root = make_wbc_tree(tmp_path / "root", per_class=1, size=(48, 48))
    a = cli.parser().parse_args(["train", "--data-root", str(root), "--run-dir", "r", "--set", "resize=none",
                                 "--set", "input_size=48", "--set", "depth=2"])
    splits = datasets.build_splits(cli.config_from_args(a), root)
    steps = splits.train.transform.transforms
    assert not any(isinstance(t, v2.Resize) for t in steps)
    item = splits.val[0]
    assert item["image"].shape == (3, 48, 48)
    raw = splits.val.load(0)[0].float() / 255
    assert torch.allclose(item["image"], raw)  # centre crop of the same size: the very pixels, not a resample


def test_data_sources(tmp_path):
    from wbclib.data import datasets

    assert datasets.data_source(cfg.from_profile("quick")) == "embedded"
    assert datasets.data_source(cfg.from_profile("quick", dataset="prcc")) == "embedded"
    assert datasets.data_source(cfg.from_profile("quick", dataset="cam16")) == "embedded"  # EBHI-Seg tiles
    assert datasets.data_source(cfg.from_profile("quick", data="synthetic")) == "synthetic"
    assert datasets.data_source(cfg.from_profile("quick", data_root=str(tmp_path))) == "data-root"
    assert datasets.data_root(cfg.from_profile("quick")) == datasets.EMBEDDED
    with pytest.raises(cfg.ConfigError, match="data must be one of"):
        cfg.from_profile("quick", data="course")
