"""Grad-CAM, feature-map grids and ``defectlite explain``: on hand-built models whose answer is known,
and on a tiny EG-RepVGG trained through the library on real NEU images (shared with test_serve.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.errors import CheckpointError, ConfigError
from defectlite.evaluate.gradcam import (
    Explainer,
    feature_grid_png,
    feature_layers,
    find_target_layer,
    overlay,
    png_bytes,
)
from defectlite.models import create_model
from defectlite.tasks.classify.explain import explain_per_class


def tiny_recipe(neu_data: Path):
    """EG-RepVGG alone (no teacher) at 64 x 64, 15 epochs, spelled out here so that tuning the shipped recipes
    does not change the test model (about 60 % test accuracy, several classes right)."""
    from defectlite.train.config import RecipeCfg, from_dict

    optim = {"epochs": 15, "batch_size": 32, "lr": 0.05, "warmup_epochs": 1.0, "ema_decay": 0.0}
    augment = {"hflip": True, "vflip": True, "rotate_deg": 10.0, "brightness": 0.2, "contrast": 0.2}
    return from_dict(
        RecipeCfg,
        {
            "name": "test-tiny-eg-repvgg",
            "data": {"path": str(neu_data), "input_size": [64, 64], "channels": 1},
            "student": {"model": "eg_repvgg", "optim": optim, "augment": augment},
            "profile": {"runs": 5, "warmup": 1, "throughput_batch": 8, "throughput_runs": 1},
        },
    )


def tiny_run(tmp_path_factory: pytest.TempPathFactory, neu_data: Path) -> Path:
    """A run folder trained once per test session through ``train_run`` (:func:`tiny_recipe` on 96 NEU
    training images: about 20 s on 2 idle cores); later calls return the same folder."""
    from defectlite.pipeline import train_run

    run = tmp_path_factory.getbasetemp() / "tiny-run"
    if not (run / "report.json").is_file():
        train_run(tiny_recipe(neu_data), run, progress=False)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small) -> Path:
    return tiny_run(tmp_path_factory, neu_small)


def neu_images(neu_small: Path) -> list[Path]:
    return sorted((neu_small / "images").glob("*.jpg"))


class HalfModel(nn.Module):
    """Known answer: channel 0 = x, channel 1 = 1 - x; logit 0 = mean of channel 0 over the LEFT half,
    logit 1 = mean of channel 1 over the RIGHT half. Grad-CAM of class 0 must light up where x is bright,
    of class 1 where x is dark."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.blocks = nn.Sequential(nn.Identity(), conv)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        f = self.blocks(x)
        w = f.shape[-1] // 2
        return torch.stack([f[:, 0, :, :w].mean((1, 2)), f[:, 1, :, w:].mean((1, 2))], 1)


HALF_CARD = {"classes": ["left", "right"], "input_size": [32, 32], "in_chans": 1, "mean": [0.0], "std": [1.0]}


def test_gradcam_lights_up_the_evidence_of_the_asked_class():
    img = np.zeros((32, 32), np.uint8)
    img[:, :16] = 255  # bright left half
    explainer = Explainer(HalfModel(), HALF_CARD)
    assert explainer.layer_name == "blocks.1"
    left = explainer.explain(img, "left")
    right = explainer.explain(img, "right")
    assert left.cam.shape == (32, 32) and 0 <= left.cam.min() and left.cam.max() <= 1
    assert left.cam[:, :16].mean() > 0.9 and left.cam[:, 16:].mean() < 0.1
    assert right.cam[:, 16:].mean() > 0.9 and right.cam[:, :16].mean() < 0.1
    assert left.label == "left" and right.label == "right" and left.predicted == right.predicted
    rgb = overlay(left)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    with pytest.raises(ConfigError, match="unknown class 'middle'; the model knows left, right"):
        explainer.explain(img, "middle")


def test_target_layer_finder_on_ours_timm_and_plain_models():
    assert find_target_layer(create_model("eg_repvgg", 7, 1))[0] == "blocks.8"
    resnet = create_model("resnet18", 7, 1)
    assert find_target_layer(resnet)[0] == "layer4"
    assert [n for n, _ in feature_layers(resnet)][-2:] == ["layer3", "layer4"]
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert find_target_layer(plain, (1, 16, 16))[0] == "2"  # the last conv before pooling (traced)
    with pytest.raises(ConfigError, match="no layer with a spatial output"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 4, 4))
    with pytest.raises(ConfigError, match="has no module 'nope'"):
        Explainer(HalfModel(), HALF_CARD, layer="nope")


def test_explainer_agrees_with_the_onnx_predictor(run_dir, neu_small):
    explainer = Explainer.from_checkpoint(run_dir)
    predictor = Predictor(run_dir, fp32=True)  # Grad-CAM is the FP32 checkpoint; the run may deploy model.int8.onnx
    files = neu_images(neu_small)[::20]
    for f, pred in zip(files, predictor.predict_batch(files)):
        expl = explainer.explain(f)
        assert expl.predicted == pred.label and expl.label == pred.label
        assert abs(expl.probability - pred.probability) < 1e-4
        assert expl.cam.shape == (64, 64) and expl.cam.max() <= 1.0
    png = Image.open(io.BytesIO(png_bytes(overlay(expl))))
    assert png.mode == "RGB" and png.size == (200, 200)  # NEU images are 200 x 200


def test_feature_grid_has_every_block(run_dir, neu_small):
    explainer = Explainer.from_checkpoint(run_dir / "model.onnx")  # the checkpoint beside the ONNX
    x8, maps = explainer.feature_maps(neu_images(neu_small)[0])
    assert x8.shape == (1, 64, 64) and [n for n, _ in maps] == [f"blocks.{i}" for i in range(9)]
    assert maps[0][1].shape == (9, 32, 32) and maps[-1][1].shape == (256, 2, 2)
    grid = Image.open(io.BytesIO(feature_grid_png(x8, maps, per_block=4)))
    assert grid.size[0] > 300 and grid.size[1] > 9 * 80


def test_explain_cli_and_per_class_overlays(run_dir, neu_small, tmp_path, capsys):
    images = neu_images(neu_small)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "out"
    args = ["-q", "explain", str(run_dir), str(images[0]), str(bad), "--out", str(out), "--class", "scratches"]
    assert main(args) == 1
    printed = capsys.readouterr()
    assert "Grad-CAM of scratches" in printed.out and "bad.jpg\tERROR" in printed.err
    stem = images[0].stem
    assert (out / f"{stem}_gradcam.png").is_file() and (out / f"{stem}_features.png").is_file()
    assert main(["-q", "explain", str(run_dir), str(images[0]), "--class", "rust"]) == 2
    assert "unknown class 'rust'" in capsys.readouterr().err

    written = explain_per_class(run_dir, tmp_path / "report")
    classes = Predictor(run_dir).classes
    assert list(written) == classes  # neu_small has test images of every class
    assert all(p.is_file() and Image.open(p).mode == "RGB" for p in written.values())


def test_missing_checkpoint_is_named(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(CheckpointError, match=r"model\.json and .*model\.safetensors not found"):
        Explainer.from_checkpoint(tmp_path / "model.onnx")
