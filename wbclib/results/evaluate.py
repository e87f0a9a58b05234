"""Apply a trained model: ``wbc evaluate`` on a labelled class-folder set, ``wbc predict`` on any images.

Images are loaded as the checkpoint's own config says (the shorter side resized by the rule of ``wbc prepare
--size``, :func:`wbclib.data.images.load_image`), then centre-cropped, whatever their size: a full-size image and its
prepared copy give the model the same pixels. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from tqdm import tqdm

from wbclib import WbcError
from wbclib.core import storage
from wbclib.data import datasets, images, layout, readers, transforms
from wbclib.results import rescale
from wbclib.results.adabn import adapt_batchnorm
from wbclib.training import metrics, runs
from wbclib.training.inference import forward, load_model, predict
from wbclib.training.runtime import make_loader


def _dataset(records, classes, config, root=None, mask_threshold=None):
    return datasets.CellDataset(records, classes, transforms.build(config.input_size, config.resize, train=False),
                            mask_threshold if mask_threshold is not None else config.mask_threshold,
                            config.resize, root, config.resize_quality)


def _loader(ds, config, rt):
    """In-order batches of at least 32 images (inference has no reason for the training batch size)."""
    return make_loader(ds, config.replace(batch_size=max(config.batch_size, 32)), rt)


def _adapt(model, ds, config, rt) -> dict:
    """AdaBN on the images of ``ds`` (see :func:`wbclib.results.adabn.adapt_batchnorm`); what was done, for
    metrics.json."""
    layers = adapt_batchnorm(model, _loader(ds, config, rt), rt)
    if not layers:
        return {"layers": 0, "images": len(ds), "note": "the model has no BatchNorm layer (norm="
                f"{config.norm}); AdaBN changes nothing"}
    return {"layers": layers, "images": len(ds), "note": "BatchNorm statistics re-estimated on this set's images "
            "(labels not used)"}


def _run(model, ds, config, rt, progress: bool) -> dict:
    loader = _loader(ds, config, rt)
    if progress:
        loader = tqdm(loader, desc="images", unit="batch", total=len(loader))
    return predict(model, loader, rt)


def embed_folder(checkpoint, folder, mask_threshold=None, skip_bad: bool = False, progress: bool = False) -> dict:
    """Embeddings, labels and predictions of a class-folder set under a trained model (for t-SNE)."""
    model, config, rt = load_model(checkpoint)
    classes = config.classes
    records, root = readers.folder_records(folder, classes, skip_bad=skip_bad)
    pred = _run(model, _dataset(records, classes, config, root, mask_threshold), config, rt, progress)
    pred["prediction"] = pred["logits"].argmax(1)
    return pred


def evaluate(checkpoint, folder, out, mask_threshold=None, skip_bad: bool = False, progress: bool = False,
             adabn: bool = False, rescale_to_mask: bool = False) -> dict:
    """Metrics of a trained model on a labelled class-folder set; writes metrics.json, confusion.png and
    predictions.csv under ``out`` (never inside the data folder). With ``adabn``, the BatchNorm statistics are
    first re-estimated on the set's images (AdaBN; their labels are not used), and ``result["adabn"]`` says
    what was adapted (nothing for a GroupNorm model). With ``rescale_to_mask``, each image is first brought to
    the training cells' scale from the mask the model predicts (:mod:`wbclib.results.rescale`)."""
    from wbclib.results import plots

    out = Path(out)
    model, config, rt = load_model(checkpoint)
    classes = config.classes
    storage.refuse_inside(out, [folder], "--out")
    _same_task(checkpoint, config, folder)
    records, root = readers.folder_records(folder, classes, skip_bad=skip_bad)
    ds = _dataset(records, classes, config, root, mask_threshold)
    if rescale_to_mask:
        ds = rescale.rescaled_dataset(model, ds, config, rt, lambda d: _loader(d, config, rt), adabn=adabn)
    adapted = _adapt(model, ds, config, rt) if adabn else None
    pred = _run(model, ds, config, rt, progress)
    y_pred = pred["logits"].argmax(1)
    result = {"checkpoint": str(runs.resolve_checkpoint(checkpoint)), "data": str(Path(folder).resolve()),
              **metrics.classification_metrics(pred["label"], y_pred, list(classes)), "psnr": pred["psnr"]}
    if adapted is not None:
        result["adabn"] = adapted
    if rescale_to_mask:
        result["rescale"] = rescale.describe(ds)
    if pred["segmentation"] is not None:
        result["masks"] = pred["segmentation"]
        result["masks_by_class"] = {classes[c]: v for c, v in pred["segmentation_by_class"].items()}
    out.mkdir(parents=True, exist_ok=True)
    storage.write_json(out / "metrics.json", result)
    fig = plots.confusion_matrix_plot(result["confusion_matrix"], list(classes), title=Path(folder).name)
    fig.savefig(out / "confusion.png", dpi=120)
    storage.write_atomic(out / "predictions.csv", _csv(pred["path"], pred["logits"], classes, pred["label"]))
    return result


def external_dir(run_dir, name: str, adabn: bool = False) -> Path:
    """Where a run's evaluation on the labelled set ``name`` is kept: ``<run_dir>/external-<name>[-adabn]``."""
    return Path(run_dir) / (f"external-{name}" + ("-adabn" if adabn else ""))


