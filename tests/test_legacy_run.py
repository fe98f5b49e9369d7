"""Run folders written by earlier versions still load, export and predict.

``tests/fixtures/run-2026-12-classify`` is a 1-epoch run (``cpu_repnet_s`` at 64 x 64 on NEU-CLS, INT8 off) written
by defectlite as of 2026-12-08, before the tasks became one folder each (commit 6557485); its data path is the
relative ``neu-surface-defect``, resolved under the data root. Kept: run.json, config.yaml, splits.csv, the student's
best checkpoint and metrics, the deployed model (safetensors, card, ONNX) and report.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from defectlite import Predictor
from defectlite.cli.main import main

FIXTURE = Path(__file__).parent / "fixtures" / "run-2026-12-classify"


@pytest.fixture()
def old_run(shared_data, tmp_path) -> Path:
    run = tmp_path / "old-run"
    shutil.copytree(FIXTURE, run)
    return run


def test_an_old_run_loads_exports_and_predicts(old_run, shared_data, capsys):
    from defectlite.pipeline import export_run
    from defectlite.runs import open_run

    run = open_run(old_run)
    assert run.task == "classify" and run.deployed_stage == "student"
    assert run.config().student.model == "cpu_repnet_s"
    images = sorted((shared_data / "neu-surface-defect" / "images").glob("scratches_*.jpg"))[:8]
    before = [Predictor(old_run / "model.onnx").predict(p) for p in images]  # the ONNX file the old version wrote
    res = export_run(old_run)
    assert res["max_abs_diff"] <= res["tolerance"]
    after = [Predictor(old_run / "model.onnx").predict(p) for p in images]  # re-exported by this version
    assert [a.label for a in after] == [b.label for b in before]
    np.testing.assert_allclose([a.probability for a in after], [b.probability for b in before], atol=1e-5)
    assert main(["predict", str(old_run), str(images[0]), "--json", str(old_run / "p.json")]) == 0
    got = json.loads((old_run / "p.json").read_text())
    assert got[0]["class"] == before[0].label and abs(got[0]["probability"] - before[0].probability) < 1e-5
