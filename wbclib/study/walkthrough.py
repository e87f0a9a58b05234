"""Helpers of the teaching walkthrough (``notebooks/walkthrough.ipynb``): a few real cells, the model's parts,
the loss terms of one batch, a short training that records every step, and the embeddings of held-out cells.

Everything here calls the same library code as the study (the model, the losses, the data readers and the
transforms), at a size that trains in a couple of minutes on two CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import default_collate

from wbclib.core import config as cfg
from wbclib.data.datasets import Splits, build_splits, data_root
from wbclib.model.losses import LOSS_PARTS, MASKED_PART, MultiTaskLoss
from wbclib.model.network import MultiTaskUNet, build_model
from wbclib.training import inference, runtime, train


def walkthrough_config(subset: int = 100, batch_size: int = 16, lambda_ce: float = cfg.RunConfig.lambda_ce,
                       lambda_dice: float = cfg.RunConfig.lambda_dice, base_width: int = 16, lr: float = 2e-3,
                       seed: int = 0) -> cfg.RunConfig:
    """The quick profile on the embedded real cells, with the walkthrough's knobs (on the CPU, every step in the
    main process)."""
    return cfg.from_profile("quick", dataset="wbc", subset=subset, data="embedded", batch_size=batch_size,
                            lambda_ce=lambda_ce, lambda_dice=lambda_dice, base_width=base_width, lr=lr, seed=seed,
                            num_workers=0, device="cpu")


def splits(config: cfg.RunConfig) -> Splits:
    """The training and validation cells of ``config`` (the embedded real cells, already checked when shipped)."""
    return build_splits(config, data_root(config), check=False)


def sample_batch(data: Splits, per_class: int = 2) -> dict:
    """A small batch of training cells in evaluation view (centre crop, no augmentation): the cells that have a
    mask first, then ``per_class`` cells of each class; a dict of stacked tensors plus the file paths."""
    ds = data.train
    records = ds.records
    chosen = [i for i, r in enumerate(records) if r.mask_path is not None][:per_class * 2]
    for c in range(len(data.classes)):
        chosen += [i for i, r in enumerate(records) if r.label == c and i not in chosen][:per_class]
    view = data.report.with_records([records[i] for i in chosen])  # the evaluation transform
    return default_collate([view[i] for i in range(len(view))])


def model_parts(model: MultiTaskUNet, images: torch.Tensor) -> pd.DataFrame:
    """One row per named part of the network: what it does, its output shape for ``images`` and its
    parameters (recorded with forward hooks during one forward pass in eval mode)."""
    roles = {"inc": "encoder, first level", "bottleneck": "encoder, bottleneck",
             "classifier": "classification branch (down, pool, linear)",
             "reconstruction_head": "reconstruction head (1x1 conv, sigmoid)", "mask_head": "mask head (1x1 conv)"}
    parts = [("inc", model.inc)]
    parts += [(f"downs.{i}", m) for i, m in enumerate(model.downs)]
    parts += [("bottleneck", model.bottleneck)]
    parts += [(f"ups.{i}", m) for i, m in enumerate(model.ups)]
    parts += [("classifier", model.classifier), ("reconstruction_head", model.reconstruction_head),
              ("mask_head", model.mask_head)]
    shapes: dict[str, str] = {}

    def hook(name):
        def record(_module, _inputs, output):
            out = output[1] if isinstance(output, tuple) else output  # the classifier: (logits, embedding)
            shapes[name] = " × ".join(map(str, out.shape[1:]))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in parts]
    was_training = model.training
    try:
        inference.one_batch(model, {"image": images})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = []
    for name, m in parts:
        role = roles.get(name) or ("encoder, level " + str(int(name.split(".")[1]) + 2) if name.startswith("downs")
                                   else "decoder, level " + str(len(model.ups) - int(name.split(".")[1])))
        shape = shapes[name] + (" (embedding)" if name == "classifier" else "")
        rows.append({"part": name, "role": role, "output (channels × height × width)": shape,
                     "parameters": sum(p.numel() for p in m.parameters())})
    return pd.DataFrame(rows).set_index("part")


def loss_terms(model: MultiTaskUNet, batch: dict, config: cfg.RunConfig) -> pd.DataFrame:
    """Each term of the objective the run of ``config`` trains (:meth:`MultiTaskLoss.from_config`) on one batch
    (one forward pass in eval mode): its value, its weight and its share of the total, with how many samples
    each term sees."""
    loss, rt = MultiTaskLoss.from_config(config), runtime.Runtime.plain(next(model.parameters()).device)
    f = inference.one_batch(model, batch, rt)
    labels, masks, has_mask = runtime.targets_to_device(batch, rt)
    with torch.no_grad():
        parts = loss(f.out, f.images, labels, masks, has_mask)
    n, masked = len(f.images), int(loss.dice_samples(labels, has_mask).sum())
    rows = [("reconstruction MSE", float(parts.mse), 1.0, f"all {n}"),
            ("cross-entropy", float(parts.ce), loss.lambda_ce, f"all {n} (labelled)"),
            ("Generalized Dice", float(parts.dice), loss.lambda_dice, f"{masked} with a mask")]
    total = float(parts.total)
    df = pd.DataFrame([{"term": t, "value": v, "weight": w, "weighted": w * v,
                        "share of total": (w * v / total if total else 0.0), "samples": s} for t, v, w, s in rows])
    return pd.concat([df, pd.DataFrame([{"term": LOSS_PARTS[0], "value": total, "weight": None, "weighted": total,
                                         "share of total": 1.0, "samples": f"{n}"}])]).set_index("term")


def evaluate(model: MultiTaskUNet, dataset, rt: runtime.Runtime, batch_size: int = 64) -> dict:
    """Accuracy, embeddings, labels and predictions of ``model`` on ``dataset`` (eval mode; the model is left in
    it)."""
    pred = inference.predict(model, torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False), rt)
    y, p = pred["label"], pred["logits"].argmax(1)
    return {"accuracy": float((y == p).mean()), "embedding": pred["embedding"], "label": y, "prediction": p}


def held_out(data: Splits, n: int, seed: int = 0):
    """``n`` validation cells drawn evenly over the classes (all of them if ``n`` is larger)."""
    records = data.val.records
    if n >= len(records):
        return data.val
    rng = np.random.default_rng(seed)
    per = max(1, n // len(data.classes))
    picked = []
    for c in range(len(data.classes)):
        idx = [i for i, r in enumerate(records) if r.label == c]
        picked += [records[i] for i in rng.permutation(idx)[:per]]
    return data.val.with_records(picked)


def short_training(config: cfg.RunConfig, data: Splits, steps: int = 300, eval_every: int = 50,
                   val_cells: int = 200) -> tuple[MultiTaskUNet, pd.DataFrame]:
    """Train a fresh model for ``steps`` optimiser steps with the study's loss, Adam, clipping and warm-up +
    cosine schedule, recording every step's loss terms and, every ``eval_every`` steps, the accuracy on
    ``val_cells`` held-out cells. Returns the model (eval mode) and the history (one row per step)."""
    torch.manual_seed(config.seed)
    rt = runtime.Runtime.from_config(config)
    model = build_model(config).to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = MultiTaskLoss.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    loader = runtime.make_loader(data.train, config, rt, shuffle=True, generator=generator)
    epochs = max(1, -(-steps // len(loader)))
    scheduler = train.make_scheduler(optimizer, config.replace(epochs=epochs), len(loader), epochs)
    val = held_out(data, val_cells, config.seed)
    rows, step, t0 = [], 0, time.time()
    while step < steps:
        for batch in loader:
            step += 1
            done = train.train_step(model, batch, loss_fn, optimizer, config, rt,
                                    scheduler if config.lr_schedule == "cosine" else None, step=step)
            row = {"step": step, **done.losses, "val_accuracy": np.nan, "seconds": time.time() - t0}
            if not done.masked:  # no sample of the batch had a mask: the Dice term saw nothing
                row[MASKED_PART] = np.nan
            if step % eval_every == 0 or step == steps:
                row["val_accuracy"] = evaluate(model, val, rt)["accuracy"]
            rows.append(row)
            if step >= steps:
                break
    model.eval()
    return model, pd.DataFrame(rows, columns=["step", *LOSS_PARTS, "val_accuracy", "seconds"])


def predict_batch(model: MultiTaskUNet, batch: dict) -> dict:
    """Reconstructions, predicted classes and the predicted class's mask (probability > 0.5) of a batch."""
    f = inference.one_batch(model, batch)
    return {"reconstructions": f.reconstructions, "predictions": f.predictions, "pred_masks": f.pred_masks,
            "mask_probabilities": f.mask_probabilities}
