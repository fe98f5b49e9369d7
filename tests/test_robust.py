"""No silent wrong answer, no lost work: a model that outputs NaN is refused, untrusted metadata and cards are
validated, output paths are checked before the work, a run that failed on bad data can be retried; fuzzed
images and ``--set`` strings only ever raise defectlite's own errors."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.data.transforms import to_uint8
from defectlite.deploy.onnx_export import export_onnx
from defectlite.errors import CheckpointError, DefectliteError
from defectlite.models import create_model
from defectlite.train.config import apply_overrides, load_recipe
from test_explain import tiny_run

FUZZ = int(os.environ.get("DEFECTLITE_FUZZ_EXAMPLES", "150"))
CARD = {"model": "eg_repvgg", "classes": [f"c{i}" for i in range(6)], "num_classes": 6, "in_chans": 1,
        "input_size": [32, 32], "mean": [0.5], "std": [0.25]}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small):
    return tiny_run(tmp_path_factory, neu_small)


def _with_metadata(src, dst, change):
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props["defectlite"] = change(props["defectlite"])
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


def test_a_model_that_outputs_nan_is_refused(tmp_path):
    model = create_model("eg_repvgg", num_classes=6).eval()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    path = export_onnx(model, CARD, tmp_path / "nan.onnx")
    with pytest.raises(CheckpointError, match="not finite on a probe image"):
        Predictor(path)


def test_untrusted_onnx_metadata_is_checked(run_dir, tmp_path, capsys):
    src = run_dir / "model.onnx"
    bad = {
        "not json": lambda m: "{not json",
        "no classes": lambda m: json.dumps({k: v for k, v in json.loads(m).items() if k != "classes"}),
        "5 names for 6 outputs": lambda m: json.dumps({**json.loads(m), "classes": json.loads(m)["classes"][:5]}),
        "std of 0": lambda m: json.dumps({**json.loads(m), "std": [0.0]}),
    }
    for (name, change), words in zip(bad.items(), ["not JSON", "'classes'", "5 classes, the model has 6", "positive"]):
        path = _with_metadata(src, tmp_path / f"{name}.onnx", change)
        with pytest.raises(CheckpointError, match=words):
            Predictor(path)
        assert main(["predict", str(path), str(tmp_path)]) == 2  # an error message, never a traceback
        assert "error:" in capsys.readouterr().err


def test_serve_turns_grad_cam_off_for_a_bad_card_instead_of_dying(run_dir, tmp_path):
    from fastapi.testclient import TestClient

    from defectlite.deploy.service import create_app

    for f in ("model.onnx", "model.safetensors"):
        shutil.copy(run_dir / f, tmp_path / f)
    card = json.loads((run_dir / "model.json").read_text())
    card["model_kwargs"] = {"checkpoint_path": "/etc/passwd"}  # main passed it on to the builder
    (tmp_path / "model.json").write_text(json.dumps(card))
    with TestClient(create_app(tmp_path / "model.onnx", threads=1)) as client:
        info = client.get("/v1/model").json()
        assert info["explain"] is False and "not options of" in info["explain_detail"]


def test_output_paths_are_checked_before_any_work(run_dir, neu_small, tmp_path, capsys, monkeypatch):
    image = str(sorted((neu_small / "images").glob("*.jpg"))[0])
    afile = tmp_path / "afile"
    afile.write_text("x")
    for flag, target, words in (
        ("--csv", tmp_path, "is a folder"),
        ("--csv", afile / "out.csv", "is a file"),
        ("--save-images", afile, "not a folder"),
    ):
        assert main(["predict", str(run_dir), image, flag, str(target)]) == 2
        assert words in capsys.readouterr().err
    monkeypatch.setattr(os, "access", lambda *a: False)  # a read-only folder (root ignores chmod, so simulate it)
    assert main(["predict", str(run_dir), image, "--json", str(tmp_path / "out.json")]) == 2
    assert "no permission to write" in capsys.readouterr().err


def test_predict_writes_csv_or_json_to_standard_output_for_a_dash(run_dir, neu_small, tmp_path, capsys, monkeypatch):
    images = [str(p) for p in sorted((neu_small / "images").glob("*.jpg"))[:2]]
    monkeypatch.chdir(tmp_path)  # a file named "-" would land here
    assert main(["-q", "predict", str(run_dir), *images, "--csv", "-"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))  # the CSV alone: no answer lines mixed in
    assert [r["path"] for r in rows] == images and all(r["class"] for r in rows)
    assert main(["-q", "predict", str(run_dir), *images, "--json", "-"]) == 0
    assert [o["path"] for o in json.loads(capsys.readouterr().out)] == images
    assert main(["-q", "predict", str(run_dir), *images, "--csv", "-", "--json", "-"]) == 2
    assert "both write to standard output" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_failed_on_bad_data_can_be_retried_with_skip_bad(neu_small, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(neu_small, data, symlinks=True)
    (data / "images" / "crazing_999.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    run = tmp_path / "run"
    sets = ["teacher=null", "data.input_size=[32, 32]", "profile.runs=2", "profile.throughput_runs=1"]
    args = ["-q", "train", "--data", str(data), "--out", str(run), "--epochs", "1", *(f"--set={s}" for s in sets)]
    assert main(args) == 2
    assert "crazing_999.jpg" in capsys.readouterr().err
    assert main([*args, "--skip-bad"]) == 0  # main refused: "already holds a run with a different config"
    report = json.loads((run / "report.json").read_text())
    assert [p.endswith("crazing_999.jpg") for p, _ in report["data"]["skipped"]] == [True]


@settings(max_examples=FUZZ, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_images_only_raise_data_errors(data, neu_small):
    """Mutated JPEG / PNG / TIFF bytes into the decoder: an image or a DataError, nothing else."""
    from PIL import Image

    src = sorted((neu_small / "images").glob("*.jpg"))[0]
    fmt = data.draw(st.sampled_from(["JPEG", "PNG", "TIFF"]))
    img = Image.open(src).convert(data.draw(st.sampled_from(["L", "RGB", "I;16"])) if fmt != "JPEG" else "L")
    buf = io.BytesIO()
    img.resize((48, 48)).save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        out = to_uint8(bytes(raw), (32, 32), data.draw(st.sampled_from([1, 3])))
        assert out.dtype == np.uint8 and out.shape[1:] == (32, 32)
    except DefectliteError:
        pass


@settings(max_examples=FUZZ, deadline=None)
@given(key=st.sampled_from(["student.optim.lr", "kd.alpha", "seed", "data.input_size", "ensemble.combine",
                            "student.optim.schedule", "teacher", "nope.nope", "student.model_kwargs.x"]),
       value=st.text(max_size=30))  # fmt: skip
def test_fuzzed_overrides_only_raise_config_errors(key, value):
    cfg = load_recipe("neu-kd-eg-repvgg-fast")
    for item in (f"{key}={value}", value, f"{value}={value}"):
        try:
            apply_overrides(cfg, [item])
        except DefectliteError:
            pass
