"""Eq. 1 against MONAI's reference implementation, the mask-target policy and NaN-freedom."""

import pytest
import torch

from wbclib.core import config as cfg
from wbclib.model.losses import (
    LOSS_PARTS,
    MASKED_PART,
    Averages,
    LossParts,
    MultiTaskLoss,
    generalized_dice_loss,
    mask_targets,
)
from wbclib.model.network import UNetOutput


def monai_gdl(logits, target):
    """MONAI's Generalized Dice Loss, the reference; only the tests that call it skip without MONAI."""
    monai_losses = pytest.importorskip("monai.losses", reason="monai (a [dev] extra) is the reference implementation")
    return monai_losses.GeneralizedDiceLoss(sigmoid=True, batch=True)(logits, target)


LN3 = float(torch.log(torch.tensor(3.0)))  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25


def test_generalized_dice_loss_worked_by_hand():
    """One 2x2 image, three channels (probabilities after the sigmoid, targets):

    channel 0: p = .75 .75 .25 .25, y = 1 1 0 0 -> intersection 1.5, |y| = 2, sum(p + y) = 4, w = 1/4
    channel 1: p = .5 everywhere,   y = 1 0 0 0 -> intersection 0.5, |y| = 1, sum(p + y) = 3, w = 1
    L = 1 - 2 (1.5/4 + 0.5) / (4/4 + 3) = 1 - 1.75 / 4 = 0.5625.
    Channel 2, empty (y = 0, p = .5): its infinite weight becomes the largest finite one (1): the denominator
    gains 2 x 1, L = 1 - 1.75 / 6 = 0.708333."""
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = torch.tensor([[LN3, LN3], [-LN3, -LN3]])
    target = torch.zeros(1, 3, 2, 2)
    target[0, 0, 0] = 1
    target[0, 1, 0, 0] = 1
    assert generalized_dice_loss(logits[:, :2], target[:, :2]).item() == pytest.approx(0.5625, abs=1e-5)
    assert generalized_dice_loss(logits, target).item() == pytest.approx(1 - 1.75 / 6, abs=1e-5)
    # the sums pool the batch: the same pixels split over two images give the same loss
    rows = (logits[:, :2].permute(2, 1, 0, 3), target[:, :2].permute(2, 1, 0, 3))  # (2 images, 2, 1, 2)
    split = generalized_dice_loss(*rows)
    assert split.item() == pytest.approx(0.5625, abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_matches_monai_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 5, 24, 24, generator=g) * 3
    target = (torch.rand(4, 5, 24, 24, generator=g) > 0.7).float()
    assert torch.allclose(generalized_dice_loss(logits, target), monai_gdl(logits, target), atol=1e-5)


@pytest.mark.parametrize("empty", [[0], [1, 3], [0, 1, 2, 3]])
def test_matches_monai_with_empty_channels(empty):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 32, 32, generator=g)
    target = (torch.rand(3, 5, 32, 32, generator=g) > 0.5).float()
    target[:, empty] = 0
    ours, ref = generalized_dice_loss(logits, target), monai_gdl(logits, target)
    assert torch.isfinite(ours)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_all_empty_target_is_zero_like_monai():
    logits = torch.randn(2, 5, 16, 16)
    target = torch.zeros(2, 5, 16, 16)
    assert generalized_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(generalized_dice_loss(logits, target), monai_gdl(logits, target), atol=1e-5)


