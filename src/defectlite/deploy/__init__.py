"""Deployment: ONNX export with metadata and parity check, the ONNX Runtime Predictor, the HTTP service."""

from defectlite.deploy.predictor import Predictor

__all__ = ["Predictor"]
