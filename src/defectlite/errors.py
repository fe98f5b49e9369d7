"""The exceptions defectlite raises on bad input; every message names the file or value at fault."""

from __future__ import annotations


class DefectliteError(Exception):
    """Base class of every error defectlite raises on purpose (the CLI prints it and exits 2)."""


class DataError(DefectliteError):
    """A data folder, image or split file that cannot be used as it is."""


class ConfigError(DefectliteError):
    """A recipe, override (``--set key=value``) or option that is unknown or of the wrong type."""


class CheckpointError(DefectliteError):
    """A run folder, checkpoint or model file that is missing, incomplete or inconsistent."""


class TrainingError(DefectliteError):
    """Training cannot go on as configured (a diverged loss or non-finite weights)."""


class UnknownModelError(DefectliteError, KeyError):
    """No model is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# modules of the ``train`` extra (pyproject.toml): a plain ``pip install defectlite`` runs exported models only
TRAIN_EXTRA = frozenset(
    {
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "onnxscript",
        "pytorch_grad_cam",
        "torch_pruning",
    }
)


def missing_train_extra(error: ModuleNotFoundError) -> str | None:
    """Why ``error`` happened if a module of the ``train`` extra is not installed (with the install command), else None.

    Callers re-raise when this returns None: a missing module of our own is a bug, not an install choice.
    """
    if (error.name or "").partition(".")[0] not in TRAIN_EXTRA:
        return None
    return f'{error.name} (not installed: pip install "defectlite[train]")'
