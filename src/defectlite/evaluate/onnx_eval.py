"""Accuracy and cost of an exported ONNX model in ONNX Runtime (used by prune, quantise and compare)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from defectlite.compress.reparam import reparameterize
from defectlite.data.dataset import SplitData
from defectlite.data.transforms import normalize
from defectlite.deploy.predictor import softmax
from defectlite.evaluate.metrics import classification_metrics
from defectlite.evaluate.profile import count_macs, count_params, file_size_mb, ort_timing
from defectlite.onnx_file import ort_session


def evaluate_onnx(path: Path, data: SplitData, card: dict[str, Any]) -> dict[str, float]:
    """Validation and test accuracy (and test MCC) of an ONNX model in ONNX Runtime."""
    sess = ort_session(path, threads=os.cpu_count() or 1)
    out = {}
    for split in ("val", "test"):
        x, y = data.subset(split)
        logits = np.concatenate(
            [
                sess.run(None, {sess.get_inputs()[0].name: normalize(x[i : i + 64], card["mean"], card["std"])})[0]
                for i in range(0, len(x), 64)
            ]
        )
        pred = softmax(logits).argmax(1)
        out[f"{split}_accuracy"] = float((pred == y).mean())
        if split == "test":
            out["test_mcc"] = classification_metrics(y, pred, data.classes)["mcc"]
    return out


def onnx_cost(onnx_path: Path, model: nn.Module | None, shape, threads: int, batch: int) -> dict[str, Any]:
    """Size, ONNX Runtime batch-1 latency (``threads``) and batch-``batch`` throughput (all cores); params and
    MACs of ``model`` (deployed form) when given."""
    b1 = ort_timing(onnx_path, shape, threads=threads, warmup=20, runs=200)
    bn = ort_timing(onnx_path, (batch, *shape[1:]), threads=os.cpu_count() or 1, warmup=2, runs=5)
    out = {
        "onnx_mb": file_size_mb(onnx_path),
        "ort_b1_ms": b1.median_ms,
        "ort_b1_p95_ms": b1.p95_ms,
        "ort_throughput": bn.images_per_s,
        "threads_b1": threads,
        "threads_throughput": bn.threads,
    }
    if model is not None:
        deployed = reparameterize(model)
        out["params"] = count_params(deployed)
        out["macs"] = count_macs(deployed, shape)
    return out
