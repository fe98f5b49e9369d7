"""Fold a temperature into a classifier: ``model(x) / T`` computed by the model itself (Guo et al. 2017, §4.2).

The output layer (the classifier: timm's ``get_classifier()``, else the last ``nn.Linear``, else the last
``nn.Conv2d``) has its weight and bias divided by T in place. That equals dividing the logits by T when
everything after the layer is positively homogeneous (global pooling, flatten, dropout in eval mode, ReLU:
relu(z / T) = relu(z) / T for T > 0), which :func:`fold_temperature` checks numerically on real inputs. The
saved weights are then the calibrated ones: loading, re-parameterisation, ONNX export and INT8 all carry the
calibration with no extra step or node.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from defectlite.compress.channel_prune import classifier_layers
from defectlite.errors import CheckpointError

FOLD_TOL = 1e-4  # max |model(x) - old(x) / T| relative to max |old(x) / T| accepted after folding


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float, probe: Tensor) -> nn.Module:
    """Make ``model`` output its logits divided by ``temperature``, in place.

    Args:
        model: a classifier (N, C, H, W) -> logits (N, K), any form (training or fused).
        temperature: T > 0.
        probe: real inputs (n, C, H, W), normalised, to check the fold on.

    Returns:
        ``model`` (eval mode).

    Raises:
        CheckpointError: no output layer found, or the outputs after folding are not the old ones / T (a
            non-homogeneous op after the classifier), in which case the weights are restored.
    """
    if not temperature > 0:
        raise CheckpointError(f"temperature must be > 0, got {temperature}")
    model.eval()
    layers = [m for m in classifier_layers(model) if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise CheckpointError(f"{type(model).__name__}: no linear or convolutional output layer to fold a temperature")
    layer = layers[0]
    before = model(probe).float()
    saved = [p.detach().clone() for p in (layer.weight, layer.bias) if p is not None]
    for p in (layer.weight, layer.bias):
        if p is not None:
            p.div_(temperature)
    err = float((model(probe).float() - before / temperature).abs().max())
    scale = float((before / temperature).abs().max()) or 1.0
    if not err <= FOLD_TOL * scale:
        for p, old in zip((q for q in (layer.weight, layer.bias) if q is not None), saved):
            p.copy_(old)
        raise CheckpointError(
            f"{type(model).__name__}: dividing the output layer by T does not divide the logits by T "
            f"(max difference {err:.2e}); the model is left uncalibrated"
        )
    return model
