"""From a detection data folder to split, decoded arrays with boxes in input pixels, and the training Dataset.

The split, ``splits.csv``, the decoded-image cache and the leak check are classification's
(:func:`defectlite.data.dataset.prepare_index`), run on a view of the detection index in which each
image's label is its dominant box class (:meth:`DetIndex.dominant_labels`; images without boxes
form a class of their own, written as :data:`NEGATIVE_CLASS`). So ``splits.csv`` keeps its columns
``split,label,class,path,sha1`` and stratifies by the dominant class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from defectlite.data.dataset import SplitData, prepare_index
from defectlite.data.readers import DatasetIndex, Sample
from defectlite.data.splits import read_splits_csv, write_splits_csv
from defectlite.errors import ConfigError, DataError
from defectlite.tasks.detect.augment import DetAugment, mosaic
from defectlite.tasks.detect.readers import DetIndex, DetSample, read_detection

NEGATIVE_CLASS = "(no boxes)"  # the splits.csv class of images without boxes (label = len(classes))


@dataclass
class DetSplitData(SplitData):
    """The decoded images of a detection data set with their boxes and split.

    Inherits :class:`~defectlite.data.dataset.SplitData` (``images`` uint8 (N, C, H, W) at the input
    size, ``splits``, ``paths``, ``leaks``, ``skipped``, :meth:`counts`, :meth:`norm_stats` ...);
    ``labels`` there is each image's dominant box class (``len(classes)`` for an image without boxes).

    Attributes:
        boxes: per image, float32 (n_i, 4) ``x1, y1, x2, y2`` in input pixels.
        box_labels: per image, int64 (n_i,) indices into ``classes``.
        orig_sizes: per image, its original (H, W) in pixels (to map predictions back).
    """

    boxes: list[np.ndarray] = field(default_factory=list)
    box_labels: list[np.ndarray] = field(default_factory=list)
    orig_sizes: list[tuple[int, int]] = field(default_factory=list)

    def det_subset(self, split: str) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """(images uint8 (n, C, H, W), boxes per image, box labels per image) of one split."""
        idx = np.flatnonzero(self.splits == split)
        return self.images[idx], [self.boxes[i] for i in idx], [self.box_labels[i] for i in idx]


def split_view(index: DetIndex) -> DatasetIndex:
    """``index`` as a classification index: one :class:`Sample` per image, labelled by its dominant class.

    Its classes are ``index.classes + [NEGATIVE_CLASS]``; used to split, write and read ``splits.csv``.
    """
    view = [Sample(s.path, y, s.split) for s, y in zip(index.samples, index.dominant_labels())]
    return DatasetIndex(index.root, index.format, [*index.classes, NEGATIVE_CLASS], view)


def write_det_splits(path: Path, index: DetIndex, splits: Sequence[str], digests: Sequence[str]) -> None:
    """Write the detection split to ``splits.csv`` (columns split, label, class, path, sha1; label = dominant class)."""
    write_splits_csv(path, split_view(index), splits, digests)


def read_det_splits(path: Path, index: DetIndex) -> tuple[list[DetSample], list[str]]:
    """Read a detection ``splits.csv`` back against the current ``index``.

    Returns:
        (samples of ``index`` in the file's order with ``split`` set from the file, digests).

    Raises:
        DataError: see :func:`defectlite.data.splits.read_splits_csv`; the file lists an image that
            ``index`` does not hold (no annotation now, or left out as bad).
    """
    rows, digests = read_splits_csv(path, index.root, [*index.classes, NEGATIVE_CLASS])
    by_path = {s.path: s for s in index.samples}
    missing = [str(r.path) for r in rows if r.path not in by_path]
    if missing:
        raise DataError(f"{path}: lists {len(missing)} image(s) without a usable annotation now, e.g. {missing[0]}")
    return [replace(by_path[r.path], split=r.split) for r in rows], digests


def prepare_detection(
    root: str | Path,
    *,
    size: Sequence[int],
    format: str = "auto",
    classes: Sequence[str] | None = None,
    splits_csv: Path | None = None,
    skip_bad: bool = False,
    **options: Any,
) -> DetSplitData:
    """Read, split and decode a detection data set; boxes are scaled to the input size.

    Images are stretched to ``size`` by :func:`~defectlite.data.transforms.to_uint8` (no letterbox), so a
    box scales by ``(W_in / W, H_in / H)``. The split is the folder's own when it has one (YOLO split
    folders, COCO ``instances_<split>.json``), else stratified by dominant class; ``splits_csv`` is read
    back when it exists, else written (see :func:`defectlite.data.dataset.prepare_index`).

    Args:
        root, format, classes, skip_bad: see :func:`defectlite.tasks.detect.readers.read_detection` (``skip_bad``
            also leaves unreadable images out).
        size: (H, W) input size in pixels.
        splits_csv: the run's split file.
        options: ``channels``, ``ratios``, ``seed``, ``drop_leaks``, ``train_fraction``, ``progress`` of
            :func:`defectlite.data.dataset.prepare_index`.

    Raises:
        DataError: see :func:`read_detection`, :func:`read_det_splits` and
            :func:`defectlite.data.cache.decode_images`.
    """
    index = read_detection(root, format, skip_bad=skip_bad, classes=classes)
    if splits_csv is not None and splits_csv.is_file():
        read_det_splits(splits_csv, index)  # the file must match the annotations before prepare_index uses it
    base = prepare_index(split_view(index), size=size, splits_csv=splits_csv, skip_bad=skip_bad, **options)
    by_path = {s.path.relative_to(index.root).as_posix(): s for s in index.samples}
    samples = [by_path[p] for p in base.paths]
    h_in, w_in = int(size[0]), int(size[1])
    scale = [np.array([w_in / s.width, h_in / s.height] * 2, np.float32) for s in samples]
    return DetSplitData(
        **{**vars(base), "classes": index.classes, "skipped": index.skipped + base.skipped},
        boxes=[s.boxes * k for s, k in zip(samples, scale)],
        box_labels=[s.labels.copy() for s in samples],
        orig_sizes=[(s.height, s.width) for s in samples],
    )


class DetDataset(Dataset):
    """Images with boxes in memory; items built by mosaic with probability ``mosaic_prob``, then augmented.

    Items: (image uint8 tensor (C, H, W), boxes float32 (n, 4) in input pixels, labels int64 (n,)).
    Randomness comes from the torch generator (per DataLoader worker, seeded by ``torch.manual_seed``).
    ``mosaic_prob`` may be set between epochs (e.g. 0 for the last ones); DataLoader workers see the
    change when they start, i.e. each epoch unless ``persistent_workers=True``.

    Args:
        images: uint8 (N, C, H, W).
        boxes, labels: per image, (n_i, 4) boxes in input pixels and (n_i,) class indices.
        augment: per-item augmentation (None: none); also the drop rule and tile scales of the mosaic.
        mosaic_prob: default ``augment.mosaic_prob`` (0 without ``augment``).
    """

    def __init__(
        self,
        images: np.ndarray,
        boxes: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        augment: DetAugment | None = None,
        mosaic_prob: float | None = None,
    ) -> None:
        if not len(images) == len(boxes) == len(labels):
            raise DataError(f"{len(images)} images, {len(boxes)} box arrays and {len(labels)} label arrays")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.boxes = [torch.tensor(np.asarray(b, np.float32).reshape(-1, 4)) for b in boxes]
        self.labels = [torch.tensor(np.asarray(y, np.int64).reshape(-1)) for y in labels]
        self.augment = augment
        self.mosaic_prob = (augment.mosaic_prob if augment else 0.0) if mosaic_prob is None else mosaic_prob

    @property
    def mosaic_prob(self) -> float:
        """Probability that an item is a mosaic of itself and 3 random others (settable, in [0, 1])."""
        return self._mosaic_prob

    @mosaic_prob.setter
    def mosaic_prob(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"mosaic_prob must be in [0, 1], got {p}")
        self._mosaic_prob = float(p)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        item = (self.images[i], self.boxes[i], self.labels[i])
        if self._mosaic_prob > 0 and bool(torch.rand(()) < self._mosaic_prob):
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            others = [(self.images[j], self.boxes[j], self.labels[j]) for j in rng.integers(0, len(self), 3)]
            item = mosaic([item, *others], self.images.shape[-2:], rng, self.augment)
        return self.augment(*item) if self.augment is not None else item


def collate(batch: Sequence[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack a list of :class:`DetDataset` items.

    Returns:
        images uint8 (N, C, H, W); targets float32 (M, 6), rows ``[image_index_in_batch, class, x1, y1, x2, y2]``
        in input pixels, M = all boxes of the batch.
    """
    images = torch.stack([img for img, _, _ in batch])
    rows = [
        torch.cat([torch.full((len(y), 1), float(i)), y.float()[:, None], b.float()], 1)
        for i, (_, b, y) in enumerate(batch)
    ]
    return images, torch.cat(rows) if rows else torch.zeros((0, 6))
