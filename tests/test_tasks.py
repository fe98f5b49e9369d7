"""A task is one folder plus one table line: a third task (the mean brightness of an image, a regression) written
here as its own package folder — task, runtime, model and recipe inside it — goes through train -> export -> predict
-> val -> serve with the shared pipeline, loop, exporter, Predictor, CLI and service, after one ``register_task``
call and without a line of classification or detection code; and the built-in tasks dispatch from the recipe, run
folder and ONNX file."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.errors import CheckpointError, ConfigError
from defectlite.models import model_info
from defectlite.onnx_file import read_metadata
from defectlite.tasks import (
    TASKS,
    TaskEntry,
    TaskOption,
    get_runtime,
    get_task,
    recipe_dirs,
    register_task,
    task_names,
)

TOY = "toy-brightness"

# the whole task: a package folder ``toyplugin/brightness/`` (written by the fixture) -------------------------------
FILES = {
    "__init__.py": '"""The toy-brightness task: the mean grey level of an image, in [0, 1]."""\n',
    "model.py": '''
        """(N, C, H, W) -> (N, 1): a conv, global average and a linear layer (brightness is linear in the pixels)."""
        from torch import nn

        from defectlite.models import list_models, register_model


        class BrightnessNet(nn.Module):
            def __init__(self, in_chans: int, outputs: int) -> None:
                super().__init__()
                self.conv, self.fc = nn.Conv2d(in_chans, 4, 3, padding=1), nn.Linear(4, outputs)

            def forward(self, x):
                return self.fc(self.conv(x).mean((2, 3)))


        class MeanLevel(nn.Module):
            """a * mean(x) + b, fitted from statistics (least squares), no optimizer."""

            def __init__(self, outputs: int) -> None:
                super().__init__()
                self.fc = nn.Linear(1, outputs)

            def forward(self, x):
                return self.fc(x.mean((1, 2, 3))[:, None])


        if "toy_brightness_net" not in list_models(None):

            @register_model(input_size=(1, 32, 32), task="toy-brightness")
            def toy_brightness_net(*, num_classes: int, in_chans: int = 1) -> nn.Module:
                """The toy task's model."""
                return BrightnessNet(in_chans, num_classes)

            @register_model(input_size=(1, 32, 32), task="toy-brightness")
            def toy_brightness_mean(*, num_classes: int, in_chans: int = 1) -> nn.Module:
                """The toy task's model fitted without an optimizer."""
                return MeanLevel(num_classes)
        ''',
    "runtime.py": '''
        """The inference half: NumPy only."""
        import numpy as np
        from PIL import Image

        from defectlite.data.readers import image_files
        from defectlite.tasks.base import number_option


        def brightness_of(path):
            return float(np.asarray(Image.open(path).convert("L"), np.float32).mean() / 255.0)


        class ToyRuntime:
            """Outputs (N, 1) -> one float per image; scored by mean absolute error."""

            name, options, columns, eval_options = "toy-brightness", ("scale",), ("brightness",), {}
            score_key, secondary_key, view = "neg_mae", "mae", "labels"

            def check(self, meta, outputs):
                pass

            def option(self, key, text):
                return number_option(self, key, text)

            def postprocess(self, outputs, meta, sizes, **options):
                return [float(v) * options.get("scale", 1.0) for v in np.asarray(outputs[0]).reshape(-1)]

            def as_dict(self, result, meta):
                return {"brightness": result}

            def as_rows(self, result, meta):
                return [{"brightness": f"{result:.4f}"}]

            def draw(self, source, result, meta):
                return Image.new("L", (8, 8), int(255 * min(max(result, 0.0), 1.0)))

            def read_labelled(self, root, meta, *, format="auto", split=None, skip_bad=False):
                paths = image_files([root])
                return paths, np.array([brightness_of(p) for p in paths], np.float32), []

            def score(self, results, truths, meta):
                mae = float(np.abs(np.asarray(results) - np.asarray(truths)).mean())
                return {"mae": mae, "neg_mae": -mae, "n": len(results)}

            def headline(self, metrics):
                return f"MAE {metrics['mae']:.4f} on {metrics['n']} images"

            def summary(self, metrics):
                return [self.headline(metrics)]

            def report_lines(self, test, test_all):
                return ["## Brightness", "", f"Test MAE {test['mae']:.4f}.", ""]

            def write_figures(self, metrics, meta, out_dir, stem):
                return {}
        ''',
    "task.py": '''
        """The training half."""
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset

        from defectlite.data import prepare, resolve_data_path
        from defectlite.data.transforms import normalize
        from defectlite.tasks.base import Task
        from defectlite.train.distributed import loader
        from toyplugin.brightness import model  # noqa: F401  (registers the task's model)


        def brightness(images):
            return images.reshape(len(images), -1).mean(1).astype("float32") / 255.0


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
                return {"loss": ((outputs[:, 0].float() - target) ** 2).mean()}


        class ToyTask(Task):
            name, formats = "toy-brightness", ("auto", "neu", "folder")

            def load_data(self, cfg, run, progress=True):
                d = cfg.data
                return prepare(resolve_data_path(d.path), size=d.input_size, seed=cfg.seed,
                               splits_csv=run.splits_csv, progress=False)

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

            def output_names(self, card):
                return ["brightness"]

            @torch.no_grad()
            def fit_statistics(self, model, data, stage):
                if stage.model != "toy_brightness_mean":
                    return None  # the loop trains it
                (x, y), (xv, yv) = data.train, data.val
                m = torch.from_numpy(normalize(x, *data.norm)).mean((1, 2, 3))
                a = torch.stack([m, torch.ones_like(m)], 1)
                coef = torch.linalg.lstsq(a, torch.from_numpy(y)[:, None]).solution[:, 0]
                model.fc.weight.fill_(float(coef[0]))
                model.fc.bias.fill_(float(coef[1]))
                err = (model(torch.from_numpy(normalize(xv, *data.norm)))[:, 0] - torch.from_numpy(yv)).abs().mean()
                return {"val_loss": float(err), "val_score": -float(err)}
        ''',
    "recipes/toy-brightness.yaml": """
        name: toy-brightness
        description: The toy task's recipe, shipped in the task's own folder.
        task: toy-brightness
        data: {path: neu-surface-defect, input_size: [32, 32]}
        student:
          model: toy_brightness_net
          optim: {epochs: 20, batch_size: 16, optimizer: adamw, lr: 0.05, warmup_epochs: 0.0}
          augment: {hflip: false, vflip: false, rotate_deg: 0.0, brightness: 0.0, contrast: 0.0}
        profile: {runs: 3, warmup: 1, throughput_batch: 4, throughput_runs: 1}
        int8: {deploy: false}
        """,
}


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    """The task's folder, and its one table line."""
    root = tmp_path_factory.mktemp("plugin")
    folder = root / "toyplugin" / "brightness"
    for name, text in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    (root / "toyplugin" / "__init__.py").write_text("")
    sys.path.insert(0, str(root))
    before = dict(TASKS)
    option = TaskOption("--toy-lr", "student.optim.lr", "the toy model's learning rate", "LR")
    register_task(TOY, TaskEntry("toyplugin.brightness.task:ToyTask", "toyplugin.brightness.runtime:ToyRuntime",
                                 (option,)))  # fmt: skip
    assert set(TASKS) - set(before) == {TOY} and all(TASKS[k] == v for k, v in before.items())  # one line, no edit
    yield folder
    sys.path.remove(str(root))
    TASKS.pop(TOY)


@pytest.fixture(scope="module")
def toy_run(toy_task, neu_small, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    assert main(["-q", "train", "--recipe", TOY, "--data", str(neu_small), "--out", str(run), "--toy-lr", "0.05"]) == 0
    return run


def test_a_third_task_in_its_own_folder_trains_exports_predicts_validates_and_serves(
    toy_task, toy_run, neu_small, capsys, tmp_path
):
    # everything the task needed is in its folder: its recipe is found there, its model registered from there
    assert toy_task / "recipes" in recipe_dirs()
    assert model_info("toy_brightness_net").task == TOY
    assert sorted(p.relative_to(toy_task).as_posix() for p in toy_task.rglob("*") if p.is_file() and
                  "__pycache__" not in p.parts) == sorted(FILES)  # fmt: skip
    meta = read_metadata(toy_run / "model.onnx")
    assert meta["task"] == TOY and meta["classes"] == ["brightness"]
    import onnx

    assert [o.name for o in onnx.load(str(toy_run / "model.onnx")).graph.output] == ["brightness"]  # the task's names
    report = (toy_run / "report.md").read_text()
    assert "## Brightness" in report and "task toy-brightness" in report
    images = sorted((neu_small / "images").glob("*.jpg"))[::10]
    predictor = Predictor(toy_run)
    got = np.array([predictor.predict(p) for p in images])
    truth = np.array([np.asarray(Image.open(p).convert("L"), np.float32).mean() / 255 for p in images])
    assert np.corrcoef(got, truth)[0, 1] > 0.9 and np.abs(got - truth).mean() < 0.1  # it learned brightness
    # predict, with an option the task's runtime declares (and one it does not)
    capsys.readouterr()
    assert main(["predict", str(toy_run), str(images[0]), "--option", "scale=2"]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == str(images[0]) and abs(float(line[1]) - 2 * got[0]) < 1e-3
    assert main(["predict", str(toy_run), str(images[0]), "--option", "conf=0.5"]) == 2
    # export again, validate on a folder
    assert main(["-q", "export", str(toy_run)]) == 0
    assert main(["-q", "val", str(toy_run), "--data", str(neu_small), "--out", str(tmp_path / "val")]) == 0
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["task"] == TOY and metrics["n"] == len(list((neu_small / "images").glob("*.jpg")))
    assert metrics["mae"] < 0.1
    # serve: the service answers with the task's runtime, request options included
    from starlette.testclient import TestClient

    from defectlite.deploy.service import create_app

    with TestClient(create_app(toy_run / "model.onnx", threads=1, explain=False)) as client:
        body = images[0].read_bytes()
        r = client.post("/v1/predict?scale=2", files=[("files", (images[0].name, body, "image/jpeg"))])
        assert r.status_code == 200, r.text
        assert abs(r.json()["results"][0]["brightness"] - 2 * got[0]) < 1e-3
        assert client.post("/v1/predict?scale=x", files=[("files", ("a.jpg", body, "image/jpeg"))]).status_code == 422
        assert client.get("/v1/model").json()["options"] == ["scale"]


def test_a_task_declares_its_train_options_and_a_stage_fitted_without_an_optimizer(
    toy_task, toy_run, neu_small, tmp_path
):  # noqa: E501
    from defectlite.runs import open_run

    assert open_run(toy_run).config().student.optim.lr == 0.05  # --toy-lr, the task's own option, set the field
    assert main(["-q", "train", "--resume", str(toy_run), "--toy-lr", "0.1"]) == 2  # it defines the run
    run = tmp_path / "stats"
    args = [
        "-q",
        "train",
        "--recipe",
        TOY,
        "--data",
        str(neu_small),
        "--out",
        str(run),
        "--model",
        "toy_brightness_mean",
    ]
    assert main(args) == 0
    assert not (run / "student" / "last.safetensors").exists()  # no optimizer, no loop state
    report = json.loads((run / "report.json").read_text())
    assert report["stages"]["student"]["epochs_run"] == 1 and report["test"]["mae"] < 0.02  # linear: nearly exact
    weights = (run / "model.safetensors").read_bytes()
    assert main(["-q", "train", "--resume", str(run)]) == 0  # the fitted stage is kept, not fitted again
    assert (run / "model.safetensors").read_bytes() == weights


def test_tasks_dispatch_from_recipe_and_refuse_mismatched_models():
    assert {"classify", "detect"} <= set(task_names())
    with pytest.raises(ConfigError, match="not one of"):
        get_task("clasify")
    from defectlite.train.config import load_recipe

    cfg = load_recipe("neu-kd-eg-repvgg-fast", ["student.model=yolo_lite"])
    with pytest.raises(ConfigError, match="is a detect model"):
        get_task(cfg.task).check_config(cfg)
    assert model_info("yolo_lite").task == "detect" and model_info("eg_repvgg").task == "classify"
    assert get_runtime("detect").score_key == "map50" and get_task("classify").score_key == "accuracy"


def test_an_onnx_file_of_an_unknown_task_is_a_clear_error(toy_run, tmp_path):
    import onnx

    proto = onnx.load(str(toy_run / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    card = {**json.loads(meta["defectlite"]), "task": "segment"}
    onnx.helper.set_model_props(proto, {"defectlite": json.dumps(card)})
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(CheckpointError, match="unknown model task 'segment'"):
        Predictor(tmp_path / "m.onnx")
