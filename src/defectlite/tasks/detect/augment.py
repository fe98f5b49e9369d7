"""Training augmentation that moves boxes with the image, and the 4-image mosaic (PyTorch, training only).

Both work on ``(image uint8 tensor (C, H, W), boxes float32 (n, 4) x1, y1, x2, y2 in pixels,
labels int64 (n,))`` and return the same triple. Geometry goes through ``torchvision.transforms.v2``
functionals on the image and on a ``tv_tensors.BoundingBoxes`` (XYXY, ``canvas_size``) with the
same parameters, so image and boxes cannot drift apart. Afterwards boxes are clipped to the image
(or, in the mosaic, to their tile) and a box is dropped with its label when it keeps less than
``min_area_ratio`` of its area before clipping or gets a side under ``min_side_px`` (YOLOv5's
``box_candidates``: 0.1 and 2 px). Randomness: :class:`DetAugment` draws from the torch generator
(deterministic under ``torch.manual_seed``, and per DataLoader worker); :func:`mosaic` from the
``numpy.random.Generator`` it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from defectlite.errors import ConfigError, DataError

Triple = tuple[Tensor, Tensor, Tensor]  # image uint8 (C, H, W), boxes float32 (n, 4), labels int64 (n,)
_PROBS = ("hflip", "vflip", "rot90", "mosaic_prob")


@dataclass(frozen=True)
class DetAugment:
    """Random flips, 90-degree rotations, zoom / shift and brightness / contrast, moving the boxes along.

    Called as ``aug(image, boxes, labels) -> (image, boxes, labels)``; the order is flips, rotation,
    affine zoom / shift about the centre (bilinear, ``fill`` outside), brightness, contrast.
    ``mosaic_prob`` is not used here: it is the loader's (see
    :class:`defectlite.tasks.detect.dataset.DetDataset`), kept with the rest of the recipe.
    """

    hflip: float = 0.5  # probability of a horizontal flip (True = 0.5, False = 0)
    vflip: float = 0.5  # probability of a vertical flip (steel surfaces have no "up")
    rot90: float = 0.0  # probability of a rotation by 90, 180 or 270 degrees (only 180 on non-square images)
    scale: float = 0.0  # zoom factor drawn from [1 - scale, 1 + scale]
    translate: float = 0.0  # shift drawn from [-translate, translate] x the width / height
    brightness: float = 0.0  # brightness factor drawn from [1 - brightness, 1 + brightness]
    contrast: float = 0.0  # contrast factor drawn from [1 - contrast, 1 + contrast]
    mosaic_prob: float = 0.0  # share of training items built by mosaic() (YOLOv4 §2.1.1); the loader's
    mosaic_scale: tuple[float, float] = (0.5, 1.0)  # each mosaic tile is resized by a factor drawn from this range
    fill: int = 114  # grey of the pixels an affine shift or a mosaic leaves uncovered (the YOLO habit)
    min_area_ratio: float = 0.1  # drop a box keeping less than this share of its area after clipping
    min_side_px: float = 2.0  # drop a box with a side shorter than this after clipping

    def __post_init__(self) -> None:
        for f in _PROBS:
            v = getattr(self, f)
            if isinstance(v, bool):  # recipes say "hflip: true" as for classification
                object.__setattr__(self, f, 0.5 if v and f != "mosaic_prob" else float(v))
            elif not 0.0 <= v <= 1.0:
                raise ConfigError(f"augmentation {f} is a probability in [0, 1], got {v}")
        for f in ("scale", "brightness", "contrast"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"augmentation {f} must be in [0, 1), got {getattr(self, f)}")
        lo, hi = self.mosaic_scale
        if not (0.0 <= self.translate <= 0.5 and 0.0 < lo <= hi and 0 <= self.fill <= 255):
            raise ConfigError(
                f"augmentation needs translate in [0, 0.5], 0 < mosaic_scale[0] <= [1], fill in 0-255; "
                f"got translate={self.translate}, mosaic_scale={self.mosaic_scale}, fill={self.fill}"
            )

    @classmethod
    def from_dict(cls, options: dict) -> DetAugment:
        """Build from recipe fields, refusing unknown keys (ConfigError naming them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown detection augmentation option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)

    def __call__(self, image: Tensor, boxes: Tensor, labels: Tensor) -> Triple:
        image, boxes, labels = as_triple(image, boxes, labels)
        h, w = image.shape[-2:]
        bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w), clamping_mode=None)
        area = box_area(boxes)
        if _coin(self.hflip):
            image, bb = F.horizontal_flip(image), F.horizontal_flip(bb)
        if _coin(self.vflip):
            image, bb = F.vertical_flip(image), F.vertical_flip(bb)
        if _coin(self.rot90):
            angle = 90 * int(torch.randint(1, 4, ()).item()) if h == w else 180
            image, bb = F.rotate(image, angle, expand=True), F.rotate(bb, angle, expand=True)
        if self.scale > 0 or self.translate > 0:
            s = _uniform(1 - self.scale, 1 + self.scale)
            shift = [round(_uniform(-self.translate, self.translate) * n) for n in (w, h)]
            args = {"angle": 0.0, "translate": shift, "scale": s, "shear": [0.0, 0.0]}
            image = F.affine(image, **args, interpolation=F.InterpolationMode.BILINEAR, fill=self.fill)
            bb = F.affine(bb, **args)
            area = area * s * s
        if self.brightness > 0:
            image = F.adjust_brightness(image, _uniform(1 - self.brightness, 1 + self.brightness))
        if self.contrast > 0:
            image = F.adjust_contrast(image, _uniform(1 - self.contrast, 1 + self.contrast))
        h, w = image.shape[-2:]
        boxes, labels = keep_boxes(bb.as_subclass(Tensor), area, labels, (0, 0, w, h), self)
        return image, boxes, labels


