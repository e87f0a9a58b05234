"""The ``wbc`` command: ``synth``, ``prepare``, ``train``, ``study``, ``evaluate``, ``predict``, ``book``.

User errors (a broken data root, a bad config value, a missing checkpoint) are printed as ``wbc: error: ...``
without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from wbclib import WBC_SUBSETS, WbcError
from wbclib.core import config as cfg
from wbclib.data.sources import CAM16_SPLIT, EBHI_GROUPING, named_by


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(cfg.PROFILES), default="quick", help="recipe defaults (quick: CPU)")
    p.add_argument("--data-root", help="course data root (default: the embedded real cells, see --data)")
    p.add_argument("--data", choices=cfg.DATA_SOURCES, default=None,
                   help="without --data-root: embedded real cells (default) or the synthetic stand-in")
    p.add_argument("--dataset", choices=cfg.DATASETS, default="wbc")
    p.add_argument("--subset", type=int, choices=WBC_SUBSETS, default=None, help="WBC subset (default 100)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--run-dir", required=True, help="where the run's artifacts go (e.g. runs/wbc10)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--masks", action=argparse.BooleanOptionalAction, default=None,
                   help="train the mask head with the Dice loss where masks exist (default: on)")
    p.add_argument("--init", help="checkpoint file or run directory to start from")
    p.add_argument("--skip-bad", action="store_true", default=None, help="leave unreadable files out")
    p.add_argument("--device", default=None, help="auto (default: CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=cfg.PRECISIONS, default=None,
                   help="auto (default: bf16 on CUDA and on CPUs with native bf16, else fp32), fp32 or bf16")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set lr=3e-4 --set base_width=32")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", choices=named_by("SOURCE"),
                   help="layout of --from: a WBC pool (pbc, raabin, segwbc, folders), a histology set for the CAM16 "
                        "stage (ebhi) or a CAM16-class test set (camelyon16)")
    p.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="the source dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder for the course layout")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="every random choice follows from it (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="validation share per class (default 0.2)")
    p.add_argument("--per-class", type=int, default=None, metavar="K", help="at most K images per class")
    p.add_argument("--balanced", action="store_true", help="cap every class at the smallest class's size")
    p.add_argument("--masked", default=None, metavar="KIND=DIR",
                   help="extra labelled set with masks (segwbc or folders): part held out, the rest trains")
    p.add_argument("--masked-held-out", type=float, default=0.3, metavar="F",
                   help="share of --masked per class kept as external/<KIND> (default 0.3)")
    p.add_argument("--external", action="append", default=[], metavar="NAME=DIR",
                   help="class-folder set copied to external/NAME (repeatable); NAME camelyon16 reads CAMELYON16 "
                        "patches and draws their tumour masks")
    p.add_argument("--tiles", default=None, metavar="DIR", help="photographs cut into pRCC_nolabel tiles")
    p.add_argument("--cam16", default=None, metavar="KIND=DIR",
                   help=f"histology set ({', '.join(named_by('--cam16'))}) for CAM16_100cls_10mask and, unless "
                        "--tiles is given, pRCC_nolabel")
    p.add_argument("--smear-tiles", default=None, metavar="DIR",
                   help="blood-smear photographs cut into smears_nolabel tiles (a second pretraining source)")
    p.add_argument("--grouping", default=None, metavar="SPEC",
                   help=f"histology classes into normal / tumor / tiles (default: '{EBHI_GROUPING}')")
    p.add_argument("--split", default=":".join(map(str, CAM16_SPLIT)), metavar="TRAIN:VAL:TEST",
                   help="histology split in percent per class (default 70:10:20, the course's CAM16 proportions)")
    p.add_argument("--mask-fraction", type=float, default=0.1, metavar="F",
                   help="share of the histology training images that keep their mask (default 0.1; the test "
                        "split keeps all)")
    p.add_argument("--tiles-per-image", type=int, default=None, metavar="K", help="at most K tiles per photo")
    p.add_argument("--size", type=int, default=None, metavar="N", help="resize so the shorter side is N")
    p.add_argument("--quality", type=int, default=90, metavar="Q",
                   help="JPEG quality of re-encoded images (default 90)")
    p.add_argument("--skip-bad", action="store_true", help="leave unusable source files out")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(a: argparse.Namespace) -> cfg.RunConfig:
    """Map ``wbc train`` flags onto a RunConfig (flags override --set, which overrides the profile)."""
    extra = dict(cfg.parse_assignment(s) for s in a.set)
    flags = {"data_root": a.data_root, "data": a.data, "dataset": a.dataset, "subset": a.subset, "epochs": a.epochs,
             "seed": a.seed, "masks": a.masks, "init": a.init, "skip_bad": a.skip_bad, "device": a.device,
             "precision": a.precision}
    return cfg.from_profile(a.profile, **{**extra, **{k: v for k, v in flags.items() if v is not None}})


def cmd_train(a) -> int:
    from wbclib.training import train

    config = config_from_args(a)
    metrics = train.fit(config, a.run_dir, resume=a.resume, progress=False if a.no_progress else None)
    acc = metrics.get("accuracy")
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"finished: {a.run_dir}" + (f"  {metrics['reported_split']} accuracy {acc:.4f}" if acc is not None else ""))
    return 0


def cmd_synth(a) -> int:
    from wbclib.data import synth

    summary = synth.generate(a.out, scale=a.scale, seed=a.seed, progress=not a.no_progress,
                             cam16_scale=a.cam16_scale)
    print(f"synthetic course data at {a.out} (scale {a.scale:g}, seed {a.seed})")
    return 0 if summary is not None else 1


def cmd_prepare(a) -> int:
    from wbclib.data import prepare as prep

    external: dict[str, str] = {}
    for text in a.external:
        name, path = prep.split_pair(text, "--external")
        if name in external:
            raise WbcError(f"--external {name} is given twice")
        external[name] = path
    try:
        split = tuple(int(v) for v in a.split.split(":"))
    except ValueError:
        raise WbcError(f"--split expects TRAIN:VAL:TEST percentages, got {a.split!r}") from None
    summary = prep.prepare(
        a.source, a.from_dir, a.out, seed=a.seed, val_fraction=a.val_fraction, per_class=a.per_class,
        balanced=a.balanced, masked=prep.split_pair(a.masked, "--masked") if a.masked else None,
        masked_held_out=a.masked_held_out, external=external, tiles=a.tiles, tiles_per_image=a.tiles_per_image,
        size=a.size, quality=a.quality, skip_bad=a.skip_bad, progress=False if a.no_progress else None,
        cam16=prep.split_pair(a.cam16, "--cam16") if a.cam16 else None, smear_tiles=a.smear_tiles,
        grouping=a.grouping or EBHI_GROUPING, split=split, mask_fraction=a.mask_fraction)
    print(_prepare_table(summary))
    return 0


def _prepare_table(summary: dict) -> str:
    """Images per split and class (masks in brackets), then what was left out and where the manifest is."""
    from wbclib import CAM16_CLASSES, WBC_CLASSES

    seen = {c for per_class in summary["counts"].values() for c in per_class}
    classes = [c for c in (*WBC_CLASSES, *CAM16_CLASSES) if c in seen] + sorted(
        seen - {*WBC_CLASSES, *CAM16_CLASSES})
    names = [c[:10] for c in classes]
    width = max([22, *(len(k) + 2 for k in summary["counts"])])
    lines = [f"prepared {summary['out']} ({summary['files']} files)",
             f"{'split':<{width}}" + "".join(f"{n:>12}" for n in names) + f"{'total':>12}"]
    for key, per_class in summary["counts"].items():
        cells = [per_class.get(c) for c in classes]
        total = {k: sum(v[k] for v in per_class.values()) for k in ("images", "masks")}
        row = ["" if v is None else f"{v['images']} ({v['masks']})" if v["masks"] else str(v["images"])
               for v in cells + [total]]
        lines.append(f"{key:<{width}}" + "".join(f"{r:>12}" for r in row))
    if any(v["masks"] for per_class in summary["counts"].values() for v in per_class.values()):
        lines.append("(masks in brackets)")
    left = ", ".join(f"{k} {n}" for k, n in summary["left_out"].items())
    lines.append(f"left out (classes not taken): {left or 'none'}")
    if summary["skipped"]:
        lines.append(f"bad files left out: {summary['skipped']} (listed in the manifest)")
    lines.append(f"manifest: {summary['manifest']}")
    return "\n".join(lines)


def cmd_study(a) -> int:
    from wbclib.study import runner

    options = runner.Options(profile=a.profile, data=a.data, data_root=a.data_root, seeds=a.seeds, only=a.only,
                            runs_dir=a.runs_dir, jobs=a.jobs, external=a.external,
                            overrides=dict(cfg.parse_assignment(s) for s in a.set), no_book=a.no_book,
                            book_root=a.book_root, dry_run=a.dry_run, walkthrough_steps=a.walkthrough_steps,
                            smear_chain=a.smear_chain, executor=a.executor, retries=a.retries, detach=a.detach,
                            slots_per_gpu=a.slots_per_gpu)
    if a.executor == "slurm":
        from wbclib.study import cluster

        options.slurm = {"path": a.cluster_config, "partition": a.partition, "account": a.account, "time": a.time,
                         "gpus": a.gpus, "cpus": a.cpus, "mem": a.mem, "sbatch": cluster.parse_sbatch(a.sbatch)}
        cluster.load_settings(**options.slurm)  # a bad flag or config file fails before anything runs
        if not a.dry_run:
            cluster.require_slurm()
    elif a.detach or a.cluster_config or a.sbatch or any(v is not None for v in (
            a.partition, a.account, a.time, a.gpus, a.cpus, a.mem)):
        raise WbcError("--detach, --cluster-config, --partition, --account, --time, --gpus, --cpus, --mem and "
                       "--sbatch go with --executor slurm")
    return runner.run(options, log=print)


RESCALE_HELP = ("first rescale each image so that its cell, as the model's mask head sees it, covers the share of "
                "the frame the training cells cover (for images from another microscope or crop framing)")


def cmd_evaluate(a) -> int:
    from pathlib import Path

    from wbclib.results import evaluate

    result = evaluate.evaluate(a.checkpoint, a.data, a.out, a.mask_threshold, a.skip_bad,
                               progress=not a.no_progress and sys.stderr.isatty(), adabn=a.adabn,
                               rescale_to_mask=a.rescale_to_mask)
    if "adabn" in result:
        what = result["adabn"]
        print(f"adabn: {what['layers']} BatchNorm layer(s) re-estimated on {what['images']} images"
              if what["layers"] else f"adabn: {what['note']}")
    if "rescale" in result:
        print(f"rescale-to-mask: {result['rescale']['summary']}")
    line = (f"{result['n']} images: accuracy {result['accuracy']:.4f}, balanced accuracy "
            f"{result['balanced_accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f} (majority class "
            f"{result['majority_baseline']:.4f})")
    if result["missing_classes"]:
        line += f"; classes absent from the set: {', '.join(result['missing_classes'])}"
    print(line)
    print(f"written: {Path(a.out) / 'metrics.json'}, confusion.png, predictions.csv")
    return 0


def cmd_predict(a) -> int:
    from pathlib import Path

    from wbclib.results import evaluate

    text = evaluate.predict_images(a.checkpoint, a.inputs, a.out, progress=not a.no_progress and sys.stderr.isatty(),
                                   rescale_to_mask=a.rescale_to_mask)
    if a.out:
        print(f"written: {Path(a.out) / 'predictions.csv'} and one PNG per image")
    else:
        sys.stdout.write(text)
    return 0


def cmd_book(a) -> int:
    from wbclib.core import storage
    from wbclib.data.datasets import EMBEDDED, cache_dir
    from wbclib.study import book

    book.require_checkout()
    if a.book_root:
        storage.refuse_inside(a.book_root, [EMBEDDED, cache_dir()], "--book-root")
    print(f"book: {book.build_book(book.prepare_book_root(a.book_root))}")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wbc", description="White-blood-cell classification with a multi-task UNet.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one configuration into a run directory")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synth", help="write the synthetic stand-in of the course data")
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the course's image counts")
    p.add_argument("--cam16-scale", type=float, default=None, help="scale of the CAM16 part (default: --scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="turn a public WBC dataset into the course layout")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("study", help="run the report's grid of configurations and build the book")
    p.add_argument("--profile", choices=sorted(cfg.PROFILES), default="quick")
    p.add_argument("--data-root", help="course data root (default: the embedded real cells, see --data)")
    p.add_argument("--data", choices=cfg.DATA_SOURCES, default="embedded",
                   help="without --data-root: embedded real cells (default) or the synthetic stand-in")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (quick: 1, paper: 3)")
    p.add_argument("--only", default=None, metavar="PATTERN",
                   help="glob over run ids, e.g. 'wbc10-*' (several: separated by commas)")
    p.add_argument("--smear-chain", action="store_true",
                   help="also pretrain on blood-smear tiles instead of H&E, for WBC_1 and WBC_10 (the book compares "
                        "both chains with training from scratch)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--jobs", type=int, default=None,
                   help="configurations run side by side (default: one per GPU; two on a CPU with two or more cores)")
    p.add_argument("--slots-per-gpu", type=positive_int, default=1, metavar="K",
                   help="independent runs side by side on each GPU (default 1; --jobs defaults to GPUs x K; each "
                        "slot is pinned to one GPU; no effect on a CPU)")
    p.add_argument("--external", action="append", default=None, metavar="DIR",
                   help="class-folder set to evaluate the models on (repeatable; default with the embedded data: "
                        "its BCCD crops and held-out segwbc cells, and the CAMELYON16 patches for the CAM16 models)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    p.add_argument("--no-book", action="store_true", help="skip the analysis notebook and the book")
    p.add_argument("--walkthrough-steps", type=int, default=None, metavar="N",
                   help="training steps of the book's walkthrough page (default: its own, 300; 0 skips it)")
    p.add_argument("--book-root", default=None, help="folder the book is built in (default: the project)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    c = p.add_argument_group("running on a cluster (--executor slurm; see the book's 'Running on a cluster')")
    c.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: side by side on this machine (default); slurm: one Slurm job per run, via submitit")
    c.add_argument("--retries", type=int, default=None, metavar="N",
                   help="start a run whose process died (cancelled, preempted, out of memory, node failure) again "
                        "up to N times, from its checkpoint (default: 2 with slurm, 0 locally)")
    c.add_argument("--detach", action="store_true",
                   help="submit the whole grid (dependants held with afterok) and exit; the same command without "
                        "--detach later waits for the jobs and builds the book")
    c.add_argument("--cluster-config", default=None, metavar="FILE",
                   help="YAML with partition, account, time, gpus, cpus, mem, sbatch (a mapping), setup (shell lines)")
    c.add_argument("--partition", default=None)
    c.add_argument("--account", default=None)
    c.add_argument("--time", default=None, metavar="LIMIT", help="time limit per job, minutes or [D-]HH:MM:SS "
                                                                  "(default 4:00:00; a job at its limit resumes)")
    c.add_argument("--gpus", type=int, default=None, metavar="N", help="GPUs per job (default 1; 0 on a CPU cluster)")
    c.add_argument("--cpus", type=int, default=None, metavar="N", help="CPU cores per job (default: the cluster's)")
    c.add_argument("--mem", default=None, metavar="SIZE", help="memory per job, e.g. 32G (default: the cluster's)")
    c.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch qos=normal --sbatch constraint=a100 (repeatable)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("evaluate", help="metrics of a trained model on a class-folder set")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--data", required=True, help="<dir>/<Class>/* (or <dir>/data/<Class> + <dir>/mask/<Class>)")
    p.add_argument("--out", required=True)
    p.add_argument("--mask-threshold", type=int, default=None, help="mask pixel >= this is cell (default 128)")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--adabn", action="store_true",
                   help="first re-estimate the BatchNorm statistics on the set's images (AdaBN; labels unused)")
    p.add_argument("--rescale-to-mask", action="store_true", help=RESCALE_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with a trained model")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", default=None, help="folder for predictions.csv and one PNG per image")
    p.add_argument("--rescale-to-mask", action="store_true", help=RESCALE_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("book", help="build the book from the executed notebooks in book/generated")
    p.add_argument("--book-root", default=None, help="folder the book is built in (default: the project)")
    p.set_defaults(func=cmd_book)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WbcError as exc:
        print(f"wbc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wbc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
