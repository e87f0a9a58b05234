"""Test-time adaptation: AdaBN (Li et al., 2016), a trained model's BatchNorm statistics re-estimated on the
images of another set, without their labels (``wbc evaluate --adabn``, the domain-shift chapter)."""

from __future__ import annotations

import torch
from torch import nn

from wbclib.training.inference import forward
from wbclib.training.runtime import Runtime

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BATCHNORMS)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader, rt: Runtime | None = None) -> int:
    """AdaBN: replace every BatchNorm layer's running mean and variance by the statistics of the images of
    ``loader`` (batches as dicts with ``image``), run through the model by the library's forward loop on ``rt``
    (by default fp32 on the model's device). Only the images are used: labels and masks are never read. The
    BatchNorm layers run in training mode with ``momentum=None`` (a cumulative average over the batches) while
    every other module stays in evaluation mode; no gradient is computed and no weight changes. The model is
    left in evaluation mode with its momenta restored. Returns the number of layers adapted (0: nothing to do,
    e.g. a GroupNorm model)."""
    layers = batchnorm_layers(model)
    model.eval()
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for _ in forward(model, loader, rt or Runtime.plain(next(model.parameters()).device), keep_mode=True):
            pass
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers)