def as_triple(image, boxes, labels) -> Triple:
    """(image, boxes, labels) as uint8 (C, H, W), float32 (n, 4) and int64 (n,) tensors (arrays are copied).

    Raises:
        DataError: the image is not uint8 (C, H, W), or boxes and labels disagree in number.
    """
    image, boxes, labels = (torch.tensor(x) if isinstance(x, np.ndarray) else x for x in (image, boxes, labels))
    boxes, labels = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise DataError(f"augmentation expects a uint8 image (C, H, W), got {image.dtype} {tuple(image.shape)}")
    boxes = boxes.reshape(-1, 4)
    if len(boxes) != len(labels):
        raise DataError(f"{len(boxes)} boxes but {len(labels)} labels")
    return image, boxes, labels


def box_area(boxes: Tensor) -> Tensor:
    """Areas (n,) of xyxy boxes (n, 4), 0 for inverted ones."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def keep_boxes(
    boxes: Tensor, ref_area: Tensor, labels: Tensor, window: Sequence[float], rule: DetAugment
) -> tuple[Tensor, Tensor]:
    """Clip ``boxes`` (n, 4) to ``window`` (x0, y0, x1, y1) and drop those ``rule`` calls degenerate.

    A box is kept when its clipped area is at least ``rule.min_area_ratio * ref_area`` (its area
    before clipping) and both clipped sides are at least ``rule.min_side_px``.

    Returns:
        (boxes float32 (m, 4), labels int64 (m,)), m <= n, in the original order.
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    clipped = torch.stack(
        [boxes[:, 0].clamp(x0, x1), boxes[:, 1].clamp(y0, y1), boxes[:, 2].clamp(x0, x1), boxes[:, 3].clamp(y0, y1)], 1
    )
    side = torch.minimum(clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1])
    keep = (side >= rule.min_side_px) & (box_area(clipped) >= rule.min_area_ratio * ref_area)
    return clipped[keep].float(), labels[keep]


