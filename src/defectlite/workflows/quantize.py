"""INT8 quantisation of an exported model, with accuracy and latency compared in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectlite.compress.quantize import quantize_onnx
from defectlite.data.transforms import normalize
from defectlite.evaluate.onnx_eval import evaluate_onnx, onnx_cost
from defectlite.onnx_file import read_metadata
from defectlite.pipeline import load_data, load_run_config


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
    """Quantise ``model`` to INT8 with ``calib_run``'s training images; compare FP32 and INT8 on its test split.

    Returns:
        ``{"fp32": {...}, "int8": {...}, "delta_accuracy": int8 - fp32 test accuracy, "speedup": fp32 / int8
        batch-1 latency}``; each side has test accuracy / MCC, ONNX Runtime latency (same run, ``threads``
        threads) and size.
    """
    model = Path(model)
    meta = read_metadata(model)
    cfg = load_run_config(calib_run)
    data = load_data(cfg, Path(calib_run), progress=False)
    x_cal = normalize(data.subset("train")[0][:images], meta["mean"], meta["std"])
    out = Path(out or model.with_suffix(".int8.onnx"))
    quantize_onnx(model, out, x_cal, per_channel=per_channel, method=method, min_reduction=min_reduction)
    shape = (1, meta["channels"], *meta["input_size"])
    res = {}
    for name, path in (("fp32", model), ("int8", out)):
        res[name] = {"path": str(path), **evaluate_onnx(path, data, meta), **onnx_cost(path, None, shape, threads, 64)}
    res["delta_accuracy"] = res["int8"]["test_accuracy"] - res["fp32"]["test_accuracy"]
    res["speedup"] = res["fp32"]["ort_b1_ms"] / res["int8"]["ort_b1_ms"]
    return res
