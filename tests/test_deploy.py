"""Checkpoints, ONNX export parity and metadata, and the Predictor, on real NEU images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectlite import Predictor
from defectlite.checkpoint import save_checkpoint
from defectlite.compress.restore import load_checkpoint
from defectlite.data import prepare
from defectlite.deploy.onnx_export import check_parity, export_onnx
from defectlite.errors import CheckpointError, DataError
from defectlite.models import create_model
from defectlite.onnx_file import read_metadata
from test_models import randomize_bn


@pytest.fixture(scope="module")
def neu_data(neu_small):
    return prepare(neu_small, size=(200, 200), seed=0, progress=False)


@pytest.fixture(scope="module")
def card(neu_data):
    mean, std = neu_data.norm_stats()
    return {
        "model": "eg_repvgg",
        "model_kwargs": {},
        "num_classes": 6,
        "in_chans": 1,
        "classes": neu_data.classes,
        "input_size": [200, 200],
        "mean": mean,
        "std": std,
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory, card):
    torch.manual_seed(0)
    model = randomize_bn(create_model("eg_repvgg", num_classes=6, in_chans=1)).eval()
    path = export_onnx(model, card, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


def test_export_matches_pytorch_on_real_images(exported, neu_data, card):
    model, path = exported
    diff = check_parity(model, path, neu_data.subset("test")[0], card)
    assert diff <= 1e-4


def test_the_onnx_file_carries_no_source_paths_of_this_machine(exported):
    import defectlite

    data = exported[1].read_bytes()
    assert b"pkg.torch.onnx.stack_trace" not in data  # the exporter's per-node Python stack traces are dropped
    assert str(Path(defectlite.__file__).parent).encode() not in data


def test_onnx_metadata_describes_the_model(exported, neu_data):
    meta = read_metadata(exported[1])
    assert meta["classes"] == neu_data.classes and meta["input_size"] == [200, 200] and meta["channels"] == 1
    assert meta["reparameterized"] and meta["num_params"] == 140_669


def test_predictor_uses_training_preprocessing(exported, neu_data, card, neu_small):
    model, path = exported
    predictor = Predictor(path)
    files = [neu_data.root / p for p in neu_data.split_paths("test")]
    preds = predictor.predict_batch(files)
    x = torch.from_numpy(neu_data.subset("test")[0]).float()
    with torch.no_grad():
        ref = torch.softmax(model((x / 255 - card["mean"][0]) / card["std"][0]), 1).numpy()
    assert [p.index for p in preds] == list(ref.argmax(1))
    assert np.allclose([p.probability for p in preds], ref.max(1), atol=1e-4)
    single = predictor.predict(files[0])
    assert single.label in neu_data.classes and abs(sum(single.probabilities.values()) - 1) < 1e-5


def test_predictor_reports_bad_images_in_place(exported, neu_small, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    good = next((neu_small / "images").glob("*.jpg"))
    res = Predictor(exported[1]).predict_each([good, bad, tmp_path / "missing.jpg"], None)
    assert not isinstance(res[0], DataError)
    assert isinstance(res[1], DataError) and "not a readable image" in str(res[1])
    assert isinstance(res[2], DataError) and "file not found" in str(res[2])


def test_predictor_rejects_onnx_without_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        Predictor(tmp_path / "none.onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(CheckpointError, match="no defectlite metadata"):
        Predictor(plain)


def test_checkpoint_roundtrip_and_mismatch(tmp_path, card):
    model = randomize_bn(create_model("eg_repvgg", num_classes=6, in_chans=1)).eval()
    save_checkpoint(tmp_path / "ck", model, card)
    loaded, got = load_checkpoint(tmp_path / "ck.safetensors")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert got["classes"] == card["classes"]
    save_checkpoint(tmp_path / "other", model, {**card, "model": "repvgg_tiny"})
    with pytest.raises(CheckpointError, match="does not match the model in its card"):
        load_checkpoint(tmp_path / "other")
    (tmp_path / "junk.json").write_text("{}")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="field 'model' must be a str"):  # main let a bare KeyError out
        load_checkpoint(tmp_path / "junk")
    for bad, words in (
        ({**card, "model_kwargs": {"checkpoint_path": "/etc/passwd"}}, "not options of eg_repvgg"),
        ({**card, "model": "timm:resnet18", "model_kwargs": {"checkpoint_path": "/etc/passwd"}}, "not options"),
        ({**card, "classes": card["classes"][:5]}, "must list num_classes = 6"),
        ({**card, "num_classes": "six"}, "must be a int"),
    ):
        save_checkpoint(tmp_path / "bad", model, card)
        (tmp_path / "bad.json").write_text(json.dumps({"card_version": 1, **bad}))
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(tmp_path / "bad")
