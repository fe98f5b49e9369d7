"""Rebuild a model from its checkpoint card: create it, replay its recorded transforms, load its weights.

The card (:mod:`defectlite.checkpoint`) records the registry name and kwargs and, in order, what was done to
the model after training — channel pruning (Torch-Pruning history), layer pruning (dropped blocks),
re-parameterisation — so that loading builds exactly the same architecture before the (strict) weights load.
Nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from defectlite.checkpoint import checkpoint_stem, load_tensors, read_card
from defectlite.compress.channel_prune import replay
from defectlite.compress.layer_prune import drop_blocks
from defectlite.compress.reparam import reparameterize
from defectlite.errors import CheckpointError
from defectlite.models import create_model


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """Rebuild the (randomly initialised) model a card describes, with its transforms replayed in order.

    Transforms (``card["transforms"]``, a list): ``{"prune_channels": history, "input_shape": [...]}``
    (Torch-Pruning history), ``{"drop_blocks": [names]}`` (layer pruning); ``card["reparameterized"]``
    fuses re-parameterisable blocks last.

    Raises:
        CheckpointError: an unknown transform.
    """
    model = create_model(card["model"], card["num_classes"], card["in_chans"], **card.get("model_kwargs", {}))
    for t in card.get("transforms", []):
        if "prune_channels" in t:
            replay(model, t["prune_channels"], t["input_shape"])
        elif "drop_blocks" in t:
            drop_blocks(model, t["drop_blocks"])
        else:
            raise CheckpointError(f"unknown model transform in checkpoint card: {sorted(t)}")
    if card.get("reparameterized"):
        model = reparameterize(model, inplace=True)
    return model


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its card and load its safetensors weights (strict).

    Returns:
        (model in eval mode, card).

    Raises:
        CheckpointError: missing files, or weights that do not fit the model the card describes.
    """
    stem = checkpoint_stem(path)
    card = read_card(stem)
    model = build_from_card(card)
    state = load_tensors(stem.with_suffix(".safetensors"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{stem}.safetensors does not match the model in its card: {e}") from None
    return model.eval(), card
