"""INT8 quantisation of an exported model, with its scores and latency compared to FP32 in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectlite.compress.int8 import calibration_subset, quantize_onnx
from defectlite.data.transforms import normalize
from defectlite.evaluate.profile import onnx_cost
from defectlite.onnx_file import read_metadata
from defectlite.runs import open_run
from defectlite.tasks import get_task
from defectlite.workflows.validation import score_run_splits


def quantize_and_compare(
    model: Path,
    calib_run: Path,
    *,
    out: Path | None = None,
    images: int = 256,
    method: str = "minmax",
    per_channel: bool = True,
    threads: int = 1,
    min_reduction: int = 128,
) -> dict[str, Any]:
    """Quantise ``model`` to INT8 with ``images`` of ``calib_run``'s training images (a seeded random draw, see
    :func:`~defectlite.compress.int8.calibration_subset`); compare FP32 and INT8 on its val and test
    splits.

    Args:
        min_reduction: quantise only convolutions with ``C_in / groups x kH x kW >=`` this (smaller ones are
            memory-bound and run faster in float).

    Returns:
        ``{"fp32": {...}, "int8": {...}, "score_key", "delta": int8 - fp32 test score, "speedup": fp32 / int8
        batch-1 latency}``; each side has val / test metrics, ONNX Runtime latency (same run, ``threads``
        threads) and size.
    """
    model = Path(model)
    meta = read_metadata(model)
    run = open_run(calib_run)
    cfg, task = run.config(), get_task(run.task)
    data = task.load_data(cfg, run, progress=False)
    x_cal = calibration_subset(task.split_truth(data, "train")[0], images, cfg.seed)
    x_cal = normalize(x_cal, meta["mean"], meta["std"])
    out = Path(out or model.with_suffix(".int8.onnx"))
    quantize_onnx(model, out, x_cal, per_channel=per_channel, method=method, min_reduction=min_reduction)
    shape = (1, meta["channels"], *meta["input_size"])
    key = task.runtime.score_key
    res: dict[str, Any] = {"score_key": key}
    for name, path in (("fp32", model), ("int8", out)):
        scores = score_run_splits(path, task, data)
        res[name] = {"path": str(path), "val": scores["val"][key], "test": scores["test"][key],
                     **onnx_cost(path, None, shape, threads, 64)}  # fmt: skip
    res["delta"] = res["int8"]["test"] - res["fp32"]["test"]
    res["speedup"] = res["fp32"]["ort_b1_ms"] / res["int8"]["ort_b1_ms"]
    return res
