"""Does a model care how its images were resized? The embedded validation cells against their full-size originals.

    python benchmarks/full_size_originals.py RUN_DIR [--pbc ../shared/data/pbc] [--out OUTDIR]

The 400 validation cells of ``embedded/`` are 96-pixel copies that ``wbc prepare --size 96`` made from PBC
JPEGs of 360 x 363 pixels. This script finds the originals of those very cells in the public PBC copy (by file
name, the names the manifest lists), arranges them as a class-folder set in a scratch folder, and runs
``wbc evaluate`` of the trained model in RUN_DIR on both sets. It prints one JSON object: the balanced accuracy
and accuracy on each, their difference in points, and the share of cells given the same class on both.
Nothing is written inside the embedded folder or the PBC copy.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path

from wbclib.data import datasets, layout
from wbclib.results import evaluate


def originals(pbc: Path, out: Path) -> Path:
    """The full-size PBC originals of the embedded validation cells, as ``out/<Class>/<name>.jpg``."""
    index = {p.name: p for p in pbc.rglob("*.jpg")}
    val = layout.images(layout.wbc_split(datasets.EMBEDDED, 100, "val"))
    for folder in layout.visible(val):
        for f in layout.visible(folder):
            if f.name not in index:
                sys.exit(f"{f.name}: no original of this embedded cell under {pbc}")
            (out / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(index[f.name], out / folder.name / f.name)
    return out


def _classes(folder: Path) -> dict[str, str]:
    return {r["path"].split("/")[-1]: r["predicted_class"] for r in csv.DictReader((folder / "predictions.csv").open())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--pbc", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"))
    ap.add_argument("--out", default=None, help="where the evaluations go (default: a temporary folder)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        full = originals(Path(a.pbc), Path(tmp) / "originals")
        emb = evaluate.evaluate(a.run_dir, datasets.EMBEDDED / "WBC_100" / "val", out / "embedded")
        org = evaluate.evaluate(a.run_dir, full, out / "originals")
        same = _classes(out / "embedded"), _classes(out / "originals")
        result = {"run": str(a.run_dir), "cells": emb["n"],
                  "embedded": {"balanced_accuracy": emb["balanced_accuracy"], "accuracy": emb["accuracy"]},
                  "originals": {"balanced_accuracy": org["balanced_accuracy"], "accuracy": org["accuracy"]},
                  "difference_points": round(100 * (org["balanced_accuracy"] - emb["balanced_accuracy"]), 2),
                  "same_class": sum(same[0][k] == same[1].get(k) for k in same[0]) / len(same[0])}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
