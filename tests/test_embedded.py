"""The real cells that ship with the project (``embedded/``): intact, as documented, reproducible, trainable."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_or_skip
from wbclib import CAM16_CLASSES, WBC_CLASSES, WBC_SUBSETS
from wbclib.data import datasets, readers

EMBEDDED = datasets.EMBEDDED
#: The command of embedded/README.md, run from the project root (paths relative to it).
COMMAND = ["prepare", "pbc", "--from", "../shared/data/pbc", "--out", "{out}", "--size", "96",
           "--masked", "segwbc=../shared/data/segwbc/dataset2", "--external", "bccd=../shared/data/bccd",
           "--external", "camelyon16=../shared/data/camelyon16-patches", "--cam16", "ebhi=../shared/data/ebhi-seg",
           "--smear-tiles", "../shared/data/bccd-smears"]


def manifest() -> dict:
    return json.loads((EMBEDDED / "manifest.json").read_text())


def test_every_file_matches_its_manifest_hash():
    files = manifest()["files"]
    assert len(files) > 3000
    on_disk = {str(p.relative_to(EMBEDDED)) for p in EMBEDDED.rglob("*") if p.is_file()}
    assert on_disk - set(files) == {"manifest.json", "README.md"}  # nothing unlisted besides these two
    for rel, digest in files.items():
        assert hashlib.sha256((EMBEDDED / rel).read_bytes()).hexdigest() == digest, rel


def test_layout_counts_and_masks_as_documented():
    counts = {n: readers.wbc_records(EMBEDDED, n, "train", check=False) for n in WBC_SUBSETS}
    assert [len(counts[n]) for n in WBC_SUBSETS] == [15, 165, 834, 1669]
    for n in WBC_SUBSETS:  # every subset has at least one masked cell of every class
        masked = {r.label for r in counts[n] if r.mask_path is not None}
        assert masked == set(range(len(WBC_CLASSES))), n
    names = [{r.path.name for r in counts[n]} for n in WBC_SUBSETS]
    assert names[0] <= names[1] <= names[2] <= names[3]
    val = readers.wbc_records(EMBEDDED, 100, "val", check=False)
    assert len(val) == 400 and not {r.path.name for r in val} & names[3]
    bccd, _ = readers.folder_records(EMBEDDED / "external" / "bccd", check=False)
    segwbc, _ = readers.folder_records(EMBEDDED / "external" / "segwbc", check=False)
    assert len(bccd) == 351 and len(segwbc) == 31 and all(r.mask_path for r in segwbc)
    tiles = {folder: len(readers.prcc_records(EMBEDDED, "train", check=False, folder=folder))
             + len(readers.prcc_records(EMBEDDED, "val", check=False, folder=folder))
             for folder in ("pRCC_nolabel", "smears_nolabel")}
    assert tiles == {"pRCC_nolabel": 150, "smears_nolabel": 728}  # EBHI low-grade IN (H&E); BCCD smear photographs
    cam = {s: readers.cam16_records(EMBEDDED, s, check=False) for s in ("train", "val", "test")}
    assert [len(cam[s]) for s in ("train", "val", "test")] == [382, 55, 109]
    assert [sum(r.mask_path is not None for r in cam[s]) for s in ("train", "val", "test")] == [38, 0, 109]
    assert datasets.external_sets(CAM16_CLASSES) == [EMBEDDED / "external" / "camelyon16"]
    assert [p.name for p in datasets.external_sets()] == ["bccd", "segwbc"]
    camelyon, _ = readers.folder_records(EMBEDDED / "external" / "camelyon16", CAM16_CLASSES, check=False)
    assert len(camelyon) == 89 and all(r.mask_path for r in camelyon)
    licenses = {s["dataset"]: s["license"] for s in manifest()["sources"]}
    assert licenses == {"pbc": "CC BY 4.0", "segwbc": "GPL-3.0", "bccd": "MIT (BCCD_Dataset)",
                        "bccd-smears": "MIT (BCCD_Dataset)", "ebhi": "CC BY 4.0",
                        "camelyon16": "CC0 1.0 (patches); Apache-2.0 (tumour outlines)"}
    assert "not the course data" in (EMBEDDED / "README.md").read_text()


@pytest.mark.slow
def test_the_readme_command_reproduces_the_folder(tmp_path):
    shared_or_skip("pbc")
    out = tmp_path / "embedded"
    args = [a.replace("{out}", str(out)) for a in COMMAND]
    assert " ".join(COMMAND[:6]).replace("{out}", "embedded") in " ".join(
        (EMBEDDED / "README.md").read_text().split())
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", *args, "--no-progress"], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").read_bytes() == (EMBEDDED / "manifest.json").read_bytes()


@pytest.mark.slow
def test_a_slice_trains_and_evaluates_end_to_end(tmp_path):
    """WBC_1 of the embedded cells through `wbc train` (default data) and `wbc evaluate` on the held-out masks."""
    tiny = ["--set", "base_width=4", "--set", "depth=2", "--set", "export_embeddings=false", "--set", "min_steps=0"]
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", "train", "--subset", "1", "--epochs", "1",
                           "--run-dir", str(run), "--no-progress", *tiny], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embedded real cells" in done.stdout
    m = json.loads((run / "metrics.json").read_text())
    assert m["val"]["n"] == 400 and m["train_images"] == 15 and m["train_masks_available"] == 5
    assert json.loads((run / "manifest.json").read_text())["data_source"] == "embedded"
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", "evaluate", "--checkpoint", str(run), "--data",
                           str(EMBEDDED / "external" / "segwbc"), "--out", str(tmp_path / "eval"), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert res["n"] == 31 and res["masks"]["n"] == 31 and 0 <= res["masks"]["dice"] <= 1


def test_no_stage_of_the_default_chain_is_synthetic():
    from wbclib.core import config as cfg

    for dataset in ("wbc", "cam16", "prcc"):
        assert datasets.data_source(cfg.from_profile("quick", dataset=dataset)) == "embedded", dataset


@pytest.mark.slow
def test_a_cam16_slice_trains_and_evaluates_on_camelyon16(tmp_path):
    """The CAM16 stage on the EBHI tiles, then `wbc evaluate` on the real CAMELYON16 patches: accuracy and Dice."""
    tiny = ["--set", "base_width=4", "--set", "depth=2", "--set", "export_embeddings=false", "--set", "min_steps=0"]
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", "train", "--dataset", "cam16", "--epochs", "1",
                           "--run-dir", str(run), "--no-progress", *tiny], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["reported_split"] == "test" and m["test"]["n"] == 109 and m["test"]["masks"]["n"] == 109
    assert json.loads((run / "manifest.json").read_text())["data_source"] == "embedded"
    done = subprocess.run([sys.executable, "-m", "wbclib.cli", "evaluate", "--checkpoint", str(run), "--data",
                           str(EMBEDDED / "external" / "camelyon16"), "--out", str(tmp_path / "eval"),
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert res["n"] == 89 and res["masks"]["n"] == 89 and 0 <= res["masks"]["dice"] <= 1
    assert set(res["per_class"]) == set(CAM16_CLASSES)
    assert res["masks_by_class"]["tumor"]["n"] == 44 and res["masks_by_class"]["normal"]["n"] == 45


@pytest.mark.parametrize("name", ["PBC", "segwbc", "BCCD", "EBHI-Seg", "CAMELYON16"])
def test_readme_and_book_cite_the_sources_with_their_licenses(name):
    root = Path(__file__).resolve().parents[1]
    for text in ((root / "README.md").read_text(), (root / "book" / "data.md").read_text()):
        assert name.lower() in text.lower()
    readme = (root / "README.md").read_text()
    assert "CC BY 4.0" in readme and "GPL-3.0" in readme and "MIT" in readme and "CC0" in readme
    assert "not the course data" in readme.lower()
