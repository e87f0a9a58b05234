"""The real cells that ship with the project (``embedded/``): intact, as documented, reproducible, trainable."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_or_skip
from wbclib import WBC_CLASSES, data

EMBEDDED = data.EMBEDDED
#: The command of embedded/README.md, run from the project root (paths relative to it).
COMMAND = ["prepare", "pbc", "--from", "../shared/data/pbc", "--out", "{out}", "--size", "96",
           "--masked", "segwbc=../shared/data/segwbc/dataset2", "--external", "bccd=../shared/data/bccd",
           "--tiles", "../shared/data/bccd-smears"]


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
    counts = {n: data.wbc_records(EMBEDDED, n, "train", check=False) for n in data.WBC_SUBSETS}
    assert [len(counts[n]) for n in data.WBC_SUBSETS] == [15, 165, 834, 1669]
    for n in data.WBC_SUBSETS:  # every subset has at least one masked cell of every class
        masked = {r.label for r in counts[n] if r.mask_path is not None}
        assert masked == set(range(len(WBC_CLASSES))), n
    names = [{r.path.name for r in counts[n]} for n in data.WBC_SUBSETS]
    assert names[0] <= names[1] <= names[2] <= names[3]
    val = data.wbc_records(EMBEDDED, 100, "val", check=False)
    assert len(val) == 400 and not {r.path.name for r in val} & names[3]
    bccd, _ = data.folder_records(EMBEDDED / "external" / "bccd", check=False)
    segwbc, _ = data.folder_records(EMBEDDED / "external" / "segwbc", check=False)
    assert len(bccd) == 351 and len(segwbc) == 31 and all(r.mask_path for r in segwbc)
    assert len(data.prcc_records(EMBEDDED, "train", check=False)) + len(
        data.prcc_records(EMBEDDED, "val", check=False)) == 728
    licenses = {s["dataset"]: s["license"] for s in manifest()["sources"]}
    assert licenses == {"pbc": "CC BY 4.0", "segwbc": "GPL-3.0", "bccd": "MIT (BCCD_Dataset)",
                        "bccd-smears": "MIT (BCCD_Dataset)"}
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


@pytest.mark.parametrize("name", ["PBC", "segwbc", "BCCD"])
def test_readme_and_book_cite_the_sources_with_their_licenses(name):
    root = Path(__file__).resolve().parents[1]
    for text in ((root / "README.md").read_text(), (root / "book" / "data.md").read_text()):
        assert name.lower() in text.lower()
    readme = (root / "README.md").read_text()
    assert "CC BY 4.0" in readme and "GPL-3.0" in readme and "MIT" in readme
    assert "not the course data" in readme.lower()
