"""The resumable state of a training stage: one safetensors file, written once per epoch, atomically.

``<stage>/last.safetensors`` holds, after each finished epoch, everything :func:`~defectlite.train.loop.fit`
needs to continue exactly where it stopped:

- ``model.*``: the trained weights; ``best.*``: the selected (validated) weights so far;
- ``optim.<i>.<key>``: every tensor of the optimizer's state (momentum buffers, Adam moments, step counts:
  any ``torch.optim`` optimizer), its param groups and non-tensor state in the metadata;
- ``avg.*``: the EMA / SWA average (:class:`~defectlite.train.averaging.WeightAverage`);
- ``rng.*``: the states of every random generator the stage draws from (Python ``random``, NumPy's global
  generator (timm Mixup draws from it), PyTorch's CPU and CUDA generators, the batch-order generator);
- metadata (JSON): epoch, best score / loss / epoch, seconds trained, the optimizer's param groups.

The file is the stage's commit point: a kill before its rename leaves the previous epoch's state whole,
a kill after it leaves this epoch's. ``best.safetensors`` / ``best.json`` are derived from it and
rewritten on resume (:func:`write_best`), so no kill point can leave them out of step.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectlite.checkpoint import load_tensors, save_checkpoint, save_tensors
from defectlite.errors import CheckpointError

STATE_VERSION = 2
META_KEY = "defectlite_train_state"


@dataclass
class Best:
    """The selected epoch so far: highest validation score, ties to the latest epoch."""

    score: float = -float("inf")
    loss: float = float("inf")
    epoch: int = -1


@dataclass
class StageState:
    """What :func:`save_state` writes and :func:`load_state` returns (besides the tensors it loads in place)."""

    epoch: int = -1  # last finished epoch (-1: none yet)
    best: Best = field(default_factory=Best)
    train_seconds: float = 0.0


def _rng_tensors(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.batch_order": generator.get_state(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def _set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.batch_order"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, other = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                other.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def _set_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(
    path: Path,
    *,
    model: nn.Module,
    best_model: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    average: dict[str, torch.Tensor],
    generator: torch.Generator,
    state: StageState,
) -> None:
    """Write the stage state after a finished epoch, atomically (see the module docstring).

    Args:
        best_model: state dict of the selected weights (the EMA / SWA average when averaging is on).
        average: :meth:`WeightAverage.state` tensors.
    """
    opt_tensors, opt_meta = _optim_tensors(optimizer)
    rng_tensors, rng_meta = _rng_tensors(generator)
    tensors = {
        **{f"model.{k}": v for k, v in model.state_dict().items()},
        **{f"best.{k}": v for k, v in best_model.items()},
        **{f"avg.{k}": v for k, v in average.items()},
        **opt_tensors,
        **rng_tensors,
    }
    meta = {
        "version": STATE_VERSION,
        "epoch": state.epoch,
        "best": vars(state.best),
        "train_seconds": state.train_seconds,
        "optim": opt_meta,
        "rng": rng_meta,
    }
    save_tensors(path, tensors, metadata={META_KEY: json.dumps(meta)})


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(
    path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[StageState, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Restore model, optimizer and random generators in place from :func:`save_state`'s file.

    Returns:
        (state, best weights, average tensors) — the caller restores its averager and ``best`` checkpoint.

    Raises:
        CheckpointError: the file is not a training state of this version, or does not fit ``model``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
    except (KeyError, OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: not a defectlite training state ({e}); delete it to restart the stage"
        ) from None
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: training state version {meta.get('version')}, expected {STATE_VERSION}")
    tensors = load_tensors(path)
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in _prefixed(tensors, "model.").items()})
        _set_optim(optimizer, tensors, meta["optim"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    _set_rng(tensors, meta["rng"], generator)
    state = StageState(meta["epoch"], Best(**meta["best"]), meta["train_seconds"])
    return state, _prefixed(tensors, "best."), _prefixed(tensors, "avg.")


def write_best(stem: Path, weights: dict[str, torch.Tensor], card: dict[str, Any], best: Best) -> None:
    """Write the loadable ``best.safetensors`` + ``best.json`` checkpoint of the selected epoch."""
    save_checkpoint(stem, weights, {**card, "epoch": best.epoch, "val_score": best.score, "val_loss": best.loss})
