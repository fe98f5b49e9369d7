"""defectlite: lightweight surface-defect classifiers, from a folder of images to a CPU-fast model.

Public API::

    from defectlite import Predictor, create_model, list_models, reparameterize
"""

from defectlite.compress.reparam import reparameterize
from defectlite.deploy.predictor import Prediction, Predictor
from defectlite.errors import CheckpointError, ConfigError, DataError, DefectliteError
from defectlite.models import create_model, list_models

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DefectliteError",
    "Prediction",
    "Predictor",
    "create_model",
    "list_models",
    "reparameterize",
]
