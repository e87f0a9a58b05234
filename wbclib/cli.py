"""The ``wbc`` command: ``synth``, ``train``, ``study``, ``evaluate``, ``predict``, ``book``.

User errors (a broken data root, a bad config value, a missing checkpoint) are printed as ``wbc: error: ...``
without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import WbcError
from . import config as cfg


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(cfg.PROFILES), default="quick", help="recipe defaults (quick: CPU)")
    p.add_argument("--data-root", help="course data root (default: the synthetic stand-in, generated once)")
    p.add_argument("--dataset", choices=cfg.DATASETS, default="wbc")
    p.add_argument("--subset", type=int, choices=(1, 10, 50, 100), default=None, help="WBC subset (default 100)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--run-dir", required=True, help="where the run's artifacts go (e.g. runs/wbc10)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--masks", action=argparse.BooleanOptionalAction, default=None,
                   help="train the mask head with the Dice loss where masks exist (default: on)")
    p.add_argument("--init", help="checkpoint file or run directory to start from")
    p.add_argument("--skip-bad", action="store_true", default=None, help="leave unreadable files out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, e.g. --set lr=3e-4 --set base_width=32")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(a: argparse.Namespace) -> cfg.RunConfig:
    """Map ``wbc train`` flags onto a RunConfig (flags override --set, which overrides the profile)."""
    extra = dict(cfg.parse_assignment(s) for s in a.set)
    flags = {"data_root": a.data_root, "dataset": a.dataset, "subset": a.subset, "epochs": a.epochs,
             "seed": a.seed, "masks": a.masks, "init": a.init, "skip_bad": a.skip_bad}
    return cfg.from_profile(a.profile, **{**extra, **{k: v for k, v in flags.items() if v is not None}})


def cmd_train(a) -> int:
    from . import train

    config = config_from_args(a)
    metrics = train.fit(config, a.run_dir, resume=a.resume, progress=False if a.no_progress else None)
    acc = metrics.get("accuracy")
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    print(f"finished: {a.run_dir}" + (f"  {metrics['reported_split']} accuracy {acc:.4f}" if acc is not None else ""))
    return 0


def cmd_synth(a) -> int:
    from . import synth

    summary = synth.generate(a.out, scale=a.scale, seed=a.seed, progress=not a.no_progress,
                             cam16_scale=a.cam16_scale)
    print(f"synthetic course data at {a.out} (scale {a.scale:g}, seed {a.seed})")
    return 0 if summary is not None else 1


def cmd_study(a) -> int:
    from . import study

    return study.main(a)


def cmd_evaluate(a) -> int:
    from . import evaluate

    return evaluate.evaluate_command(a)


def cmd_predict(a) -> int:
    from . import evaluate

    return evaluate.predict_command(a)


def cmd_book(a) -> int:
    from . import study

    return study.build_book_command(a)


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

    p = sub.add_parser("study", help="run the report's grid of configurations and build the book")
    p.add_argument("--profile", choices=sorted(cfg.PROFILES), default="quick")
    p.add_argument("--data-root", help="course data root (default: the synthetic stand-in)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (quick: 1, paper: 3)")
    p.add_argument("--only", default=None, metavar="PATTERN", help="glob over run ids, e.g. 'wbc10-*'")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--jobs", type=int, default=None,
                   help="configurations run side by side (default: one per GPU when there are several, else 1)")
    p.add_argument("--external", default=None, metavar="DIR", help="class-folder set to evaluate the models on")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    p.add_argument("--no-book", action="store_true", help="skip the analysis notebook and the book")
    p.add_argument("--book-root", default=None, help="folder the book is built in (default: the project)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("evaluate", help="metrics of a trained model on a class-folder set")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--data", required=True, help="<dir>/<Class>/* (or <dir>/data/<Class> + <dir>/mask/<Class>)")
    p.add_argument("--out", required=True)
    p.add_argument("--mask-threshold", type=int, default=None, help="mask pixel >= this is cell (default 128)")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with a trained model")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", default=None, help="folder for predictions.csv and one PNG per image")
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
