"""Models: the registry, its factory, and one module per family (importing a family registers it)."""

from defectlite.models import (  # noqa: F401  (registers the models)
    baselines,
    cpu_repnet,
    dsc_cnn,
    eg_repvgg,
    pdmsnet,
    weldnet,
    yolo,
    yolov4,
)
from defectlite.models._factory import TIMM_PREFIX, create_model
from defectlite.models._registry import ModelInfo, get_entrypoint, list_models, model_info, register_model

__all__ = ["TIMM_PREFIX", "ModelInfo", "create_model", "get_entrypoint", "list_models", "model_info", "register_model"]
