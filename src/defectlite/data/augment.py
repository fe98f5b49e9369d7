"""Training augmentation of uint8 batches ``(N, C, H, W)``, built from ``torchvision.transforms.v2``.

Applied to the cached :func:`~defectlite.data.transforms.to_uint8` images before
:func:`~defectlite.data.transforms.normalize`; prediction never augments. Kept apart from
:mod:`defectlite.data.transforms` so that the deployment path does not import PyTorch.
"""

from __future__ import annotations

from typing import Any

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


class BatchRotation(torch.nn.Module):
    """Rotate each image of a uint8 batch (N, C, H, W) by its own random angle in [-degrees, degrees] about the
    centre, bilinear, zero fill, rounded back to uint8: ``torchvision.transforms.v2.RandomRotation`` per image,
    as one ``grid_sample`` over the batch (per image it was ~26 % of a 200 px NEU epoch).

    Raises:
        DataError: ``degrees`` is not positive.
    """

    def __init__(self, degrees: float) -> None:
        super().__init__()
        if not degrees > 0:
            raise DataError(f"rotation degrees must be > 0, got {degrees}")
        self.degrees = float(degrees)

    def forward(self, x: Tensor, angles: Tensor | None = None) -> Tensor:
        """``angles``: (N,) degrees, counter-clockwise as ``torchvision``'s ``rotate``; None draws them
        uniformly from the global torch generator."""
        import torch.nn.functional as F

        n, _, h, w = x.shape
        if angles is None:
            angles = torch.empty(n).uniform_(-self.degrees, self.degrees)
        rad = torch.deg2rad(angles.to(torch.float32))
        cos, sin = torch.cos(rad), torch.sin(rad)
        # output -> input sampling in each axis' normalised coordinates (affine_grid's, without its slow bmm)
        xs = ((torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1).view(1, 1, w)
        ys = ((torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1).view(1, h, 1)
        cos, sin = cos.view(n, 1, 1), sin.view(n, 1, 1)
        grid = torch.stack((cos * xs - sin * (h / w) * ys, sin * (w / h) * xs + cos * ys), dim=-1)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)


class BatchAugment:
    """Training augmentation of a uint8 batch (N, C, H, W), in the order crop -> flips -> rotation ->
    brightness / contrast -> erasing: the cheap ``torchvision.transforms.v2`` ops per image, the rotation
    once for the whole batch (:class:`BatchRotation`). Also a DataLoader ``collate_fn`` (:meth:`collate`).
    """

    def __init__(self, before: Any, rotation: BatchRotation | None, after: Any) -> None:
        self.before, self.rotation, self.after = before, rotation, after

    def __call__(self, x: Tensor) -> Tensor:
        if self.before is not None:
            x = torch.stack([self.before(xi) for xi in x])
        if self.rotation is not None:
            x = self.rotation(x)
        if self.after is not None:
            x = torch.stack([self.after(xi) for xi in x])
        return x

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """(image uint8 (C, H, W), label) items -> augmented (N, C, H, W) uint8 and (N,) labels."""
        return self(torch.stack([x for x, _ in items])), torch.stack([torch.as_tensor(y) for _, y in items])


def train_augment(
    *,
    hflip: bool = True,
    vflip: bool = True,
    rotate_deg: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    erasing: float = 0.0,
    crop: float = 1.0,
) -> BatchAugment | None:
    """Training augmentation of uint8 batches (N, C, H, W), from ``torchvision.transforms.v2`` and one batched
    rotation (:class:`BatchAugment`); None when every switch is off.

    Args:
        hflip, vflip: random horizontal / vertical flips (p = 0.5 each).
        rotate_deg: random rotation in [-rotate_deg, rotate_deg] degrees, bilinear, zero fill.
        brightness, contrast: ColorJitter strengths (0 = off).
        erasing: probability of erasing one random rectangle (random erasing / cutout; Zhong et al. 2020).
        crop: < 1 takes a random crop of this share of each side and resizes it back to the input size
            (the WeldNet paper crops 600 x 731 of 800 x 974, i.e. 0.75).
    """
    from torchvision.transforms import v2

    before: list = []
    if crop < 1.0:
        before.append(_RandomCropResize(crop))
    if hflip:
        before.append(v2.RandomHorizontalFlip())
    if vflip:
        before.append(v2.RandomVerticalFlip())
    after: list = []
    if brightness > 0 or contrast > 0:
        after.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if erasing > 0:
        after.append(v2.RandomErasing(p=erasing, value=0))
    rotation = BatchRotation(rotate_deg) if rotate_deg > 0 else None
    if not (before or after or rotation):
        return None
    return BatchAugment(v2.Compose(before) if before else None, rotation, v2.Compose(after) if after else None)
