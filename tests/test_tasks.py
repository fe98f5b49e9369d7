"""The task is one explicit thing: a task written here (mean brightness of an image, a regression) goes through
train -> export -> predict with the shared pipeline, loop, exporter, Predictor and CLI, without a line of
classification or detection code; and the built-in tasks dispatch from the recipe, run folder and ONNX file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.data import prepare, resolve_data_path
from defectlite.data.transforms import normalize
from defectlite.errors import CheckpointError, ConfigError
from defectlite.models import list_models, model_info, register_model
from defectlite.onnx_file import read_metadata
from defectlite.tasks import get_task, register_task, task_names
from defectlite.tasks.base import Task
from defectlite.train.distributed import loader

TOY = "toy-brightness"


class BrightnessNet(nn.Module):
    """(N, C, H, W) -> (N, 1): a conv, global average and a linear layer (brightness is linear in the pixels)."""

    def __init__(self, in_chans: int, outputs: int) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(in_chans, 4, 3, padding=1), nn.Linear(4, outputs)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


if "toy_brightness_net" not in list_models(None):

    @register_model(input_size=(1, 32, 32), task=TOY)
    def toy_brightness_net(*, num_classes: int, in_chans: int = 1) -> nn.Module:
        """The test task's model."""
        return BrightnessNet(in_chans, num_classes)


def brightness(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).mean(1).astype(np.float32) / 255.0


class ToyRuntime:
    """Outputs (N, 1) -> one float per image; scored by mean absolute error."""

    name, options, eval_options, score_key = TOY, (), {}, "mae"

    def check(self, meta, outputs):
        pass

    def postprocess(self, outputs, meta, sizes, **options):
        return [float(v) for v in np.asarray(outputs[0]).reshape(-1)]

    def as_dict(self, result, meta):
        return {"brightness": result}

    def as_rows(self, result, meta):
        return [{"brightness": f"{result:.4f}"}]

    def score(self, results, truths, meta):
        return {"mae": float(np.abs(np.asarray(results) - np.asarray(truths)).mean()), "n": len(results)}

    def headline(self, metrics):
        return f"MAE {metrics['mae']:.4f} on {metrics['n']} images"

    def report_lines(self, test, test_all):
        return ["## Brightness", "", f"Test MAE {test['mae']:.4f}.", ""]


class ToyStageData:
    score_name = "val_score"  # minus the validation MAE: higher is better, as the loop selects

    def __init__(self, train, val, norm):
        self.train, self.val, self.norm = train, val, norm
        self.train_size = len(train[0])

    def start_epoch(self, epoch, epochs):
        pass

    def batches(self, batch_size, generator, shard=(0, 1)):
        x, y = (torch.from_numpy(a) for a in self.train)
        return loader(TensorDataset(x, y), batch_size, generator, shard)

    def inputs(self, batch, device):
        x, y = batch
        return torch.from_numpy(normalize(x.numpy(), *self.norm)).to(device), y.to(device), y

    def batch_stats(self, outputs, truth):
        return {}

    @torch.no_grad()
    def validate(self, model, amp):
        x = torch.from_numpy(normalize(self.val[0], *self.norm))
        err = (model.eval()(x)[:, 0] - torch.from_numpy(self.val[1])).abs().mean().item()
        return {"val_loss": err, "val_score": -err}

    def clean_batches(self, device):
        yield torch.from_numpy(normalize(self.train[0], *self.norm)).to(device)


class MSE(nn.Module):
    def forward(self, outputs, inputs, target):
        loss = ((outputs[:, 0].float() - target) ** 2).mean()
        return {"loss": loss}


class ToyTask(Task):
    name, formats = TOY, ("auto", "neu", "folder")

    def __init__(self):
        self.runtime = ToyRuntime()

    def load_data(self, cfg, run, progress=True):
        d = cfg.data
        return prepare(resolve_data_path(d.path), size=d.input_size, seed=cfg.seed, splits_csv=run.splits_csv,
                       progress=False)  # fmt: skip

    def card(self, cfg, data):
        return {**super().card(cfg, data), "classes": ["brightness"], "num_classes": 1}

    def objective(self, stage, cfg, teacher, card, **options):
        return MSE()

    def stage_data(self, stage, cfg, data, card):
        split = {s: data.subset(s)[0] for s in ("train", "val")}
        return ToyStageData(*[(x, brightness(x)) for x in split.values()], (card["mean"], card["std"]))

    def split_truth(self, data, split):
        images = data.subset(split)[0]
        return images, brightness(images), [images.shape[-2:]] * len(images)


@pytest.fixture(scope="module")
def toy_run(neu_small, tmp_path_factory) -> Path:
    from defectlite.pipeline import train_run
    from defectlite.train.config import RecipeCfg, from_dict

    register_task(ToyTask())
    optim = {"epochs": 20, "batch_size": 16, "optimizer": "adamw", "lr": 0.05, "warmup_epochs": 0.0}
    cfg = from_dict(
        RecipeCfg,
        {
            "name": "toy",
            "task": TOY,
            "data": {"path": str(neu_small), "input_size": [32, 32]},
            "student": {"model": "toy_brightness_net", "optim": optim, "augment": {"hflip": False, "vflip": False,
                        "rotate_deg": 0.0, "brightness": 0.0, "contrast": 0.0}},
            "profile": {"runs": 3, "warmup": 1, "throughput_batch": 4, "throughput_runs": 1},
        },
    )  # fmt: skip
    run = tmp_path_factory.mktemp("toy") / "run"
    train_run(cfg, run, progress=False)
    return run


def test_a_new_task_trains_exports_and_predicts_through_the_shared_pipeline(toy_run, neu_small, capsys):
    meta = read_metadata(toy_run / "model.onnx")
    assert meta["task"] == TOY and meta["classes"] == ["brightness"]
    report = (toy_run / "report.md").read_text()
    assert "## Brightness" in report and "task toy-brightness" in report
    images = sorted((neu_small / "images").glob("*.jpg"))[::10]
    predictor = Predictor(toy_run)
    got = np.array([predictor.predict(p) for p in images])
    x8 = np.stack([predictor.preprocess([p])[0] for p in images])[:, 0]
    truth = brightness(np.stack([np.asarray(Image.open(p).convert("L")) for p in images]))
    assert x8.shape == (len(images), 1, 32, 32)
    assert np.corrcoef(got, truth)[0, 1] > 0.9 and np.abs(got - truth).mean() < 0.1  # it learned brightness
    assert main(["predict", str(toy_run / "model.onnx"), str(images[0])]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(images[0]) and abs(float(line[1]) - got[0]) < 1e-3


def test_tasks_dispatch_from_recipe_and_refuse_mismatched_models():
    assert {"classify", "detect"} <= set(task_names())
    with pytest.raises(ConfigError, match="not one of"):
        get_task("clasify")
    from defectlite.train.config import load_recipe

    cfg = load_recipe("neu-kd-eg-repvgg-fast", ["student.model=yolo_lite"])
    with pytest.raises(ConfigError, match="is a detect model"):
        get_task(cfg.task).check_config(cfg)
    assert model_info("yolo_lite").task == "detect" and model_info("eg_repvgg").task == "classify"


def test_an_onnx_file_of_an_unknown_task_is_a_clear_error(toy_run, tmp_path):
    import json

    import onnx

    proto = onnx.load(str(toy_run / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    card = {**json.loads(meta["defectlite"]), "task": "segment"}
    onnx.helper.set_model_props(proto, {"defectlite": json.dumps(card)})
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(CheckpointError, match="unknown model task 'segment'"):
        Predictor(tmp_path / "m.onnx")
