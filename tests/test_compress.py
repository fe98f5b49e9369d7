"""Sparsity penalty, BN-gamma channel pruning, layer pruning, replay from the card, INT8 quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defectlite.checkpoint import save_checkpoint
from defectlite.compress.channel_prune import channel_counts, prune_channels
from defectlite.compress.int8 import calibration_subset, quantize_onnx
from defectlite.compress.layer_prune import prune_layers, residual_blocks
from defectlite.compress.restore import load_checkpoint
from defectlite.compress.sparsity import SparsityObjective, bn_l1, gammas
from defectlite.data import prepare
from defectlite.data.transforms import normalize
from defectlite.deploy.onnx_export import check_parity, export_onnx
from defectlite.errors import ConfigError
from defectlite.evaluate.profile import count_params
from defectlite.models import create_model
from defectlite.onnx_file import ort_session
from defectlite.tasks.classify.objectives import CrossEntropy
from test_models import randomize_bn

SHAPE = (1, 1, 64, 64)


@pytest.fixture(scope="module")
def neu64(neu_small):
    return prepare(neu_small, size=(64, 64), seed=0, progress=False)


def _card(name, data):
    mean, std = data.norm_stats()
    return {"model": name, "num_classes": 6, "in_chans": 1, "classes": data.classes, "input_size": [64, 64],
            "mean": mean, "std": std}  # fmt: skip


def test_sparsity_objective_adds_l1_of_gammas():
    model = randomize_bn(create_model("resnet18", num_classes=6))
    logits, labels = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    out = SparsityObjective(CrossEntropy(), model, 1e-3)(logits, None, labels)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 1e-3 * bn_l1(model).item(), rel=1e-5)
    out["loss"].backward()
    bn = model.bn1
    assert torch.allclose(bn.weight.grad, 1e-3 * bn.weight.sign())
    assert len(gammas(model)) == sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError):
        SparsityObjective(CrossEntropy(), model, -1)


@pytest.mark.parametrize(
    "name", ["resnet18", "timm:mobilenetv2_100", "mobilenetv2", "weldnet", "pdmsnet", "dsc_cnn_140k", "cpu_repnet_s"]
)
def test_channel_pruning_keeps_the_model_consistent_and_replays(name, neu64, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, num_classes=6, in_chans=1)).eval()
    before = count_params(model)
    history = prune_channels(model, SHAPE, 0.5)
    assert count_params(model) < 0.6 * before
    assert any(channel_counts(model)[k] < v for k, v in channel_counts(create_model(name, 6, 1)).items())
    card = {**_card(name, neu64), "transforms": [{"prune_channels": history, "input_shape": list(SHAPE)}]}
    save_checkpoint(tmp_path / "pruned", model, card)
    rebuilt, _ = load_checkpoint(tmp_path / "pruned")  # rebuilt from the card's history, then weights loaded
    x = torch.from_numpy(normalize(neu64.subset("val")[0], card["mean"], card["std"]))
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x), atol=1e-5)
    path = export_onnx(model, card, tmp_path / "pruned.onnx")
    assert check_parity(model, path, neu64.subset("val")[0], card) <= 1e-4


def test_layer_pruning_removes_lowest_gamma_residual_blocks(neu64, tmp_path):
    model = randomize_bn(create_model("resnet18", num_classes=6, in_chans=1)).eval()
    scores = residual_blocks(model, SHAPE)
    assert set(scores) == {"layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"}  # identity-shortcut blocks
    model.layer2[1].bn2.weight.data.mul_(1e-3)
    removed = prune_layers(model, SHAPE, 2)
    assert "layer2.1" in removed and isinstance(model.layer2[1], nn.Identity)
    card = {**_card("resnet18", neu64), "transforms": [{"drop_blocks": removed}]}
    save_checkpoint(tmp_path / "lp", model, card)
    rebuilt, _ = load_checkpoint(tmp_path / "lp")
    assert count_params(rebuilt) == count_params(model)
    with pytest.raises(ConfigError, match="removable"):
        prune_layers(model, SHAPE, 10)


def test_int8_quantisation_keeps_predictions(neu64, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("resnet18", num_classes=6, in_chans=1)).eval()
    card = _card("resnet18", neu64)
    fp32 = export_onnx(model, card, tmp_path / "m.onnx")
    calib = normalize(neu64.subset("train")[0], card["mean"], card["std"])
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calib)
    x = normalize(neu64.subset("test")[0], card["mean"], card["std"])
    a = ort_session(fp32, 1).run(None, {"input": x})[0]
    b = ort_session(int8, 1).run(None, {"input": x})[0]
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert (tmp_path / "m.int8.onnx").stat().st_size < 0.4 * (tmp_path / "m.onnx").stat().st_size


def test_calibration_images_are_a_seeded_draw_over_every_class(neu64):
    """The first n training images of NEU (named by class) hold few classes; the seeded draw holds all six."""
    images, labels = neu64.subset("train")
    n = len(labels) // 3
    rows = calibration_subset(np.arange(len(labels)), n, seed=0)  # any (N, ...) array is drawn alike
    assert len(rows) == len(set(rows.tolist())) == n and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(calibration_subset(images, n, seed=0), images[rows])
    assert len(set(labels[:n].tolist())) < 6 == len(set(labels[rows].tolist()))
    assert not np.array_equal(calibration_subset(np.arange(len(labels)), n, seed=1), rows)
    assert calibration_subset(images, len(images) + 5, 0) is images
    with pytest.raises(ConfigError, match="at least one"):
        calibration_subset(images, 0)
