"""ONNX export of the deployed (re-parameterised) model, with its metadata and a parity check.

The ONNX file is self-describing: ``metadata_props`` hold ``defectlite`` (a JSON object with the task,
class names, input size, channels, normalisation, model name, parameter count and the task's own fields),
so a :class:`~defectlite.deploy.predictor.Predictor` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
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
from defectlite.tasks import task_name
from defectlite.utils import atomic_write

log = logging.getLogger(__name__)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
PARITY_TOL = 1e-4


def onnx_metadata(card: dict[str, Any], deployed: nn.Module, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``defectlite`` metadata of an exported model: task, classes, input size, channels, normalisation,
    model name and parameter count, plus the task's own fields (``extra``: anchors, thresholds, ...).

    Raises:
        CheckpointError: the card lacks classes, input_size, in_chans, mean or std.
    """
    missing = {"classes", "input_size", "in_chans", "mean", "std"} - set(card)
    if missing:
        raise CheckpointError(f"cannot export: the model card lacks {sorted(missing)}")
    h, w = card["input_size"]
    return {
        "task": task_name(card),
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
        **(extra or {}),
    }


def export_onnx(
    model: nn.Module,
    card: dict[str, Any],
    path: str | Path,
    *,
    opset: int = 20,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    extra: dict[str, Any] | None = None,
    output_names: list[str] | None = None,
    fused: bool = False,
) -> Path:
    """Re-parameterise a copy of ``model`` and write it as ONNX (dynamic batch) with its metadata.

    Input ``input`` float32 (N, C, H, W), normalised as the card says; output ``logits`` (N, K) for a
    classifier, or whatever ``wrap`` (the task's export wrapper of the fused model) returns.

    Args:
        model: trained model (training or deployed form).
        card: checkpoint card (classes, input_size, in_chans, mean, std, model, task, ...).
        path: the .onnx file to write (atomically).
        opset: ONNX opset (20 has a native Gelu).
        wrap: maps the fused model to the module to export (a task's output wrapper; default: none).
        extra: task fields of the metadata.
        output_names: ONNX output names (default ``["logits"]``; a task's come from its ``output_names``).
        fused: ``model`` is already re-parameterised (the pipeline fuses once): export it as it is.

    Raises:
        CheckpointError: the card lacks classes, input_size, in_chans, mean or std.
    """
    import onnx

    deployed = model.eval() if fused else reparameterize(model)
    meta = onnx_metadata(card, deployed, extra)
    net = wrap(deployed) if wrap is not None else deployed
    h, w = meta["input_size"]
    x = torch.zeros(1, card["in_chans"], h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (x,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names or [OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    proto = program.model_proto
    _drop_stack_traces(proto)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    proto.doc_string = f"defectlite {card['model']} ({meta['task']}, {len(meta['classes'])} classes)"
    onnx.checker.check_model(proto)
    return atomic_write(path, lambda p: onnx.save_model(proto, str(p)))


def _drop_stack_traces(proto: Any) -> None:
    """Remove the exporter's per-node Python stack traces (``pkg.torch.onnx.stack_trace``): they hold this machine's
    absolute source paths, which a model file handed to a plant should not carry."""
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("defectlite")
    except PackageNotFoundError:
        return "unknown"


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    card: dict[str, Any],
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    *,
    fused: bool = False,
) -> float:
    """Max absolute difference of the outputs of ONNX Runtime and the PyTorch deployed model.

    Args:
        model: the PyTorch model (fused or not; both are compared to ONNX Runtime in float32).
        images: uint8 (N, C, H, W), real images of the data set.
        wrap: the task's export wrapper (as given to :func:`export_onnx`).
        fused: ``model`` is already re-parameterised.

    Returns:
        max |output_ort - output_torch| over the batch and every output (NaN when either is not finite).
    """
    x = normalize(images, card["mean"], card["std"])
    net = model.eval() if fused else reparameterize(model)
    net = wrap(net) if wrap is not None else net
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    ref = [r.numpy() for r in (ref if isinstance(ref, (list, tuple)) else [ref])]
    sess = ort_session(onnx_path, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    diffs = [np.abs(g - r) for g, r in zip(got, ref)]
    if any(not np.isfinite(d).all() for d in diffs):
        return float("nan")
    return max(float(d.max()) for d in diffs)
