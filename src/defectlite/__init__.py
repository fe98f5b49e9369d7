"""defectlite: lightweight surface-defect classifiers, from a folder of images to a CPU-fast model.

Public API::

    from defectlite import Predictor, create_model, list_models, reparameterize
"""

from defectlite._lazy import lazy_attributes
from defectlite.deploy import Predictor
from defectlite.errors import CheckpointError, ConfigError, DataError, DefectliteError
from defectlite.tasks.classify.runtime import Prediction  # a classifier's answer

# PyTorch-side names load on first use: ``from defectlite import Predictor`` stays free of torch.
__getattr__ = lazy_attributes(
    __name__,
    {
        "create_model": "defectlite.models",
        "list_models": "defectlite.models",
        "reparameterize": "defectlite.compress.reparam",
    },
)

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
