"""ONNX export of the deployed (re-parameterised) model, with its metadata and a parity check.

The ONNX file is self-describing: ``metadata_props`` hold ``defectlite`` (a JSON object with the
class names, input size, channels, normalisation, model name and parameter count), so a
:class:`~defectlite.deploy.predictor.Predictor` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlite.compress.reparam import reparameterize
from defectlite.data.transforms import normalize
from defectlite.errors import CheckpointError
from defectlite.evaluate.profile import count_params
from defectlite.onnx_file import METADATA_KEY, ort_session
from defectlite.utils import atomic_write

log = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
PARITY_TOL = 1e-4


def export_onnx(model: nn.Module, card: dict[str, Any], path: str | Path, *, opset: int = 20) -> Path:
    """Re-parameterise a copy of ``model`` and write it as ONNX (dynamic batch) with metadata.

    Input ``input`` float32 (N, C, H, W), normalised as the card says; output ``logits`` (N, K).

    Args:
        model: trained model (training or deployed form).
        card: checkpoint card (classes, input_size, in_chans, mean, std, model, ...).
        path: the .onnx file to write (atomically).
        opset: ONNX opset (20 has a native Gelu).

    Raises:
        CheckpointError: the card lacks classes, input_size, in_chans, mean or std.
    """
    missing = {"classes", "input_size", "in_chans", "mean", "std"} - set(card)
    if missing:
        raise CheckpointError(f"cannot export: the model card lacks {sorted(missing)}")
    import onnx

    deployed = reparameterize(model)
    h, w = card["input_size"]
    x = torch.zeros(1, card["in_chans"], h, w)
    meta = {
        "classes": list(card["classes"]),
        "input_size": [h, w],
        "channels": card["in_chans"],
        "mean": card["mean"],
        "std": card["std"],
        "model": card["model"],
        "num_params": count_params(deployed),
        "reparameterized": True,
        "input_name": INPUT_NAME,
        "layout": "NCHW",
        "preprocess": "to_uint8 (PIL bilinear resize, grey or RGB) then (x / 255 - mean) / std",
        "defectlite_version": _version(),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            deployed,
            (x,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    proto.doc_string = f"defectlite {card['model']} ({len(meta['classes'])} classes)"
    onnx.checker.check_model(proto)
    return atomic_write(path, lambda p: onnx.save_model(proto, str(p)))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defectlite")
    except PackageNotFoundError:
        return "unknown"


def check_parity(model: nn.Module, onnx_path: str | Path, images: np.ndarray, card: dict[str, Any]) -> float:
    """Max absolute difference of logits between ONNX Runtime and the PyTorch deployed model.

    Args:
        model: the PyTorch model (fused or not; both are compared to ONNX Runtime in float32).
        images: uint8 (N, C, H, W), real images of the data set.

    Returns:
        max |logits_ort - logits_torch| over the batch.
    """
    x = normalize(images, card["mean"], card["std"])
    with torch.no_grad():
        ref = reparameterize(model)(torch.from_numpy(x)).numpy()
    sess = ort_session(onnx_path, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(got - ref).max())
