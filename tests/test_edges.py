"""Inputs at the edges, found by reading the whole change: each case ended in a traceback, a hang, a run trained
for nothing or a silently wrong answer before its fix."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from defectlite.cli.main import build_parser
from defectlite.cli.train import build_config
from defectlite.deploy.predictor import Predictor
from defectlite.errors import ConfigError, DataError
from defectlite.pipeline import export_run, train_run
from defectlite.runs import TeacherSource
from defectlite.tasks.detect.readers import read_detection
from defectlite.train.config import apply_overrides, load_recipe
from defectlite.workflows.comparison import compare, render_comparison
from test_decode import _finishes_within
from test_det_data import NEU_STEMS, link_neu_det
from test_explain import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small):
    return tiny_run(tmp_path_factory, neu_small)


def _config(*argv: str):
    return build_config(build_parser().parse_args(["train", *argv]))


def test_fixed_length_config_lists_are_checked_at_load():
    cfg = load_recipe("neu-cpu-repnet-fast")
    with pytest.raises(ConfigError, match=r"data.input_size: expected \[H, W\] in pixels, got \[224\]"):
        apply_overrides(cfg, ["data.input_size=[224]"])
    with pytest.raises(ConfigError, match=r"data.split: expected \[train, val, test\]"):
        apply_overrides(cfg, ["data.split=[0.5, 0.5]"])


def test_epochs_option_scales_the_mosaic_free_last_epochs():
    cfg = _config("--recipe", "neu-det-yolo-lite-fast", "--epochs", "6")  # the recipe: 60 epochs, the last 10 plain
    assert cfg.student.optim.epochs == 6 and cfg.student.augment.close_mosaic == 1


@pytest.mark.parametrize("name", ["1e3", "2024", "inf", "a: b"])
def test_data_folders_named_like_numbers_stay_folder_names(name):
    assert _config("--data", name).data.path == name


def test_empty_val_or_test_split_is_refused_before_training(neu_small, tmp_path):
    cfg = apply_overrides(load_recipe("neu-cpu-repnet-fast"),
                          [f"data.path={json.dumps(str(neu_small))}", "data.split=[0.9, 0.1, 0.0]"])  # fmt: skip
    with pytest.raises(DataError, match=r"the test split is empty .* give each a share \(data.split, now"):
        train_run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "student").exists()


def test_a_checkpoint_teacher_is_refused_for_a_recipe_with_an_ensemble_teacher(tmp_path):
    cfg = load_recipe("neu-ensemble-fast")
    assert cfg.ensemble.members > 0
    with pytest.raises(ConfigError, match="give --teacher-ensemble RUN"):
        train_run(cfg, tmp_path / "run", teacher=TeacherSource("checkpoint", str(tmp_path / "t")), progress=False)
    assert not (tmp_path / "run").exists()


def test_compare_refuses_a_model_of_another_task_before_training(tmp_path):
    with pytest.raises(ConfigError, match="is a classify model, this is a detect run"):
        compare(load_recipe("neu-det-yolo-lite-fast", ["student.model=eg_repvgg"]), ["eg_repvgg"], [0], tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_the_comparison_table_names_the_task_metrics():
    row = {"model": "yolo_lite", "score_name": "map50", "score_mean": 0.7, "score_std": 0.01, "secondary_name": "map",
           "secondary_mean": 0.33, "secondary_std": 0.02, "params": 10, "macs": 2e6, "ort_b1_ms": 1.0,
           "ort_b1_p95_ms": 1.1, "ort_throughput": 500.0, "train_minutes": 3.0}  # fmt: skip
    latency = {"threads": 1, "rounds": 5, "runs_per_round": 100}
    md = render_comparison({"recipe": "r", "seeds": [0], "overrides": [], "rows": [row], "latency": latency})
    assert "| model | test map50 | map |" in md and "| yolo_lite | 70.00 ± 1.00 % | 33.00 ± 2.00 % |" in md


def test_predictor_refuses_bad_option_values_before_any_image(run_dir):
    with pytest.raises(ConfigError, match=r"min_confidence must be a number from 0 to 1 or .recommended., got 2"):
        Predictor(run_dir, min_confidence=2)


def test_export_replaces_the_int8_model_of_an_older_export(run_dir, neu_small, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run", symlinks=True)
    (run / "model.int8.onnx").write_bytes(b"an INT8 model of an older export")
    res = export_run(run)
    assert res["int8"] is not None and res["int8"]["deployed"] == (run / "model.int8.onnx").is_file()
    image = sorted((neu_small / "images").glob("*.jpg"))[0]
    p = Predictor(run)  # the stale file would be refused as a corrupt model
    assert p.predict(image).label in p.classes


def test_a_fifo_in_a_detection_folder_is_named_not_waited_on(tmp_path):
    root = link_neu_det(tmp_path, NEU_STEMS[:4])
    fifo = root / "images" / "crazing_1.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    try:
        err = _finishes_within(10, lambda: read_detection(root))
        assert isinstance(err, DataError) and f"{fifo}: is a FIFO (named pipe)" in str(err)
        index = read_detection(root, skip_bad=True)
        assert [f for f, _ in index.skipped] == [str(fifo)] and len(index.samples) == 3
    finally:
        try:  # unblock a reader a regression left waiting
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_malformed_coco_ids_and_a_yolo_tree_without_images_are_named(tmp_path):
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
           "categories": [{"id": 1, "name": "scratch"}],
           "annotations": [{"id": 7, "image_id": [1], "category_id": 1, "bbox": [1, 1, 2, 2]}]}  # fmt: skip
    (coco / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="annotation 7 refers to unknown image_id \\[1\\]"):
        read_detection(coco, "coco")
    (tmp_path / "yolo" / "labels").mkdir(parents=True)
    (tmp_path / "yolo" / "classes.txt").write_text("scratch\n")
    with pytest.raises(DataError, match="the YOLO layout needs an images/ folder"):
        read_detection(tmp_path / "yolo", "yolo")


def test_jobs_do_not_combine_with_data_parallel_training(tmp_path):
    from defectlite.pipeline import resume_run
    from defectlite.runs import Run

    with pytest.raises(ConfigError, match="--jobs trains members in separate single processes"):
        resume_run(Run(tmp_path), jobs=2, nproc=2)


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "0", "1001", "2.5", "lots", ""])
def test_detector_max_det_is_a_bounded_whole_number(text):
    from defectlite.tasks import get_runtime

    runtime = get_runtime("detect")
    with pytest.raises(ConfigError, match="max_det must be a whole number from 1 to 1000"):
        runtime.option("max_det", text)
    assert runtime.option("max_det", "300") == 300 and runtime.option("max_det", 1000) == 1000
    with pytest.raises(ConfigError, match=r"conf must be a number from 0 to 1, got 'nan'"):
        runtime.option("conf", "nan")
