"""Sparsity training: an L1 penalty on batch-norm scale factors (gamma).

Source: YOLOv4 pruning paper (yolov4-pruning-distillation-detection.md, §2.2.3, Eq. 11), after
Liu et al. 2017 "Network Slimming": L = L_task + lambda * sum_{BN} |gamma|. Channels whose gamma is
driven towards zero can then be removed (:mod:`defectlite.compress.channel_prune`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from defectlite.utils import atomic_write

_BN = (nn.BatchNorm2d, nn.BatchNorm1d)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every affine batch-norm layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.affine]


def bn_l1(model: nn.Module) -> Tensor:
    """sum over BN layers of sum |gamma| (a scalar tensor with gradient)."""
    terms = [m.weight.abs().sum() for _, m in bn_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def gammas(model: nn.Module) -> np.ndarray:
    """All |gamma| values of the model's BN layers, concatenated (float32, for histograms)."""
    vals = [m.weight.detach().abs().flatten().cpu() for _, m in bn_layers(model)]
    return torch.cat(vals).numpy() if vals else np.zeros(0, np.float32)


class SparsityObjective(nn.Module):
    """Wrap a training objective: ``loss + sparsity * sum |gamma|`` (Eq. 11).

    Args:
        inner: objective returning ``{"loss": ...}`` (cross-entropy or distillation).
        model: the network being trained (its BN gammas are penalised).
        sparsity: lambda >= 0 (the YOLOv4 paper uses 1e-3 to 1e-4 range; Network Slimming 1e-4 to 1e-5).

    Raises:
        ValueError: negative ``sparsity``.
    """

    def __init__(self, inner: nn.Module, model: nn.Module, sparsity: float) -> None:
        super().__init__()
        if sparsity < 0:
            raise ValueError(f"sparsity must be >= 0, got {sparsity}")
        self.inner, self.sparsity = inner, sparsity
        self._model = [model]  # a list, so the model is not registered (and saved) twice

    def forward(self, logits: Tensor, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        out = dict(self.inner(logits, images, labels))
        penalty = bn_l1(self._model[0])
        out["bn_l1"] = penalty.detach()
        out["loss"] = out["loss"] + self.sparsity * penalty
        return out


class GammaRecorder:
    """Keep |gamma| of every BN layer per epoch in ``<path>`` (npz: ``epoch_<k>`` arrays; ``initial``).

    Used as the loop's ``on_epoch_end`` hook during sparsity training; the report plots the
    histograms before, during and after (``defectlite.evaluate.report.write_gamma_plot``).
    """

    def __init__(self, path: Path, model: nn.Module) -> None:
        self.path = Path(path)
        self.snapshots: dict[str, np.ndarray] = dict(np.load(self.path)) if self.path.is_file() else {}
        self.snapshots.setdefault("initial", gammas(model))

    def __call__(self, epoch: int, model: nn.Module) -> None:
        self.snapshots[f"epoch_{epoch:04d}"] = gammas(model)
        atomic_write(self.path, lambda p: _save_npz(p, self.snapshots))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)
