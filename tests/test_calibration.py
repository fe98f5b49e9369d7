"""Calibrated probabilities and the reject option: temperature fitting, the fold into the last layer (= dividing
the logits by T), ONNX parity after folding, the operating point, and 'uncertain' answers in the CLI and HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.deploy.onnx_export import check_parity, export_onnx
from defectlite.models import create_model
from defectlite.tasks.classify import calibration as cal
from defectlite.tasks.classify.temperature import fold_temperature
from test_explain import tiny_run
from test_models import randomize_bn


def test_temperature_fit_recovers_a_known_temperature():
    """Labels drawn from softmax(z); logits given as 3 z (over-confident): the NLL-optimal T is about 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20_000, 5))
    p = cal.softmax(z)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = cal.fit_temperature(3 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert cal.nll(3 * z, labels, t) < cal.nll(3 * z, labels)
    assert cal.ece(cal.softmax(3 * z / t), labels) < 0.02 < cal.ece(cal.softmax(3 * z), labels)


def test_ece_and_threshold_on_a_hand_made_case():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0])
    # 15 bins of 1/15: 0.55 and 0.6 share (8/15, 9/15] (accuracy 1/2, confidence 0.575), 0.8 is in (11/15, 12/15],
    # 0.9 in (13/15, 14/15]: ECE = 2/4 |0.5 - 0.575| + 1/4 |1 - 0.8| + 1/4 |1 - 0.9|
    assert cal.ece(probs, labels) == pytest.approx(0.5 * 0.075 + 0.25 * 0.2 + 0.25 * 0.1)
    assert cal.choose_threshold(probs, labels, 1.0) == pytest.approx(0.8)  # accept the two sure, right ones
    assert cal.selective(probs, labels, 0.8) == {"threshold": 0.8, "coverage": 0.5, "accuracy": 1.0, "accepted": 2}
    assert cal.choose_threshold(probs, labels, 0.75) == pytest.approx(0.55)  # 3 of 4 right: accept all
    assert cal.choose_threshold(np.array([[0.9, 0.1]]), np.array([1]), 0.99) > 1.0  # nothing reaches it


@pytest.mark.parametrize("name", ["eg_repvgg", "pdmsnet", "timm:mobilenetv3_small_050"])
def test_folding_equals_dividing_the_logits_and_survives_onnx(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=6, in_chans=1)).eval()
    x = torch.randn(8, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    fold_temperature(model, 2.5, x)
    with torch.no_grad():
        assert (model(x) - before / 2.5).abs().max() <= 1e-5 * max(1.0, float(before.abs().max()))
    card = {"model": name, "classes": [f"c{i}" for i in range(6)], "num_classes": 6, "in_chans": 1,
            "input_size": [64, 64], "mean": [0.5], "std": [0.25]}  # fmt: skip
    path = export_onnx(model, card, tmp_path / "m.onnx")
    images = np.random.default_rng(0).integers(0, 255, (4, 1, 64, 64), dtype=np.uint8)
    assert check_parity(model, path, images, card) <= 1e-4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small):
    return tiny_run(tmp_path_factory, neu_small)


def test_a_run_is_calibrated_and_recommends_an_operating_point(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    c = report["calibration"]
    assert c["temperature"] > 0 and c["val"]["nll_after"] <= c["val"]["nll_before"] + 1e-9
    meta = Predictor(run_dir).meta
    assert meta["temperature"] == pytest.approx(c["temperature"]) and "min_confidence" in meta
    assert (run_dir / "reliability.png").stat().st_size and (run_dir / "risk_coverage.png").stat().st_size
    assert "Recommended operating point" in (run_dir / "report.md").read_text()


def test_predict_answers_uncertain_below_min_confidence(run_dir, neu_small, capsys):
    image = sorted((neu_small / "images").glob("*.jpg"))[0]
    assert main(["predict", str(run_dir / "model.onnx"), str(image), "--min-confidence", "1.0"]) == 0
    path, label, prob, top = capsys.readouterr().out.strip().split("\t")
    assert label == "uncertain" and float(prob) < 1 and len(top.split()) == 3
    assert main(["predict", str(run_dir / "model.onnx"), str(image), "--min-confidence", "0"]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] != "uncertain"
    assert main(["predict", str(run_dir / "model.onnx"), str(image), "--min-confidence", "1.5"]) == 2
    assert "min_confidence must be a number from 0 to 1" in capsys.readouterr().err


def test_http_reject_option(run_dir, neu_small):
    from fastapi.testclient import TestClient

    from defectlite.deploy.service import create_app

    image = sorted((neu_small / "images").glob("*.jpg"))[0].read_bytes()
    with TestClient(create_app(run_dir / "model.onnx", threads=1, explain=False)) as client:
        files = {"files": ("a.jpg", image, "image/jpeg")}
        sure = client.post("/v1/predict", files=files).json()["results"][0]
        assert not sure["uncertain"]
        unsure = client.post("/v1/predict?min_confidence=1", files=files).json()["results"][0]
        assert unsure["class"] == "uncertain" and unsure["top"][0]["class"] == sure["class"]
        assert client.post("/v1/predict", files=files, data={"min_confidence": "1"}).json()["results"][0]["uncertain"]
        bad = client.post("/v1/predict?min_confidence=lots", files=files)
        assert bad.status_code == 422 and bad.json()["error"] == "bad_option"
    with TestClient(create_app(run_dir / "model.onnx", threads=1, explain=False,
                               options={"min_confidence": 1.0})) as client:  # fmt: skip
        assert client.post("/v1/predict", files=files).json()["results"][0]["uncertain"]  # the server's default
