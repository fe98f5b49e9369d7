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


class BatchFlip(torch.nn.Module):
    """Flip each image of a batch (N, C, H, W) along ``dim`` (-1 horizontal, -2 vertical) with probability
    ``p``, each image its own draw: ``torchvision.transforms.v2.RandomHorizontalFlip`` /
    ``RandomVerticalFlip`` per image, as one ``torch.where`` over the batch."""

    def __init__(self, dim: int, p: float = 0.5) -> None:
        super().__init__()
        self.dim, self.p = dim, p

    def forward(self, x: Tensor, flip: Tensor | None = None) -> Tensor:
        """``flip``: (N,) bool, which images flip; None draws them from the global torch generator."""
        if flip is None:
            flip = torch.rand(len(x)) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(self.dim), x)


class BatchColorJitter(torch.nn.Module):
    """Brightness and contrast of each image of a uint8 batch (N, C, H, W, C = 1 or 3) by its own factors,
    drawn uniformly from [max(0, 1 - brightness), 1 + brightness] and the same for contrast, applied in a random
    order per image with uint8 rounding between them: ``torchvision.transforms.v2.ColorJitter(brightness,
    contrast)`` per image, as a few batch-wide tensor ops (the same arithmetic as ``adjust_brightness`` /
    ``adjust_contrast``).

    Raises:
        DataError: a strength is negative or both are 0.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0) -> None:
        super().__init__()
        if brightness < 0 or contrast < 0 or not (brightness or contrast):
            raise DataError(f"jitter strengths must be >= 0 and not both 0, got {brightness}, {contrast}")
        self.brightness, self.contrast = float(brightness), float(contrast)

    @staticmethod
    def _brightness(x: Tensor, factor: Tensor) -> Tensor:
        return x.mul(factor).clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _contrast(x: Tensor, factor: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        grey = x.float() if x.shape[1] == 1 else TF.rgb_to_grayscale(x.float()).floor_()
        mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
        return x.mul(factor).add_(mean * (1 - factor)).clamp_(0, 255).to(torch.uint8)

    def forward(self, x: Tensor, factors: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """``factors``: (N,) brightness and contrast factors and (N,) bool "contrast first"; None draws them
        from the global torch generator."""
        n = len(x)
        if factors is None:
            b = torch.empty(n).uniform_(max(0.0, 1 - self.brightness), 1 + self.brightness) if self.brightness else None
            c = torch.empty(n).uniform_(max(0.0, 1 - self.contrast), 1 + self.contrast) if self.contrast else None
            factors = (b, c, torch.rand(n) < 0.5)
        b, c, contrast_first = factors
        b = None if b is None else b.view(-1, 1, 1, 1)
        c = None if c is None else c.view(-1, 1, 1, 1)
        if b is None:
            return self._contrast(x, c)
        if c is None:
            return self._brightness(x, b)
        out = torch.empty_like(x)
        first, second = contrast_first, ~contrast_first
        out[first] = self._brightness(self._contrast(x[first], c[first]), b[first])
        out[second] = self._contrast(self._brightness(x[second], b[second]), c[second])
        return out


class PerImage:
    """A ``torchvision.transforms.v2`` transform applied to each image of a batch (N, C, H, W) on its own."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, x: Tensor) -> Tensor:
        return torch.stack([self.transform(xi) for xi in x])


class BatchAugment:
    """Training augmentation of a uint8 batch (N, C, H, W): ``steps`` in order (crop -> flips -> rotation ->
    brightness / contrast -> erasing), the common ones batch-wide (:class:`BatchFlip`, :class:`BatchRotation`,
    :class:`BatchColorJitter`), the rest per image (:class:`PerImage`). Also a DataLoader ``collate_fn``
    (:meth:`collate`).
    """

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def __call__(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
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
    """Training augmentation of uint8 batches (N, C, H, W) (:class:`BatchAugment`): flips, rotation and
    brightness / contrast batch-wide, each image its own draw, equal per image to ``torchvision.transforms.v2``'s
    (tested); crop and erasing per image by ``torchvision``; None when every switch is off.

    Args:
        hflip, vflip: random horizontal / vertical flips (p = 0.5 each).
        rotate_deg: random rotation in [-rotate_deg, rotate_deg] degrees, bilinear, zero fill.
        brightness, contrast: ColorJitter strengths (0 = off).
        erasing: probability of erasing one random rectangle (random erasing / cutout; Zhong et al. 2020).
        crop: < 1 takes a random crop of this share of each side and resizes it back to the input size
            (the WeldNet paper crops 600 x 731 of 800 x 974, i.e. 0.75).
    """
    from torchvision.transforms import v2

    steps: list[Any] = [PerImage(_RandomCropResize(crop))] if crop < 1.0 else []
    steps += [BatchFlip(-1)] if hflip else []
    steps += [BatchFlip(-2)] if vflip else []
    steps += [BatchRotation(rotate_deg)] if rotate_deg > 0 else []
    steps += [BatchColorJitter(brightness, contrast)] if brightness > 0 or contrast > 0 else []
    steps += [PerImage(v2.RandomErasing(p=erasing, value=0))] if erasing > 0 else []
    return BatchAugment(steps) if steps else None
