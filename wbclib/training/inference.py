"""A trained model at work: loading it from a run (:func:`load_model`), the one forward-pass loop that every
caller runs it through (:func:`forward`), the predicted-mask rule, the metrics of a split (:func:`predict`,
:func:`summarise`; with a loss, the validation of a training run) and the examples the figures show.

Where the model runs (device, precision, loaders) is :mod:`wbclib.training.runtime`; the training step is
:func:`wbclib.training.train.train_step`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from wbclib import WbcError
from wbclib.core import config as cfg
from wbclib.core import faults
from wbclib.data import datasets
from wbclib.model.losses import LOSS_PARTS, Averages, LossParts
from wbclib.model.network import MultiTaskUNet, UNetOutput, build_model, describe_network
from wbclib.training import metrics, runs
from wbclib.training.runtime import Runtime, images_to_device, targets_to_device


class TrainingDiverged(WbcError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# -- the model of a run --------------------------------------------------------------------------------------

def load_model(run_or_file: str | Path, device: str | torch.device = "auto", precision: str = "auto",
               channels_last: bool | None = None) -> tuple[MultiTaskUNet, cfg.RunConfig, Runtime]:
    """The model of a finished (or interrupted) run in eval mode on its device, the config it was trained with,
    and the runtime to apply it with: ``device``, ``precision`` and ``channels_last`` as a config takes them
    ('auto' and None: what is fastest here), batches loaded in this process."""
    state = runs.load_checkpoint(run_or_file, map_location="cpu")
    config = cfg.from_dict(state["config"])
    rt = Runtime.from_config(config.replace(device=str(device), precision=precision, channels_last=channels_last,
                                            num_workers=0))
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise WbcError(f"{run_or_file}: its weights do not fit the network its config describes "
                       f"({describe_network(config)}); it was made by another program or config") from None
    return model.to(rt.device).eval(), config, rt


# -- the forward pass ----------------------------------------------------------------------------------------

@dataclass
class Forward:
    """One batch through the model: the batch as the loader gave it, its images on the device and the model's
    output (on the device). The properties are host copies of what callers keep."""

    batch: dict
    images: torch.Tensor
    out: UNetOutput

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) class logits, float32."""
        return self.out.class_logits.float().cpu()

    @property
    def embedding(self) -> torch.Tensor:
        """(B, D) embeddings, float32."""
        return self.out.embedding.float().cpu()

    @property
    def predictions(self) -> torch.Tensor:
        """(B,) predicted classes."""
        return self.out.class_logits.argmax(1).cpu()

    @property
    def reconstructions(self) -> torch.Tensor:
        """(B, 3, H, W) reconstructions, clamped to the image range [0, 1]."""
        return self.out.reconstruction.float().clamp(0, 1).cpu()

    @property
    def pred_masks(self) -> torch.Tensor:
        """(B, 1, H, W) predicted cell masks (0/1, float) of each sample's predicted class."""
        return predicted_mask(self.out.mask_logits, self.out.class_logits.argmax(1)).float().cpu()

    @property
    def mask_probabilities(self) -> torch.Tensor:
        """(B, 1, H, W) the probability of "cell" at each pixel, in the predicted class's mask channel."""
        return torch.sigmoid(class_mask(self.out.mask_logits, self.out.class_logits.argmax(1))).cpu()


def forward(model: torch.nn.Module, batches: Iterable[dict], rt: Runtime, keep_mode: bool = False) -> Iterator[Forward]:
    """The one forward-pass loop of the library: each batch's images through ``model`` on ``rt``'s device, in
    its memory format and under its autocast, without gradients. The model is put in evaluation mode first
    (``keep_mode``: its layers keep the modes they are in, as AdaBN needs). Batches are dicts with at least
    ``image``; training steps are :func:`wbclib.training.train.train_step`."""
    if not keep_mode:
        model.eval()
    for batch in batches:
        images = images_to_device(batch, rt)
        with torch.no_grad(), rt.autocast():
            out = model(images)
        yield Forward(batch, images, out)


def one_batch(model: torch.nn.Module, batch: dict, rt: Runtime | None = None) -> Forward:
    """:func:`forward` of a single batch (by default fp32 on the model's device)."""
    return next(forward(model, [batch], rt or Runtime.plain(next(model.parameters()).device)))


