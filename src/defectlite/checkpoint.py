"""Self-describing checkpoints: weights in safetensors plus a JSON card; nothing is ever unpickled.

``<stem>.safetensors`` holds the model's state dict; ``<stem>.json`` (the *card*) holds what is
needed to rebuild and use the model: registry name and kwargs, ``num_classes``, ``in_chans``,
class names, input size, normalisation, whether it is re-parameterised, plus metrics. Loading
(:func:`defectlite.compress.restore.load_checkpoint`) rebuilds the model from the card, replays the
recorded transforms (pruning, re-parameterisation), then loads the weights (strictly).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectlite.errors import CheckpointError
from defectlite.utils import atomic_write, atomic_write_json

if TYPE_CHECKING:  # PyTorch is imported by the functions that need it, not by this module (see load_card)
    import torch
    from torch import nn

CARD_VERSION = 1


def checkpoint_stem(path: str | Path) -> Path:
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


def save_checkpoint(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor], card: dict[str, Any]) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; returns the stem.

    Args:
        path: stem, or a path ending in .safetensors / .json.
        model: a module (its ``state_dict()`` is saved) or a state dict.
        card: JSON-serialisable description; must hold ``model``, ``num_classes``, ``in_chans``.

    Raises:
        CheckpointError: the card lacks a required key.
    """
    missing = {"model", "num_classes", "in_chans"} - set(card)
    if missing:
        raise CheckpointError(f"checkpoint card lacks {sorted(missing)}")
    stem = checkpoint_stem(path)
    weights = model if isinstance(model, Mapping) else model.state_dict()
    save_tensors(stem.with_suffix(".safetensors"), dict(weights))
    atomic_write_json(stem.with_suffix(".json"), {"card_version": CARD_VERSION, **card})
    return stem


def read_card(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's JSON card.

    Raises:
        CheckpointError: missing or not JSON.
    """
    card_path = checkpoint_stem(path).with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"checkpoint card not found: {card_path}")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{card_path}: not valid JSON ({e})") from None
