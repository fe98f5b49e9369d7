"""INT8 quantisation of an exported model, with its scores and latency compared to FP32 in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectlite.evaluate.profile import onnx_cost
from defectlite.onnx_file import read_metadata
from defectlite.pipeline import open_context, quantize_and_score
from defectlite.runs import int8_path, open_run


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
    ctx = open_context(open_run(calib_run), progress=False)
    out = Path(out or int8_path(model))
    res = quantize_and_score(model, out, ctx.task, ctx.data, calib_images=images, seed=ctx.cfg.seed,
                             min_reduction=min_reduction, method=method, per_channel=per_channel)  # fmt: skip
    shape = (1, meta["channels"], *meta["input_size"])
    cmp: dict[str, Any] = {"score_key": res["score_key"]}
    for name, path in (("fp32", model), ("int8", out)):
        cmp[name] = {"path": str(path), **res[name], **onnx_cost(path, None, shape, threads, 64)}
    cmp["delta"] = cmp["int8"]["test"] - cmp["fp32"]["test"]
    cmp["speedup"] = cmp["fp32"]["ort_b1_ms"] / cmp["int8"]["ort_b1_ms"]
    return cmp
