"""INT8 post-training static quantisation of an exported model with ONNX Runtime.

Weights and activations of convolutions and matrix products go to INT8 (QDQ format, which ORT
runs with its VNNI / AMX INT8 kernels); the calibration images are training images, never test
images. Re-parameterised RepVGG-style kernels are known to quantise badly per tensor (Chu et al.
2022, "Make RepVGG Greater Again": the fused identity / 1x1 branches give channels very different
weight ranges), so weights are quantised per output channel by default.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from defectlite.deploy.export import METADATA_KEY
from defectlite.errors import ConfigError
from defectlite.utils import atomic_write

log = logging.getLogger(__name__)


class _ArrayReader:
    """ONNX Runtime calibration reader over a float32 array (N, C, H, W), in batches."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16) -> None:
        self._it = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some calibrators
        pass


def quantize_onnx(
    model_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    exclude: list[str] | None = None,
) -> Path:
    """Write an INT8 (QDQ) copy of an ONNX classifier, calibrated on ``calibration``.

    Args:
        model_path: float32 ONNX model (with defectlite metadata, which is copied over).
        out_path: the INT8 model to write (atomically).
        calibration: normalised float32 inputs (N, C, H, W), e.g. 200-500 training images.
        per_channel: per-output-channel weight scales (default; needed for fused RepVGG kernels).
        method: activation range calibration: ``minmax``, ``entropy`` or ``percentile``.
        exclude: node names to keep in float32.

    Raises:
        ConfigError: unknown calibration method or empty calibration set.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    if len(calibration) == 0:
        raise ConfigError("the calibration set is empty")
    src = onnx.load(str(model_path))
    meta = {p.key: p.value for p in src.metadata_props}
    input_name = src.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(q),
            _ArrayReader(input_name, calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=exclude or [],
        )
        proto = onnx.load(str(q))
    if METADATA_KEY in meta:
        import json

        info = json.loads(meta[METADATA_KEY])
        info["quantization"] = {
            "format": "QDQ",
            "weights": "int8",
            "activations": "uint8",
            "per_channel": per_channel,
            "calibration": method,
            "images": len(calibration),
        }
        meta[METADATA_KEY] = json.dumps(info)
    onnx.helper.set_model_props(proto, meta)
    return atomic_write(out_path, lambda p: onnx.save_model(proto, str(p)))