def class_mask(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The mask-logit channel of each sample's class: (B, C, H, W), (B,) -> (B, 1, H, W)."""
    index = classes.clamp(min=0)[:, None, None, None].expand(-1, 1, *mask_logits.shape[2:])
    return mask_logits.float().gather(1, index)


def predicted_mask(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The predicted cell mask, (B, 1, H, W) bool: the class's mask logit above 0 (probability above 0.5)."""
    return class_mask(mask_logits, classes) > 0


# -- the metrics of a split ---------------------------------------------------------------------------------

def check_finite(parts: LossParts | dict, epoch: int | None, step: int, phase: str = "training") -> dict[str, float]:
    """The loss parts as floats (``parts``: the loss's tensors, or a dict of floats); a NaN or infinite one raises
    :class:`TrainingDiverged`."""
    values = dict(parts) if isinstance(parts, dict) else parts.floats()
    bad = [k for k in (*LOSS_PARTS[1:], LOSS_PARTS[0]) if not math.isfinite(values[k])]  # the total last: it follows
    if bad:
        where = (f"epoch {epoch}, " if epoch is not None else "") + ("step" if phase == "training" else
                                                                     "validation batch")
        raise TrainingDiverged(f"loss became {values[bad[0]]} at {where} {step} (component: {bad[0]}); "
                               "the last good checkpoint is kept")
    return values


@torch.no_grad()
def predict(model, loader, rt: Runtime, loss_fn=None, epoch: int | None = None) -> dict:
    """Run ``model`` over ``loader``: logits, embeddings, labels, paths, loss means, PSNR, mask Dice/IoU.
    With ``loss_fn``, a NaN or infinite loss stops the run (``epoch`` names where, and the batch).

    Everything is accumulated where the model runs and reaches the host in one transfer at the end (on a GPU no
    batch waits for a copy); the loss means are then summed on the host in batch order."""
    avg = Averages()
    kept = {k: [] for k in ("logits", "embedding", "label", "losses", "n_masked", "seg")}
    paths, psnrs = [], []
    for f in forward(model, loader, rt):
        images, out = f.images, f.out
        labels, masks, has_mask = targets_to_device(f.batch, rt)
        if loss_fn is not None:
            parts = loss_fn(out, images, labels, masks, has_mask)
            bad = faults.poison("val-loss")
            if bad is not None:
                parts = parts._replace(mse=parts.mse + bad, total=parts.total + bad)
            kept["losses"].append(torch.stack([getattr(parts, k).detach().float() for k in LOSS_PARTS]))
            kept["n_masked"].append(loss_fn.dice_samples(labels, has_mask).sum())
        psnrs.append(metrics.psnr(out.reconstruction, images) * len(images))  # reduced on the device
        kept["logits"].append(out.class_logits.float())
        kept["embedding"].append(out.embedding.float())
        kept["label"].append(labels)
        paths += list(f.batch["path"])
        sel = has_mask.bool() & (labels >= 0)
        pred = predicted_mask(out.mask_logits, labels).squeeze(1).flatten(1)
        true = masks.squeeze(1).bool().flatten(1)  # per image: intersection, union, mask sizes, whether it counts
        kept["seg"].append(torch.stack([(pred & true).sum(1), (pred | true).sum(1), pred.sum(1) + true.sum(1),
                                        sel.long()], 1))
    host = {k: torch.cat(v).cpu() for k, v in kept.items() if v and k not in ("losses", "n_masked")}
    result = {k: host[k].numpy() for k in ("logits", "embedding", "label")}
    result["path"] = np.array(paths)
    if loss_fn is not None:
        losses = torch.stack(kept["losses"]).cpu().tolist()
        n_masked = torch.stack(kept["n_masked"]).cpu().tolist()
        sizes = [len(v) for v in kept["label"]]
        for step, (row, n, k) in enumerate(zip(losses, sizes, n_masked), start=1):
            avg.add(check_finite(dict(zip(LOSS_PARTS, row)), epoch, step, "validation"), n, int(k))
    result["losses"] = avg.means() if loss_fn is not None else None
    result["psnr"] = float(sum(psnrs) / max(len(result["label"]), 1))
    result["segmentation"] = result["segmentation_by_class"] = None
    seg = host["seg"].numpy() if "seg" in host else np.zeros((0, 4), dtype=np.int64)
    chosen = seg[:, 3] > 0
    if chosen.any():
        counts, mask_labels = seg[chosen, :3], result["label"][chosen]
        result["segmentation"] = metrics.segmentation_from_counts(*counts.T)
        result["segmentation_by_class"] = {int(c): metrics.segmentation_from_counts(*counts[mask_labels == c].T)
                                           for c in np.unique(mask_labels)}
    return result


def summarise(pred: dict, classes: tuple[str, ...], majority_class: int | None) -> dict:
    """Classification, reconstruction and mask metrics of one split, JSON-ready."""
    out = {"n": len(pred["label"]), "psnr": pred["psnr"]}
    if pred["losses"] is not None:
        out["loss"] = pred["losses"]
    if len(classes) > 1 and (pred["label"] >= 0).any():
        y_pred = pred["logits"].argmax(1)
        out.update(metrics.classification_metrics(pred["label"], y_pred, list(classes), majority_class))
    if pred["segmentation"] is not None:
        out["masks"] = pred["segmentation"]
    return out


@torch.no_grad()
def examples(run_dir: str | Path, n: int = 8, device: str = "cpu") -> dict:
    """A few images of a finished run for figures: from the reported split and, where masks exist, from the
    masked training images. Each entry holds ``images``, ``reconstructions``, ``masks``, ``pred_masks``
    (:func:`predicted_mask` of the predicted class), ``labels``, ``predictions`` and ``paths``."""
    model, config, rt = load_model(run_dir, device, precision="fp32", channels_last=False)
    splits = datasets.build_splits(config, datasets.data_root(config), check=False)  # validated when the run trained
    sets = {splits.report_name: splits.report.with_records(splits.report.records[:n])}
    masked = [r for r in splits.train.records if r.mask_path is not None][:n]
    if masked:
        sets["train_masks"] = splits.report.with_records(masked)
    result = {}
    for name, ds in sets.items():
        f = one_batch(model, default_collate([ds[i] for i in range(len(ds))]), rt)
        result[name] = {"images": f.images.cpu(), "reconstructions": f.reconstructions,
                        "masks": f.batch["mask"].float(), "has_mask": f.batch["has_mask"], "pred_masks": f.pred_masks,
                        "labels": f.batch["label"], "predictions": f.predictions, "paths": list(f.batch["path"])}
    return result
