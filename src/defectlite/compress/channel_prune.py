"""Channel pruning by a global BN-gamma threshold, done by Torch-Pruning's dependency graph.

Source: YOLOv4 pruning paper (yolov4-pruning-distillation-detection.md, §2.2.3): after sparsity
training, channels whose |gamma| falls under one global threshold (chosen so that a target share
of channels goes, paper: 0.9) are removed. Torch-Pruning (Fang et al., CVPR 2023) finds the
coupled layers so residual adds, concatenations and depthwise convs stay consistent; the
classifier is never pruned. This is the only module of defectlite that imports torch_pruning.

The pruning history (layer name, out/in, channel indices) is JSON and goes into the checkpoint
card, so :func:`replay` rebuilds the pruned architecture from a fresh model before the weights
are loaded (nothing is unpickled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from defectlite.errors import ConfigError

log = logging.getLogger(__name__)


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The output layer(s) to keep intact: timm's ``get_classifier()``, else the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [convs[-1]] if convs else []


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Layers Torch-Pruning must leave alone: the output layers — those the model lists in its own
    ``pruning_ignored_layers()`` if it has one (e.g. a detector's head convs, whose channels are the
    anchor x (5 + K) layout), else the classifier; attention gates whose Conv1d mixes
    neighbouring channels (ECA), which no channel index mapping can follow; and the convs of timm's
    ``MixedConv2d`` (PDMSNet's 3/5/7 depthwise groups), which splits its input by stored group sizes
    that Torch-Pruning neither maps (its importance indices overrun the groups) nor updates."""
    from timm.layers import MixedConv2d

    own = getattr(model, "pruning_ignored_layers", None)
    out = list(own()) if callable(own) else classifier_layers(model)
    out += [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    out += [c for m in model.modules() if isinstance(m, MixedConv2d) for c in m.values()]
    return out


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d, by module name (for before/after tables)."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def prune_channels(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float,
    *,
    max_layer_ratio: float = 0.95,
    round_to: int | None = None,
) -> list[list[Any]]:
    """Remove the share ``ratio`` of prunable channels with the smallest |gamma|, globally, in place.

    Args:
        model: trained model with BatchNorm after its convs (eval mode is set).
        input_shape: example input (N, C, H, W) for tracing.
        ratio: target share of channels to remove, in (0, 1) (paper: 0.9).
        max_layer_ratio: at most this share of any one layer is removed (keeps every layer alive).
        round_to: keep channel counts multiples of this (SIMD-friendly), or None.

    Returns:
        The pruning history (JSON-serialisable) for :func:`replay`.

    Raises:
        ConfigError: ``ratio`` outside (0, 1).
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in (0, 1), got {ratio}")
    import torch_pruning as tp

    model.eval()
    example = torch.zeros(*input_shape)
    pruner = tp.pruner.BNScalePruner(
        model,
        example,
        importance=tp.importance.BNScaleImportance(),
        global_pruning=True,
        pruning_ratio=ratio,
        max_pruning_ratio=max_layer_ratio,
        ignored_layers=_ignored_layers(model),
        round_to=round_to,
    )
    pruner.step()
    history = [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()]
    log.info("pruned %d channel groups (ratio %.2f)", len(history), ratio)
    return history


def replay(model: nn.Module, history: Sequence[Sequence[Any]], input_shape: Sequence[int]) -> nn.Module:
    """Re-apply a pruning history to a freshly built model (same architecture), in place."""
    import torch_pruning as tp

    model.eval()
    dg = tp.DependencyGraph().build_dependency(model, torch.zeros(*input_shape), verbose=False)
    dg.load_pruning_history([(n, bool(o), list(i)) for n, o, i in history])
    return model
