"""Rebuild a model from its checkpoint card: create it, replay its recorded transforms, load its weights.

The card (:mod:`defectlite.checkpoint`) records the registry name and kwargs and, in order, what was done to
the model after training — channel pruning (Torch-Pruning history), layer pruning (dropped blocks),
re-parameterisation — so that loading builds exactly the same architecture before the (strict) weights load.
Nothing is unpickled.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from defectlite.checkpoint import checkpoint_stem, load_tensors, read_card
from defectlite.compress.channel_prune import replay
from defectlite.compress.layer_prune import drop_blocks
from defectlite.compress.reparam import reparameterize
from defectlite.errors import CheckpointError, UnknownModelError
from defectlite.models import TIMM_PREFIX, create_model, get_entrypoint

TIMM_KWARGS = frozenset({"drop_rate", "drop_path_rate", "global_pool"})  # safe timm builder options a card may carry


def allowed_kwargs(name: str) -> frozenset[str]:
    """Keyword options a card may pass to the builder of ``name``: the registered builder's own keyword
    parameters, or :data:`TIMM_KWARGS` for ``timm:<name>`` (never ``checkpoint_path`` or ``pretrained_cfg``,
    which would make timm read any file a card names)."""
    if name.startswith(TIMM_PREFIX):
        return TIMM_KWARGS
    params = inspect.signature(get_entrypoint(name)).parameters
    return frozenset(p for p, v in params.items() if v.kind is v.KEYWORD_ONLY) - {"num_classes", "in_chans"}


def check_card(card: Any, where: str = "checkpoint card") -> dict[str, Any]:
    """Validate what :func:`build_from_card` reads from a card (it may come from an untrusted file).

    Raises:
        CheckpointError: a missing or mistyped field, a class list that does not fit ``num_classes``, an unknown
            model, or a ``model_kwargs`` key the model's builder does not take (the message names it).
    """
    if not isinstance(card, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    for key, kind in (("model", str), ("num_classes", int), ("in_chans", int)):
        if not isinstance(card.get(key), kind) or isinstance(card.get(key), bool):
            raise CheckpointError(f"{where}: field {key!r} must be a {kind.__name__}, got {card.get(key)!r}")
    if card["num_classes"] < 1 or card["in_chans"] < 1:
        raise CheckpointError(f"{where}: num_classes and in_chans must be positive")
    classes = card.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != card["num_classes"]):
        raise CheckpointError(
            f"{where}: 'classes' must list num_classes = {card['num_classes']} names, got {classes!r}"
        )
    kwargs = card.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: 'model_kwargs' must be a mapping")
    try:
        allowed = allowed_kwargs(card["model"])
    except UnknownModelError as e:
        raise CheckpointError(f"{where}: {e}") from None
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        options = ", ".join(sorted(allowed)) or "none"
        raise CheckpointError(
            f"{where}: model_kwargs {unknown} are not options of {card['model']} (allowed: {options})"
        )
    if not isinstance(card.get("transforms", []), list):
        raise CheckpointError(f"{where}: 'transforms' must be a list")
    return card


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """Rebuild the (randomly initialised) model a card describes, with its transforms replayed in order.

    Transforms (``card["transforms"]``, a list): ``{"prune_channels": history, "input_shape": [...]}``
    (Torch-Pruning history), ``{"drop_blocks": [names]}`` (layer pruning); ``card["reparameterized"]``
    fuses re-parameterisable blocks last.

    Raises:
        CheckpointError: an invalid card (:func:`check_card`) or an unknown transform.
    """
    check_card(card)
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
    card = check_card(read_card(stem), f"{stem}.json")
    model = build_from_card(card)
    state = load_tensors(stem.with_suffix(".safetensors"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{stem}.safetensors does not match the model in its card: {e}") from None
    return model.eval(), card
