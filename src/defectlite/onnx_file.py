"""An exported defectlite ONNX file: the metadata contract (written by ``deploy.onnx_export``, read by the
Predictor, quantisation and benchmarks) and an ONNX Runtime session, shared by evaluate, compress and deploy
as :mod:`defectlite.checkpoint` is for PyTorch checkpoints.

Imports neither PyTorch nor timm, so that ``defectlite predict``, the Python :class:`Predictor` and
``defectlite serve`` on an ONNX file alone load only NumPy, Pillow, ONNX and ONNX Runtime
(about 0.1 GB resident instead of 0.7 GB with torch and timm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from defectlite.errors import CheckpointError
from defectlite.tasks import task_name

METADATA_KEY = "defectlite"  # the ONNX metadata_props key holding the model card as JSON (written by export_onnx)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``defectlite`` metadata of an exported ONNX file, validated (:func:`check_metadata`).

    Raises:
        CheckpointError: missing file, not ONNX, exported without defectlite metadata, or metadata that is
            not a valid card (the message names the file and the field).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / ValueError variants
        raise CheckpointError(f"{path}: not a readable ONNX model ({e})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path}: ONNX model has no defectlite metadata (export it with `defectlite export`)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the defectlite metadata is not JSON ({e})") from None
    try:
        return check_metadata(meta)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _finite_numbers(value: Any, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def check_metadata(meta: Any) -> dict[str, Any]:
    """Validate the fields every task reads (``task`` defaults to ``classify`` for files exported before it
    was recorded); the task's runtime checks its own fields against the model's outputs.

    Returns:
        ``meta`` with ``task`` filled in.

    Raises:
        CheckpointError: a missing field or one of the wrong type or length (the message names it).
    """
    if not isinstance(meta, dict):
        raise CheckpointError("the defectlite metadata is not a JSON object")
    meta = {**meta, "task": task_name(meta)}
    classes = meta.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise CheckpointError(f"metadata 'classes' must be a non-empty list of names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise CheckpointError(f"metadata 'classes' names a class twice: {classes}")
    size = meta.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise CheckpointError(f"metadata 'input_size' must be [H, W] in pixels, got {size!r}")
    channels = meta.get("channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise CheckpointError(f"metadata 'channels' must be 1 or 3, got {channels!r}")
    for key in ("mean", "std"):
        if not _finite_numbers(meta.get(key), channels):
            raise CheckpointError(f"metadata {key!r} must be {channels} finite number(s), got {meta.get(key)!r}")
    if min(meta["std"]) <= 0:
        raise CheckpointError(f"metadata 'std' must be positive, got {meta['std']}")
    if not isinstance(meta["task"], str):
        raise CheckpointError(f"metadata 'task' must be a name, got {meta['task']!r}")
    return meta


def ort_session(onnx_path: str | Path, threads: int, *, spinning: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation.

    ``spinning=False`` stops idle worker threads from busy-waiting (``session.intra_op.allow_spinning``):
    slower for back-to-back benchmark calls, better when the process also serves HTTP.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
