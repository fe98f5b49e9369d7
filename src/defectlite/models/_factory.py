"""create_model: one call for registered models and any timm model (``timm:<name>``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from defectlite.errors import UnknownModelError
from defectlite.models._registry import get_entrypoint

TIMM_PREFIX = "timm:"


def create_model(name: str, num_classes: int, in_chans: int = 1, **kwargs: Any) -> nn.Module:
    """Build a model by registry name, or any timm model as ``timm:<name>``, with random weights.

    Args:
        name: registry name (``defectlite models`` lists them) or ``timm:<timm name>``.
        num_classes: outputs K (classes of a classifier or detector); (N, in_chans, H, W) -> the task's outputs.
        in_chans: input channels (1 = grey, 3 = RGB).
        **kwargs: passed to the builder (e.g. ``pretrained=True`` for timm models with cached weights).

    Raises:
        UnknownModelError: unknown registry or timm name (close matches are suggested).
        ValueError: ``num_classes`` < 1 or ``in_chans`` < 1 (a classifier's data has at least two classes; a
            detector or another task may have one output).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be at least 1, got {in_chans}")
    if name.startswith(TIMM_PREFIX):
        import timm

        from defectlite.models.baselines import timm_model

        timm_name = name[len(TIMM_PREFIX) :]
        if not timm.is_model(timm_name):
            close = timm.list_models(f"*{timm_name}*")[:5]
            hint = f"; close: {', '.join(close)}" if close else ""
            raise UnknownModelError(f"unknown timm model {timm_name!r}{hint}")
        return timm_model(timm_name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return get_entrypoint(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