def mosaic(
    samples: Sequence[tuple[Tensor, Tensor, Tensor]],
    out_size: Sequence[int],
    rng: np.random.Generator,
    rule: DetAugment | None = None,
) -> Triple:
    """Join 4 images around a random centre into one image of ``out_size`` (YOLOv4 mosaic).

    The centre ``(cx, cy)`` is drawn uniformly from the middle half of the canvas
    ``[W / 4, 3 W / 4] x [H / 4, 3 H / 4]``; image i (top-left, top-right, bottom-left, bottom-right)
    is resized by a factor drawn from ``rule.mosaic_scale`` and placed with its inner corner on the
    centre, cut at the canvas edge; what no image covers is ``rule.fill`` grey. Boxes move with their
    image, are clipped to its tile and dropped by :func:`keep_boxes`. Source: Bochkovskiy et al. 2020
    (YOLOv4, "Mosaic"), the YOLOv4 pruning paper §2.1.1; the placement is YOLOv5's ``load_mosaic``
    without its 2x canvas (the output is the input size directly).

    Args:
        samples: 4 triples (image uint8 (C, h_i, w_i), boxes (n_i, 4) in that image's pixels, labels (n_i,)),
            all with the same C.
        out_size: (H, W) of the result in pixels.
        rng: the generator of the centre and the scales.
        rule: scale range, fill and box-dropping thresholds (default :class:`DetAugment` ()).

    Returns:
        (image uint8 (C, H, W), boxes float32 (m, 4) in its pixels, labels int64 (m,)).

    Raises:
        DataError: not 4 samples, or their channel counts differ.
    """
    rule = rule or DetAugment()
    if len(samples) != 4:
        raise DataError(f"mosaic needs 4 images, got {len(samples)}")
    triples = [as_triple(*s) for s in samples]
    if len({t[0].shape[0] for t in triples}) != 1:
        raise DataError(f"mosaic images differ in channels: {[tuple(t[0].shape) for t in triples]}")
    big_h, big_w = int(out_size[0]), int(out_size[1])
    canvas = torch.full((triples[0][0].shape[0], big_h, big_w), rule.fill, dtype=torch.uint8)
    cx, cy = int(rng.uniform(0.25, 0.75) * big_w), int(rng.uniform(0.25, 0.75) * big_h)
    all_boxes, all_labels = [], []
    for q, (image, boxes, labels) in enumerate(triples):
        s = float(rng.uniform(*rule.mosaic_scale))
        h, w = image.shape[-2:]
        th, tw = max(1, round(h * s)), max(1, round(w * s))
        bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w), clamping_mode=None)
        image, bb = F.resize(image, [th, tw], antialias=True), F.resize(bb, [th, tw])
        left, top = q in (0, 2), q in (0, 1)
        x0, y0 = (cx - tw if left else cx), (cy - th if top else cy)  # the tile's corner on the canvas
        win = (0 if left else cx, 0 if top else cy, cx if left else big_w, cy if top else big_h)  # its quadrant
        px0, py0, px1, py1 = max(x0, win[0]), max(y0, win[1]), min(x0 + tw, win[2]), min(y0 + th, win[3])
        if px1 <= px0 or py1 <= py0:
            continue
        canvas[:, py0:py1, px0:px1] = image[:, py0 - y0 : py1 - y0, px0 - x0 : px1 - x0]
        moved = bb.as_subclass(Tensor) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        kept = keep_boxes(moved, box_area(moved), labels, (px0, py0, px1, py1), rule)
        all_boxes.append(kept[0])
        all_labels.append(kept[1])
    boxes = torch.cat(all_boxes) if all_boxes else torch.zeros((0, 4))
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.int64)
    return canvas, boxes, labels


def _coin(p: float) -> bool:
    return p > 0 and bool(torch.rand(()) < p)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))
