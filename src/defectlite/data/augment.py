"""Training augmentation on uint8 tensors ``(C, H, W)``, built from ``torchvision.transforms.v2``.

Applied to the cached :func:`~defectlite.data.transforms.to_uint8` images before
:func:`~defectlite.data.transforms.normalize`; prediction never augments. Kept apart from
:mod:`defectlite.data.transforms` so that the deployment path does not import PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from defectlite.errors import DataError


class _RandomCropResize(torch.nn.Module):
    """Crop ``share`` of each side at a random position, then resize back (bilinear) to the input size."""

    def __init__(self, share: float) -> None:
        super().__init__()
        if not 0.0 < share <= 1.0:
            raise DataError(f"crop share must be in (0, 1], got {share}")
        self.share = share

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * self.share)), max(1, round(w * self.share))
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)


def train_augment(
    *,
    hflip: bool = True,
    vflip: bool = True,
    rotate_deg: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    erasing: float = 0.0,
    crop: float = 1.0,
):
    """Training augmentation on uint8 tensors (C, H, W), from ``torchvision.transforms.v2``.

    Args:
        hflip, vflip: random horizontal / vertical flips (p = 0.5 each).
        rotate_deg: random rotation in [-rotate_deg, rotate_deg] degrees, bilinear, zero fill.
        brightness, contrast: ColorJitter strengths (0 = off).
        erasing: probability of erasing one random rectangle (random erasing / cutout; Zhong et al. 2020).
        crop: < 1 takes a random crop of this share of each side and resizes it back to the input size
            (the WeldNet paper crops 600 x 731 of 800 x 974, i.e. 0.75).
    """
    from torchvision.transforms import v2

    ops: list = []
    if crop < 1.0:
        ops.append(_RandomCropResize(crop))
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if vflip:
        ops.append(v2.RandomVerticalFlip())
    if rotate_deg > 0:
        ops.append(v2.RandomRotation(rotate_deg, interpolation=v2.InterpolationMode.BILINEAR))
    if brightness > 0 or contrast > 0:
        ops.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if erasing > 0:
        ops.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(ops) if ops else None
