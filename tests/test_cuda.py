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
