"""Losses of the reference report: reconstruction MSE, cross-entropy and the Generalized Dice Loss (Eq. 1),
combined into the multi-task objective of Eq. 2.

Shapes: B = batch, C = classes, H x W = image size. Label -1 means "no label" (pRCC); ``has_mask`` marks the
samples whose mask is real (the others carry an all-zero placeholder and are ignored by the Dice term).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from wbclib.core.config import RunConfig


def generalized_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth_nr: float = 1e-5,
                          smooth_dr: float = 1e-5) -> torch.Tensor:
    r"""Generalized Dice Loss (Sudre et al. 2017; Eq. 1 of the report) on sigmoid probabilities.

    .. math::
        L_D = 1 - \frac{2 \sum_l w_l \sum_i \hat y_{li} y_{li} + s_{nr}}
                       {\sum_l w_l \sum_i (\hat y_{li} + y_{li}) + s_{dr}},
        \qquad w_l = \frac{1}{(\sum_i y_{li})^2}

    where :math:`\hat y = \sigma(\text{logits})`, :math:`l` runs over the C channels and :math:`i` over every
    pixel of every sample in the batch (the sums are pooled over the batch, like MONAI's ``batch=True``).

    Empty channels: a channel with no foreground pixel in the whole batch has an infinite weight; it is
    replaced by the largest finite weight (MONAI's policy). If every channel is empty all weights are zero and
    the loss is ``1 - s_nr / s_dr = 0``. The smoothing terms matter: with ~1e4-pixel masks the weights are
    ~1e-8, so the loss is computed in float32 whatever the autocast dtype.

    Args:
        logits: (B, C, H, W) mask logits.
        target: (B, C, H, W) binary (or soft) targets.
    Returns:
        A scalar tensor. Matches ``monai.losses.GeneralizedDiceLoss(sigmoid=True, batch=True)``.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = torch.sigmoid(logits.float())
        target = target.float()
        dims = [0, *range(2, logits.ndim)]  # everything except the channel
        intersection = (probs * target).sum(dims)
        volume = target.sum(dims)
        denominator = probs.sum(dims) + volume
        w = 1.0 / (volume * volume)
        infinite = torch.isinf(w)
        w = torch.where(infinite, torch.zeros_like(w), w)
        w = torch.where(infinite, w.max(), w)
        numer = 2.0 * (intersection * w).sum() + smooth_nr
        denom = (denominator * w).sum() + smooth_dr
        return 1.0 - numer / denom


def mask_targets(masks: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mask targets: a sample of class k gets channel k = its binary mask, every other channel 0.

    Args:
        masks: (B, 1, H, W) or (B, H, W) binary cell masks.
        labels: (B,) class indices (all >= 0).
    Returns:
        (B, num_classes, H, W) float tensor.
    """
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    one_hot = F.one_hot(labels, num_classes).to(masks.dtype)  # (B, C)
    return masks.float() * one_hot[:, :, None, None].float()


class LossParts(NamedTuple):
    """The total loss and its weighted-sum components (unweighted values, for logging)."""

    total: torch.Tensor
    mse: torch.Tensor
    ce: torch.Tensor
    dice: torch.Tensor

    def floats(self) -> dict[str, float]:
        """Each part as a Python float, keyed by :data:`LOSS_PARTS` (one device synchronisation)."""
        return {k: float(v.detach()) for k, v in zip(LOSS_PARTS, self)}


#: The names of the loss parts, in logging order: the keys of every loss record, the ``train_<part>`` and
#: ``val_<part>`` columns of ``history.csv`` and the panels of the loss figures.
LOSS_PARTS: tuple[str, ...] = LossParts._fields
#: The part that only the samples with a mask contribute to (its mean is over those samples).
MASKED_PART = "dice"


class MultiTaskLoss(torch.nn.Module):
    r"""Eq. 2 of the report: :math:`L = L_{MSE} + \lambda_{CE} L_{CE} + \lambda_D L_D`.

    - MSE between reconstruction and input, on every sample;
    - cross-entropy on the samples that have a label (``labels >= 0``); 0 when none has;
    - Generalized Dice Loss on the samples that have a mask (``has_mask``); exactly 0 when none has, with
      no NaN in the gradients. Setting ``lambda_dice=0`` turns the mask term off entirely.

    A term without data is ``0 * sum(its logits)`` rather than a constant: exactly 0 with zero gradients, and
    every parameter stays in the graph (DistributedDataParallel requires it on every process).
    """

    def __init__(self, lambda_ce: float = RunConfig.lambda_ce, lambda_dice: float = RunConfig.lambda_dice):
        super().__init__()
        self.lambda_ce, self.lambda_dice = lambda_ce, lambda_dice

    @classmethod
    def from_config(cls, config: RunConfig) -> MultiTaskLoss:
        """The objective a run trains: the config's weights, with the Dice term off where the run uses no mask
        (``config.uses_dice``: masks switched off, ``lambda_dice`` 0, or pRCC, which has none)."""
        return cls(config.lambda_ce, config.lambda_dice if config.uses_dice else 0.0)

    def dice_samples(self, labels: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the samples the Dice term uses (labelled, with a mask; none when it is off)."""
        return has_mask.bool() & (labels >= 0) & bool(self.lambda_dice)

    def forward(self, output, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                has_mask: torch.Tensor) -> LossParts:
        mse = F.mse_loss(output.reconstruction.float(), images.float())

        labelled = labels >= 0
        if labelled.any():
            ce = F.cross_entropy(output.class_logits[labelled].float(), labels[labelled])
        else:
            ce = output.class_logits.float().sum() * 0.0

        with_mask = self.dice_samples(labels, has_mask)
        if with_mask.any():
            logits = output.mask_logits[with_mask]
            targets = mask_targets(masks[with_mask], labels[with_mask], logits.shape[1])
            dice = generalized_dice_loss(logits, targets)
        else:
            dice = output.mask_logits.float().sum() * 0.0
        total = mse + self.lambda_ce * ce + self.lambda_dice * dice
        return LossParts(total, mse, ce, dice)


class Averages:
    """Running sample-weighted means of the loss parts over the batches of an epoch or a split; the
    :data:`MASKED_PART` is averaged over the samples that have a mask only (batches without one would otherwise
    dilute it towards 0). ``reduce`` sums the running totals of all processes of a distributed run."""

    def __init__(self):
        self.sums = dict.fromkeys(LOSS_PARTS, 0.0)
        self.n = self.n_masked = 0

    def add(self, parts: dict[str, float], n: int, n_masked: int) -> None:
        for k in LOSS_PARTS:
            self.sums[k] += parts[k] * (n_masked if k == MASKED_PART else n)
        self.n += n
        self.n_masked += n_masked

    def reduce(self, ctx) -> Averages:
        """Sum the totals over the processes of ``ctx`` (a :class:`wbclib.training.distributed.Context`)."""
        *sums, self.n, self.n_masked = ctx.sum([*self.sums.values(), self.n, self.n_masked])
        self.sums = dict(zip(self.sums, sums))
        return self

    def means(self) -> dict[str, float]:
        return {k: (self.sums[k] / self.n_masked if self.n_masked else 0.0) if k == MASKED_PART
                else self.sums[k] / max(self.n, 1) for k in LOSS_PARTS}
