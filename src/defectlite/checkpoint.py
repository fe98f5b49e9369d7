"""Self-describing checkpoints: weights in safetensors plus a JSON card; nothing is ever unpickled.

``<stem>.safetensors`` holds the model's state dict; ``<stem>.json`` (the *card*) holds what is
needed to rebuild and use the model: registry name and kwargs, ``num_classes``, ``in_chans``,
class names, input size, normalisation, whether it is re-parameterised, plus metrics. Loading
rebuilds the model from the card with :func:`defectlite.models.create_model`, applies the
recorded transforms, then loads the weights (strictly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectlite.errors import CheckpointError
from defectlite.utils import atomic_write, atomic_write_json

if TYPE_CHECKING:  # PyTorch is imported by the functions that need it, not by this module (see resolve_checkpoint)
    import torch
    from torch import nn

CARD_VERSION = 1


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a flat dict of tensors as safetensors (tensors are made contiguous copies)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(flat, str(p), metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file.

    Raises:
        CheckpointError: missing or not a valid safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def save_checkpoint(path: str | Path, model: nn.Module, card: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; returns the stem.

    Args:
        path: stem, or a path ending in .safetensors / .json.
        model: its ``state_dict()`` is saved.
        card: JSON-serialisable description; must hold ``model``, ``num_classes``, ``in_chans``.

    Raises:
        CheckpointError: the card lacks a required key.
    """
    missing = {"model", "num_classes", "in_chans"} - set(card)
    if missing:
        raise CheckpointError(f"checkpoint card lacks {sorted(missing)}")
    stem = _stem(path)
    save_tensors(stem.with_suffix(".safetensors"), model.state_dict())
    atomic_write_json(stem.with_suffix(".json"), {"card_version": CARD_VERSION, **card})
    return stem


def read_card(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's JSON card.

    Raises:
        CheckpointError: missing or not JSON.
    """
    card_path = _stem(path).with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"checkpoint card not found: {card_path}")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{card_path}: not valid JSON ({e})") from None


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """Rebuild the (randomly initialised) model a card describes, with its transforms replayed in order.

    Transforms (``card["transforms"]``, a list): ``{"prune_channels": history, "input_shape": [...]}``
    (Torch-Pruning history), ``{"drop_blocks": [names]}`` (layer pruning); ``card["reparameterized"]``
    fuses re-parameterisable blocks last.

    Raises:
        CheckpointError: an unknown transform.
    """
    from defectlite.compress.reparam import reparameterize
    from defectlite.models import create_model

    model = create_model(card["model"], card["num_classes"], card["in_chans"], **card.get("model_kwargs", {}))
    for t in card.get("transforms", []):
        if "prune_channels" in t:
            from defectlite.compress.prune import replay

            replay(model, t["prune_channels"], t["input_shape"])
        elif "drop_blocks" in t:
            from defectlite.compress.layer_prune import drop_blocks

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
    stem = _stem(path)
    card = read_card(stem)
    model = build_from_card(card)
    state = load_tensors(stem.with_suffix(".safetensors"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{stem}.safetensors does not match the model in its card: {e}") from None
    return model.eval(), card


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint stem of the deployed model for a run folder, an ONNX file, or a checkpoint path.

    ``RUN`` -> ``RUN/model``; ``X.onnx`` -> ``X`` (``X.json`` + ``X.safetensors`` beside it);
    ``X.json`` / ``X.safetensors`` / ``X`` -> ``X``.

    Raises:
        CheckpointError: the card or the weights are missing (the message names the path).
    """
    p = Path(path)
    stem = p / "model" if p.is_dir() else (p.with_suffix("") if p.suffix in (".onnx", ".json", ".safetensors") else p)
    missing = [s for s in (".json", ".safetensors") if not stem.with_suffix(s).is_file()]
    if missing:
        names = " and ".join(str(stem.with_suffix(s)) for s in missing)
        raise CheckpointError(f"no PyTorch checkpoint for {p}: {names} not found (Grad-CAM needs the model weights)")
    return stem
