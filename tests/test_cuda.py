"""The CUDA path: a run trained on the GPU (bf16, channels_last, compiled) and read back on the CPU.

Skipped without CUDA; ``benchmarks/gpu_check.sh`` runs them on a GPU machine (``pytest -m cuda``)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from conftest import make_wbc_tree
from wbclib.core import config as cfg
from wbclib.model.losses import MultiTaskLoss
from wbclib.model.network import build_model
from wbclib.training import inference, runs, runtime, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA not available)")]


def tiny(root, **kw) -> cfg.RunConfig:
    return cfg.from_profile("quick", **{"data_root": str(root), "subset": 100, "epochs": 2, "min_steps": 0,
                                        "batch_size": 4, "base_width": 8, "device": "cuda", **kw})


def test_auto_runtime_on_cuda_is_bf16_channels_last_with_workers():
    rt = runtime.Runtime.from_config(cfg.from_profile("paper"))
    assert rt.device.type == "cuda" and rt.amp_dtype is torch.bfloat16 and rt.channels_last
    assert rt.num_workers == min(8, max(0, (os.cpu_count() or 1) - 1))


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compile"])
def test_fit_on_cuda_and_read_back_on_cpu(tmp_path, compile_model):
    root = make_wbc_tree(tmp_path / "root", per_class=4)
    config = tiny(root, compile=compile_model, num_workers=2)
    m = train.fit(config, tmp_path / "run", progress=False, log=lambda line: None)
    assert m["epochs"] == 2 and math.isfinite(m["val"]["loss"]["total"])
    assert m["timing_s"]["data_wait"] <= m["timing_s"]["train_steps"]
    model, back, _ = inference.load_model(tmp_path / "run", "cpu")  # a GPU checkpoint opens on a CPU-only machine
    assert back == config and next(model.parameters()).device.type == "cpu"
    out = model(torch.rand(2, 3, 64, 64))
    assert out.class_logits.shape == (2, 5) and torch.isfinite(out.class_logits).all()


def test_resume_on_cuda_after_an_interrupt(tmp_path):
    root = make_wbc_tree(tmp_path / "root", per_class=4)
    config = tiny(root, epochs=3)

    def stop_after_two(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(config, tmp_path / "run", progress=False, log=stop_after_two)
    kept = runs.load_checkpoint(tmp_path / "run")
    assert kept["epoch"] == 2
    m = train.fit(config, tmp_path / "run", resume=True, progress=False, log=lambda line: None)
    history = runs.load_checkpoint(tmp_path / "run")["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[:2] == kept["history"]
    assert m["epochs"] == 3 and math.isfinite(m["val"]["loss"]["total"])


def test_bf16_step_matches_fp32_on_the_gpu():
    torch.manual_seed(0)
    config = cfg.from_profile("paper").replace(input_size=128, base_width=16, device="cuda")
    model = build_model(config).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    labels, masks = torch.tensor([0, 1, 2, 3], device="cuda"), torch.zeros(4, 1, 128, 128, device="cuda")
    masks[:, :, 32:96, 32:96] = 1
    loss_fn, has = MultiTaskLoss(2.0, 1.0), torch.tensor([True, False, True, False], device="cuda")
    model.eval()
    with torch.no_grad():
        ref = loss_fn(model(x), x, labels, masks, has).total
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = loss_fn(model(x), x, labels, masks, has).total
    assert float(low) == pytest.approx(float(ref), rel=0.05)


# -- decoded data resident on the GPU ------------------------------------------------------------------------

def test_auto_puts_the_decoded_data_on_the_gpu_and_says_how_much(tmp_path):
    root = make_wbc_tree(tmp_path / "root", per_class=4)
    lines = []
    m = train.fit(tiny(root, epochs=1, color_jitter=0.1, hue_jitter=0.02), tmp_path / "run", progress=False,
                  log=lines.append)
    assert any(s.startswith("resident: 20 training images at ") and "decoded onto cuda" in s and "GiB" in s
               for s in lines), lines
    assert math.isfinite(m["val"]["loss"]["total"])


def test_resident_batches_replay_exactly_on_the_gpu(tmp_path):
    from wbclib.data import datasets
    from wbclib.training import resident

    root = make_wbc_tree(tmp_path / "root", per_class=4)
    config = tiny(root, color_jitter=0.2, hue_jitter=0.05, resident="on")
    splits = datasets.build_splits(config, root)
    gen = torch.Generator()
    batches, _ = resident.loaders(splits, config, 8, torch.device("cuda"), gen, None, 0, lambda line: None)

    def epoch(e):
        gen.manual_seed(train.epoch_seed(0, e))
        return [(b["image"].clone(), b["mask"].clone(), b["path"]) for b in batches]

    first, again, other = epoch(2), epoch(2), epoch(3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(first, again))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_a_resumed_resident_run_trains_on_exactly_the_batches_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """On the GPU the kernels themselves are not deterministic (atomic adds in the backward passes), so the
    weights of two runs differ in the last bits; what resume must keep exact is everything else: the checkpoint
    it continues from and every batch it trains on afterwards."""
    from wbclib.training import resident

    root = make_wbc_tree(tmp_path / "root", per_class=4)
    config = tiny(root, epochs=3, color_jitter=0.1, resident="on")
    seen: dict[str, list] = {}
    real_iter = resident.TrainBatches.__iter__

    def recording(self):
        for b in real_iter(self):
            seen.setdefault(current, []).append((b["image"].double().sum().item(), int(b["mask"].sum()),
                                                 tuple(b["path"])))
            yield b

    monkeypatch.setattr(resident.TrainBatches, "__iter__", recording)
    current = "full"
    train.fit(config, tmp_path / "full", progress=False, log=lambda line: None)

    def stop_after_two(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    current = "cut"
    with pytest.raises(KeyboardInterrupt):
        train.fit(config, tmp_path / "cut", progress=False, log=stop_after_two)
    current = "resumed"
    train.fit(config, tmp_path / "cut", resume=True, progress=False, log=lambda line: None)
    per_epoch = len(seen["resumed"])
    assert per_epoch and seen["full"][-per_epoch:] == seen["resumed"]  # epoch 3 drew the very same batches
    assert seen["full"][:2 * per_epoch] == seen["cut"][:2 * per_epoch]
    history = runs.load_checkpoint(tmp_path / "cut")["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_upsample_bf16_runs_the_decoders_upsampling_in_bf16_with_the_same_losses():
    """Autocast runs bilinear upsampling in fp32 on CUDA; ``upsample_bf16`` keeps it in bf16 (a speed lever)."""
    config = cfg.from_profile("paper").replace(input_size=128, base_width=16, device="cuda")
    x = torch.rand(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    outs = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = build_model(config.replace(upsample_bf16=on)).cuda().eval()
        dtypes = []
        model.ups[0].up.register_forward_hook(lambda mod, i, o, seen=dtypes: seen.append(o.dtype))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs[on] = model(x).reconstruction.float()
        assert dtypes == [torch.bfloat16 if on else torch.float32]
    assert torch.allclose(outs[True], outs[False], atol=0.02)
