"""Deployment: ONNX export with metadata and parity check, and the ONNX Runtime Predictor."""

from defectlite.deploy.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
