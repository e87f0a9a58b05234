"""The teaching walkthrough's helpers on the embedded real cells: the batch, the parts table, the loss terms,
a few training steps."""

from __future__ import annotations

import math

import pytest
import torch

from wbclib.model.losses import MultiTaskLoss
from wbclib.model.network import build_model, count_parameters
from wbclib.study import walkthrough
from wbclib.training import runtime, train


@pytest.fixture(scope="module")
def small():
    config = walkthrough.walkthrough_config(subset=10, batch_size=8, base_width=4)
    return config, walkthrough.splits(config)


def test_sample_batch_puts_the_masked_cells_first_and_covers_every_class(small):
    config, data = small
    batch = walkthrough.sample_batch(data, per_class=1)
    n_masked = int(batch["has_mask"].sum())
    assert n_masked == 2 and batch["has_mask"][:2].all() and not batch["has_mask"][2:].any()
    assert set(batch["label"][2:].tolist()) == set(range(5))
    assert tuple(batch["image"].shape[1:]) == (3, config.input_size, config.input_size)


def test_parts_table_accounts_for_every_parameter_and_shape(small):
    config, data = small
    model = build_model(config)
    batch = walkthrough.sample_batch(data, per_class=1)
    parts = walkthrough.model_parts(model, batch["image"])
    assert parts["parameters"].sum() == count_parameters(model)
    assert parts.loc["reconstruction_head", "output (channels × height × width)"] == "3 × 64 × 64"
    assert parts.loc["classifier", "output (channels × height × width)"] == "32 (embedding)"
    assert model.training  # left as it was found


def test_loss_terms_add_up_to_the_total(small):
    config, data = small
    torch.manual_seed(0)
    model = build_model(config)
    batch = walkthrough.sample_batch(data, per_class=1)
    terms = walkthrough.loss_terms(model, batch, config.replace(lambda_ce=2.0, lambda_dice=0.5))
    parts = terms.drop(index="total")
    assert parts["weighted"].sum() == pytest.approx(terms.loc["total", "value"], rel=1e-5)
    assert list(parts["weight"]) == [1.0, 2.0, 0.5] and terms.loc["Generalized Dice", "samples"] == "2 with a mask"
    assert abs(terms.loc["cross-entropy", "value"] - math.log(5)) < 0.5  # an untrained guess is near uniform


def test_a_few_training_steps_record_each_step(small):
    config, data = small
    model, history = walkthrough.short_training(config, data, steps=4, eval_every=2, val_cells=10)
    assert list(history["step"]) == [1, 2, 3, 4]
    assert history["val_accuracy"].notna().tolist() == [False, True, False, True]
    assert history[["total", "mse", "ce"]].notna().all().all() and not model.training
    pred = walkthrough.predict_batch(model, walkthrough.sample_batch(data, per_class=1))
    assert set(pred["pred_masks"].unique().tolist()) <= {0.0, 1.0}


def test_the_walkthrough_trains_with_the_trainers_step(small):
    """The same seed, the same batches: the walkthrough's short training and the trainer's epoch loop end with
    the same weights, bit for bit (they take the same ``train.train_step``)."""
    config, data = small
    config = config.replace(subset=1)
    data = walkthrough.splits(config)
    steps = 3
    model, _ = walkthrough.short_training(config, data, steps=steps, eval_every=steps + 1, val_cells=5)

    torch.manual_seed(config.seed)
    rt = runtime.Runtime.from_config(config)
    own = build_model(config).to(memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)
    optimizer = torch.optim.Adam(own.parameters(), lr=config.lr)
    loader = runtime.make_loader(data.train, config, rt, shuffle=True,
                                 generator=torch.Generator().manual_seed(config.seed))
    epochs = -(-steps // len(loader))
    scheduler = train.make_scheduler(optimizer, config.replace(epochs=epochs), len(loader), epochs)
    for epoch in range(epochs):
        batches = list(loader)[:steps - epoch * len(loader)]
        train.train_epoch(own, batches, MultiTaskLoss.from_config(config), optimizer, config, rt, epoch + 1,
                          batch_scheduler=scheduler)
    mine, theirs = own.state_dict(), model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
