"""Preprocessing: the one definition used by training, evaluation and prediction (NumPy and PIL only).

An image becomes a model input in two steps, both defined only here:

1. :func:`to_uint8` — decode to 8 bits (:mod:`defectlite.data.decode`: every bit depth and mode,
   with its rules for 12/16-bit, float and alpha), convert to grey (``channels=1``) or RGB
   (``channels=3``), resize to the recipe's input size with PIL's bilinear filter; result
   ``(C, H, W)`` uint8. The training cache stores exactly this.
2. :func:`normalize` — ``(x / 255 - mean) / std`` per channel, on a batch ``(N, C, H, W)``.

Training augmentation (PyTorch) lives in :mod:`defectlite.data.augment`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from defectlite.data.decode import ImageSource, decode
from defectlite.errors import DataError

__all__ = ["ImageSource", "channel_stats", "decode", "normalize", "to_uint8"]


def to_uint8(source: ImageSource, size: Sequence[int], channels: int = 1, name: str | None = None) -> np.ndarray:
    """Decode to 8 bits, convert and resize one image.

    A high-bit-depth image is brought to 8 bits at full size first, then takes the 8-bit path: a 16-bit
    copy (``v * 257``) or 12-bit copy (``v * 16``) of an 8-bit image gives the same array as the original.

    Args:
        source: see :func:`defectlite.data.decode.decode`.
        size: (H, W) in pixels.
        channels: 1 (grey, the default of every recipe) or 3 (RGB).

    Returns:
        uint8 array (C, H, W).

    Raises:
        DataError: see :func:`defectlite.data.decode.decode`; ``channels`` not 1 or 3.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    img = decode(source, name, mode).convert(mode)
    h, w = int(size[0]), int(size[1])
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Map uint8 pixels to the model's input: ``(x / 255 - mean) / std`` per channel.

    NumPy on purpose: the inference service calls it per request, where PyTorch's per-op overhead
    was the largest single cost; training wraps the result with ``torch.from_numpy`` (no copy).

    Args:
        x: uint8 (N, C, H, W) or (C, H, W), array or CPU tensor.
        mean, std: per-channel statistics in [0, 1] units (length C).

    Returns:
        float32 array, same shape.
    """
    a = np.asarray(x)  # a CPU tensor converts without a copy
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (a.astype(np.float32) * np.float32(1 / 255) - m) / s


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)).round(4).tolist(), np.maximum(x.std(axis=(0, 2, 3)), 1e-3).round(4).tolist()