def evaluate_into_run(run_dir, name: str, folder, adabn: bool = False) -> dict:
    """:func:`evaluate` of a run on one labelled set, written into the run directory
    (``external-<name>[-adabn]/``, never into the set), and reused while it is newer than the run's checkpoint
    and was made from the same folder in the same mode."""
    run_dir, out = Path(run_dir), external_dir(run_dir, name, adabn)
    m = storage.read_json(out / "metrics.json")
    if (m and m.get("data") == str(Path(folder).resolve()) and ("adabn" in m) == adabn
            and (out / "predictions.csv").is_file() and runs.is_current(out / "metrics.json", run_dir)):
        return m
    return evaluate(run_dir, folder, out, adabn=adabn)


def _same_task(checkpoint, config, folder) -> None:
    """Refuse a model that cannot classify the set: a pRCC model (no classes) or one whose classes are none of
    the set's class folders (a CAM16 normal/tumor model given WBC cells, or the reverse)."""
    if config.num_classes < 2:
        raise WbcError(f"{checkpoint} is a {config.dataset} model (reconstruction only, no classifier); "
                       "evaluate a model trained on labelled cells")
    names = layout.class_folder_names(folder)
    if names and not any(readers.canonical_class(n, config.classes) is not None for n in names):
        raise WbcError(f"{checkpoint} is a {config.dataset} model (classes {', '.join(config.classes)}), but the "
                       f"class folders of {folder} are {', '.join(names[:8])}: give a model of the same task")


def _csv(paths, logits, classes, labels=None) -> str:
    probs = torch.softmax(torch.as_tensor(logits), 1).numpy()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *(["true_class"] if labels is not None else []), "predicted_class",
                *[f"p_{c}" for c in classes]])
    for i, p in enumerate(paths):
        truth = [classes[labels[i]]] if labels is not None else []
        w.writerow([p, *truth, classes[int(probs[i].argmax())], *[f"{v:.4f}" for v in probs[i]]])
    return buf.getvalue()


def _is_wbc_output(folder: Path) -> bool:
    """Whether ``folder`` holds what ``wbc predict`` or ``wbc evaluate`` wrote (their predictions.csv)."""
    try:
        with open(folder / "predictions.csv") as f:
            head = f.readline()
    except OSError:
        return False
    return head.startswith("path,") and ",predicted_class," in head


def image_files(inputs) -> list[Path]:
    """Image files named directly or found (recursively) in the given folders; a clear error otherwise.

    Folders that hold the output of ``wbc predict`` or ``wbc evaluate`` (their PNGs are figures, not cells)
    are refused."""
    files, problems = [], readers.Problems(Path("."), "image files (.jpg/.png/.bmp/.tif) or folders holding them")
    for item in map(Path, inputs):
        if item.is_dir():
            outputs = [d for d in [item, *item.rglob("*")] if d.is_dir() and _is_wbc_output(d)]
            if outputs:
                raise WbcError(f"{outputs[0]} holds the output of an earlier wbc predict or evaluate "
                               "(predictions.csv and figures), not cells: give the folders of the images")
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in layout.IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
        elif item.is_file():
            files.append(item)
        else:
            problems.add(item, "not found")
    for f in files:
        why = images.check_image(f)
        if why:
            problems.add(f, why)
    problems.settle(skip_bad=False)
    if not files:
        raise WbcError("no image found in " + ", ".join(map(str, inputs)))
    return files


def predict_images(checkpoint, inputs, out=None, progress: bool = False, rescale_to_mask: bool = False) -> str:
    """Class probabilities of each image as CSV; with ``out``, also one PNG per image (input, reconstruction,
    predicted mask). With ``rescale_to_mask``, each image is first brought to the training cells' scale
    (:mod:`wbclib.results.rescale`; the PNGs show the rescaled input). Returns the CSV text."""
    import matplotlib.pyplot as plt

    from wbclib.results import plots

    if out:  # never inside a folder it reads, whose next recursive predict would take the PNGs for cells
        storage.refuse_inside(out, [p if Path(p).is_dir() else Path(p).parent for p in inputs], "--out")
    model, config, rt = load_model(checkpoint)
    classes = config.classes
    if config.num_classes < 2:
        raise WbcError(f"{checkpoint} is a {config.dataset} model (reconstruction only, no classifier); "
                       "predict with a model trained on labelled cells")
    files = image_files(inputs)
    ds = _dataset([readers.Record(f) for f in files], classes, config)
    if rescale_to_mask:
        ds = rescale.rescaled_dataset(model, ds, config, rt, lambda d: _loader(d, config, rt))
    logits, out_dir = [], Path(out) if out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    with tqdm(total=len(files), desc="images", unit="img", disable=not progress) as bar:
        for f in forward(model, _loader(ds, config, rt), rt):
            logits.append(f.logits)
            if out_dir:
                pred, masks, recon, images = f.predictions, f.pred_masks, f.reconstructions, f.batch["image"]
                for j in range(len(images)):
                    name = f"{done + j:05d}_{Path(f.batch['path'][j]).stem}.png"
                    fig = plots.reconstruction_grid(images[j:j + 1], recon[j:j + 1], pred_masks=masks[j:j + 1],
                                                    titles=[classes[int(pred[j])]], n=1)
                    fig.savefig(out_dir / name, dpi=100)
                    plt.close(fig)
            done += len(f.images)
            bar.update(len(f.images))
    text = _csv([str(f) for f in files], torch.cat(logits).numpy(), classes)
    if out_dir:
        storage.write_atomic(out_dir / "predictions.csv", text)
    return text