def test_large_masks_in_bfloat16_match_float32_reference():
    """Square weights on ~1e4-pixel masks are ~1e-8: the loss must be computed in float32 anyway."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 2, 128, 128, generator=g)
    target = torch.zeros(2, 2, 128, 128)
    target[:, 1, 10:110, 10:110] = 1
    ours = generalized_dice_loss(logits.bfloat16(), target.bfloat16())
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, monai_gdl(logits.bfloat16().float(), target), atol=1e-5)


def test_perfect_prediction_is_near_zero():
    target = torch.zeros(1, 2, 16, 16)
    target[0, 1, 4:12, 4:12] = 1
    logits = (target * 2 - 1) * 50
    assert generalized_dice_loss(logits, target).item() < 1e-3


def test_mask_targets_put_the_mask_in_the_class_channel():
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2] = 1
    masks[1, 0, 2:] = 1
    t = mask_targets(masks, torch.tensor([3, 0]), 5)
    assert t.shape == (2, 5, 4, 4)
    assert torch.equal(t[0, 3], masks[0, 0]) and t[0].sum() == masks[0].sum()
    assert torch.equal(t[1, 0], masks[1, 0]) and t[1].sum() == masks[1].sum()


def _output(b=4, c=5, s=16, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(b, 3, s, s, generator=g), torch.randn(b, c, s, s, generator=g),
             torch.randn(b, c, generator=g), torch.randn(b, 8, generator=g)]
    for p in parts:
        p.requires_grad_(requires_grad)
    return UNetOutput(*parts), parts


def test_samples_without_mask_contribute_nothing_to_dice():
    out, _ = _output()
    images = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    masks = (torch.rand(4, 1, 16, 16) > 0.5).float()
    has_mask = torch.tensor([True, False, True, False])
    loss = MultiTaskLoss()(out, images, labels, masks, has_mask)
    sel = has_mask
    expected = generalized_dice_loss(out.mask_logits[sel], mask_targets(masks[sel], labels[sel], 5))
    assert torch.allclose(loss.dice, expected)
    # changing the masks of the unmasked samples changes nothing
    masks2 = masks.clone()
    masks2[~has_mask] = 1 - masks2[~has_mask]
    assert torch.equal(MultiTaskLoss()(out, images, labels, masks2, has_mask).dice, loss.dice)


def test_batch_without_masks_gives_exactly_zero_dice_and_finite_gradients():
    out, parts = _output()
    images = torch.rand(4, 3, 16, 16)
    loss = MultiTaskLoss()(out, images, torch.tensor([0, 1, 2, 3]), torch.zeros(4, 1, 16, 16),
                           torch.zeros(4, dtype=torch.bool))
    assert loss.dice.item() == 0.0
    loss.total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in parts)


def test_empty_mask_channels_give_finite_gradients():
    """Classes without any mask in the batch (all but one here) must not produce inf or NaN."""
    out, parts = _output()
    masks = torch.zeros(4, 1, 16, 16)
    masks[0, 0, 4:8, 4:8] = 1
    loss = MultiTaskLoss()(out, torch.rand(4, 3, 16, 16), torch.tensor([2, 2, 2, 2]), masks,
                           torch.tensor([True, True, False, False]))
    assert torch.isfinite(loss.total)
    loss.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in parts if p.grad is not None)


def test_total_is_the_weighted_sum_and_unlabelled_samples_skip_ce():
    out, _ = _output()
    images = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([1, -1, 4, -1])
    masks = torch.zeros(4, 1, 16, 16)
    loss = MultiTaskLoss(lambda_ce=2.0, lambda_dice=1.0)(out, images, labels, masks, torch.zeros(4, dtype=bool))
    ce = torch.nn.functional.cross_entropy(out.class_logits[[0, 2]], labels[[0, 2]])
    mse = torch.nn.functional.mse_loss(out.reconstruction, images)
    assert torch.allclose(loss.ce, ce) and torch.allclose(loss.mse, mse)
    assert torch.allclose(loss.total, mse + 2.0 * ce + 1.0 * loss.dice)


def test_unlabelled_batch_has_zero_ce():
    out, _ = _output()
    loss = MultiTaskLoss()(out, torch.rand(4, 3, 16, 16), torch.full((4,), -1), torch.zeros(4, 1, 16, 16),
                           torch.zeros(4, dtype=bool))
    assert loss.ce.item() == 0.0 and loss.dice.item() == 0.0
    assert torch.allclose(loss.total, loss.mse)


def test_the_loss_of_a_config_has_its_weights_and_no_dice_without_masks():
    quick = cfg.from_profile("quick", lambda_ce=3.0, lambda_dice=0.5)
    loss = MultiTaskLoss.from_config(quick)
    assert (loss.lambda_ce, loss.lambda_dice) == (3.0, 0.5)
    for off in (quick.replace(masks=False), quick.replace(dataset="prcc"), quick.replace(lambda_dice=0.0)):
        assert MultiTaskLoss.from_config(off).lambda_dice == 0.0 and not off.uses_dice
    default = MultiTaskLoss()  # the config's defaults, declared once
    assert (default.lambda_ce, default.lambda_dice) == (cfg.RunConfig.lambda_ce, cfg.RunConfig.lambda_dice)


def test_loss_parts_name_the_fields_of_the_loss_and_the_panels_of_the_loss_figure():
    from wbclib.results import plots

    assert LOSS_PARTS == LossParts._fields and list(plots.LOSS_COMPONENTS) == list(LOSS_PARTS)
    avg = Averages()
    avg.add(dict.fromkeys(LOSS_PARTS, 1.0) | {MASKED_PART: 0.5}, n=4, n_masked=1)
    avg.add(dict.fromkeys(LOSS_PARTS, 3.0) | {MASKED_PART: 0.0}, n=4, n_masked=0)
    assert avg.means() == {**dict.fromkeys(LOSS_PARTS, 2.0), MASKED_PART: 0.5}  # the Dice mean: masked samples only
