"""An exported defectlite ONNX file: the metadata contract (written by ``deploy.export``, read by the
Predictor, quantisation and benchmarks) and an ONNX Runtime session, shared by evaluate, compress and deploy
as :mod:`defectlite.checkpoint` is for PyTorch checkpoints.

Imports neither PyTorch nor timm, so that ``defectlite predict``, the Python :class:`Predictor` and
``defectlite serve`` on an ONNX file alone load only NumPy, Pillow, ONNX and ONNX Runtime
(about 0.1 GB resident instead of 0.7 GB with torch and timm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from defectlite.errors import CheckpointError

METADATA_KEY = "defectlite"  # the ONNX metadata_props key holding the model card as JSON (written by export_onnx)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``defectlite`` metadata of an exported ONNX file.

    Raises:
        CheckpointError: missing file, not ONNX, or exported without defectlite metadata.
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
    return json.loads(props[METADATA_KEY])


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
