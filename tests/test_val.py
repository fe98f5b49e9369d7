"""``defectlite val``: score an ONNX model or a run on a labelled folder, with the base install only (no PyTorch);
the NumPy metrics equal scikit-learn's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defectlite import Predictor
from defectlite.cli.main import main
from defectlite.errors import DataError
from defectlite.tasks.classify.metrics import classification_metrics
from test_explain import tiny_run

NO_TORCH = """
import sys
for name in ("torch", "torchvision", "timm", "sklearn", "torch_pruning", "pytorch_grad_cam"):
    sys.modules[name] = None  # importing any of them now fails, as on a camera station's base install
from defectlite.cli.main import main
rc = main(sys.argv[1:])
assert not [m for m in ("torch", "timm") if sys.modules.get(m) is not None]
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, neu_small) -> Path:
    return tiny_run(tmp_path_factory, neu_small)


def test_val_scores_an_onnx_file_without_pytorch(run_dir, neu_small, tmp_path):
    out = tmp_path / "val"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", NO_TORCH, "val", str(run_dir / "model.onnx"), "--data", str(neu_small), "--out",
           str(out), "-q"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "crazing" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("confusion.png", "confusion.csv", "confusion_norm.png", "confusion_norm.csv"):
        assert (out / name).stat().st_size > 0, name
    # the same numbers as the Predictor's answers, image by image
    predictor = Predictor(run_dir / "model.onnx")
    files = sorted((neu_small / "images").glob("*.jpg"))
    pred = [predictor.classes.index(p.label) for p in predictor.predict_batch(files)]
    truth = [predictor.classes.index(f.stem.rsplit("_", 1)[0]) for f in files]
    assert metrics["n"] == 120 and metrics["accuracy"] == pytest.approx(np.mean(np.array(pred) == truth))
    assert np.array(metrics["confusion_normalized"]).sum(1) == pytest.approx(np.ones(6))


def test_val_on_a_run_folder_and_other_image_sizes(run_dir, neu_small, tmp_path, capsys):
    """A run folder means its deployed model.onnx; 200 x 200 NEU images meet a 64 x 64 model via the one resize."""
    folder = tmp_path / "two"
    for cls in ("crazing", "scratches"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((neu_small / "images").glob(f"{cls}_*.jpg"))[:5]:
            shutil.copy(f, folder / cls / f.name)  # a tmp copy of 10 images, never in the repository
    assert main(["val", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "v"), "-q"]) == 0
    assert json.loads((tmp_path / "v" / "metrics.json").read_text())["n"] == 10
    (folder / "rust").mkdir()
    shutil.copy(next(iter((folder / "crazing").iterdir())), folder / "rust" / "r.jpg")
    assert main(["val", str(run_dir), "--data", str(folder), "--out", str(tmp_path / "w"), "-q"]) == 2
    assert "rust are not known to the model" in capsys.readouterr().err


def test_val_refuses_an_output_path_it_cannot_write(run_dir, neu_small, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["val", str(run_dir), "--data", str(neu_small), "--out", str(blocker / "sub")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_numpy_metrics_equal_scikit_learn():
    from sklearn.metrics import confusion_matrix, matthews_corrcoef, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    for k in (2, 3, 6):
        y = rng.integers(0, k, 300)
        p = np.where(rng.random(300) < 0.7, y, rng.integers(0, k, 300))
        p[p == k - 1] = 0  # a class never predicted: precision 0 by convention
        m = classification_metrics(y, p, [f"c{i}" for i in range(k)])
        assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, labels=list(range(k)), zero_division=0)
        assert [v["precision"] for v in m["per_class"].values()] == pytest.approx(pr)
        assert [v["recall"] for v in m["per_class"].values()] == pytest.approx(rc)
        assert m["macro_f1"] == pytest.approx(f1.mean())
        assert m["confusion"] == confusion_matrix(y, p, labels=list(range(k))).tolist()
    with pytest.raises(ValueError, match="lie in"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])


def test_read_labelled_list_file(tmp_path, neu_small):
    from defectlite.data.readers import read_labelled_files

    files = sorted((neu_small / "images").glob("*.jpg"))[:3]
    (tmp_path / "list.csv").write_text("path,class\n" + "".join(f"{f},{f.stem.rsplit('_', 1)[0]}\n" for f in files))
    paths, names = read_labelled_files(tmp_path / "list.csv")
    assert paths == files and names == ["crazing"] * 3
    (tmp_path / "bad.csv").write_text("file,label\nx,y\n")
    with pytest.raises(DataError, match="columns path and class"):
        read_labelled_files(tmp_path / "bad.csv")
