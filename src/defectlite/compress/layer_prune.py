"""Layer pruning: remove whole residual blocks whose last batch-norm has the smallest mean |gamma|.

Source: YOLOv4 pruning paper (yolov4-pruning-distillation-detection.md, §2.2.4): each shortcut
block is scored by the mean scale factor of the BN layer before its shortcut add; the N lowest
are cut, leaving the identity path. A block qualifies when it sits in an ``nn.Sequential`` stage,
keeps the shape of its input, and declares a skip connection by one of the conventions of timm
and defectlite: ``downsample is None`` (ResNet blocks), ``has_skip`` (MobileNet / EfficientNet
blocks) or ``has_residual`` (defectlite's fire modules with a shortcut, WeldNet blocks with an identity
shortcut, the detectors' CSP bottlenecks). No per-model code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from defectlite.compress.sparsity import bn_layers
from defectlite.errors import ConfigError


def _declares_skip(block: nn.Module) -> bool:
    if hasattr(block, "downsample") and hasattr(block, "conv1"):
        return block.downsample is None
    return bool(getattr(block, "has_skip", False) or getattr(block, "has_residual", False))


def residual_blocks(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """Removable residual blocks and their score (mean |gamma| of the block's last BN).

    Returns:
        block name -> score, in module order.
    """
    candidates = {
        f"{parent}.{name}" if parent else name: child
        for parent, seq in model.named_modules()
        if isinstance(seq, nn.Sequential)
        for name, child in seq.named_children()
        if _declares_skip(child) and bn_layers(child)
    }
    shapes: dict[str, bool] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, inp[0].shape == out.shape))
        for n, m in candidates.items()
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(*input_shape))
    for h in hooks:
        h.remove()
    return {n: float(bn_layers(m)[-1][1].weight.detach().abs().mean()) for n, m in candidates.items() if shapes.get(n)}


def no_blocks_message(asked: int, have: int) -> str:
    """Why ``--layers asked`` cannot be done on a model with ``have`` removable blocks, and what can."""
    return (
        f"asked to remove {asked} residual blocks, the model has {have} removable ones (blocks with an identity "
        "shortcut: timm ResNets and MobileNet/EfficientNet blocks, pdmsnet fires with shortcuts, weldnet, the YOLO "
        "detectors; EG-RepVGG's S-blocks fold their identity branch into one conv and cannot be dropped)"
    )


def drop_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace the named blocks by ``nn.Identity`` in place (replay of a layer-pruning step)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def prune_layers(model: nn.Module, input_shape: Sequence[int], n: int) -> list[str]:
    """Remove the ``n`` residual blocks with the smallest score, in place.

    Returns:
        The removed block names (for the checkpoint card; replay with :func:`drop_blocks`).

    Raises:
        ConfigError: the model has fewer than ``n`` removable residual blocks.
    """
    scores = residual_blocks(model, input_shape)
    if n > len(scores):
        raise ConfigError(no_blocks_message(n, len(scores)))
    names = sorted(scores, key=scores.get)[:n]
    drop_blocks(model, names)
    return names
