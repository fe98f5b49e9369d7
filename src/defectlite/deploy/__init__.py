"""Deployment: ONNX export with metadata and parity check, the ONNX Runtime Predictor, the HTTP service."""

from defectlite.deploy.predictor import Predictor
from defectlite.tasks.classify.runtime import Prediction  # a classifier's answer, re-exported for the public API

__all__ = ["Prediction", "Predictor"]
