"""Applying a trained model: `wbc evaluate` on class-folder sets, `wbc predict` on images, safe checkpoints."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import make_wbc_tree, shared_or_skip, write_image
from wbclib import WBC_CLASSES
from wbclib.core import config as cfg
from wbclib.results import evaluate
from wbclib.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    root = make_wbc_tree(base / "data", per_class=3, val_per_class=1, size=(48, 48))
    config = cfg.from_profile("quick", data_root=str(root), input_size=32, resize=None, base_width=4, depth=2,
                              batch_size=4, epochs=1, min_steps=0)
    train.fit(config, base / "run", progress=False, log=lambda s: None)
    return base / "run"


def test_evaluate_writes_metrics_confusion_and_predictions(run, tmp_path):
    data = tmp_path / "set"
    for i, cls in enumerate(["Lymphocyte", "Neutrophil"]):  # three classes absent from this set
        for j in range(3):
            write_image(data / cls / f"{cls}_{j}.png", size=(40 + 10 * j, 60), seed=10 * i + j)  # any size
    out = tmp_path / "out"
    res = evaluate.evaluate(run, data, out)
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "majority_baseline"):
        assert key in m
    assert m["n"] == 6 and m["missing_classes"] == ["Basophil", "Eosinophil", "Monocyte"]
    assert (out / "confusion.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 6 and set(rows[0]) == {"path", "true_class", "predicted_class",
                                               *(f"p_{c}" for c in WBC_CLASSES)}
    # The numbers follow from the rows a user can open: each prediction is the most probable class, and the
    # accuracy and the confusion matrix are counted from the (true, predicted) pairs.
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in WBC_CLASSES]
        assert abs(sum(probs) - 1) < 1e-3 and r["predicted_class"] == WBC_CLASSES[probs.index(max(probs))]
    assert {r["true_class"] for r in rows} == {"Lymphocyte", "Neutrophil"}
    pairs = [(WBC_CLASSES.index(r["true_class"]), WBC_CLASSES.index(r["predicted_class"])) for r in rows]
    counted = [[sum(p == (t, q) for p in pairs) for q in range(5)] for t in range(5)]
    assert m["confusion_matrix"] == counted
    assert m["accuracy"] == pytest.approx(sum(t == q for t, q in pairs) / 6)
    assert res["per_class"]["Lymphocyte"]["support"] == 3 and res["n"] == 6


def test_evaluate_refuses_to_write_inside_the_data(run, tmp_path):
    write_image(tmp_path / "set" / "Basophil" / "a.png")
    with pytest.raises(evaluate.WbcError, match="inside the data folder"):
        evaluate.evaluate(run, tmp_path / "set", tmp_path / "set" / "out")


def test_evaluate_on_real_bccd_and_segwbc(run, tmp_path):
    bccd = shared_or_skip("bccd")
    res = evaluate.evaluate(run, bccd, tmp_path / "bccd")
    assert res["n"] == 351 and res["per_class"]["Neutrophil"]["support"] == 207
    seg = shared_or_skip("segwbc") / "dataset2"
    res = evaluate.evaluate(run, seg, tmp_path / "seg", mask_threshold=64)
    assert res["n"] == 100 and res["masks"]["n"] == 100 and 0 <= res["masks"]["dice"] <= 1


def test_predict_cli_writes_a_row_and_a_png_per_image(run, tmp_path):
    imgs = [write_image(tmp_path / "in" / f"{i}.jpg", size=(70, 50), seed=i) for i in range(3)]
    write_image(tmp_path / "in" / "sub" / "x.bmp", size=(30, 30), fmt="BMP")
    p = subprocess.run([sys.executable, "-m", "wbclib.cli", "predict", "--checkpoint", str(run), str(tmp_path / "in"),
                        "--out", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True,
                       timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert [r["path"] for r in rows][:3] == [str(i) for i in imgs] and len(rows) == 4
    assert all(r["predicted_class"] in WBC_CLASSES for r in rows)
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_predict_names_unreadable_files(run, tmp_path, capsys):
    from wbclib.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jpg").write_bytes(b"nope")
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(run), str(tmp_path / "in" / "bad.jpg"),
                 str(tmp_path / "in" / "missing.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wbc: error:")
    assert "bad.jpg: unreadable" in err and "missing.png: not found" in err
    assert not (tmp_path / "out").exists()
