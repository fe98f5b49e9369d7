"""From a data folder to split, decoded arrays: what every command of a run trains and evaluates on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from defectlite.data.cache import decode_images
from defectlite.data.readers import DatasetIndex, read_dataset
from defectlite.data.splits import (
    Leak,
    assign_splits,
    find_leaks,
    read_splits_csv,
    subsample_train,
    write_splits_csv,
)
from defectlite.data.transforms import channel_stats

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """The decoded images of a data set with their split, ready for training and evaluation.

    Attributes:
        root: data folder; ``paths`` are relative to it.
        format: the layout read (``folder`` or ``neu``).
        classes: class names (``labels`` index them).
        images: uint8 (N, C, H, W).
        labels: int64 (N,).
        splits: ``"train"``/``"val"``/``"test"`` per image (N,).
        paths: relative path per image.
        leaks: val/test images byte-identical to an image of an earlier split.
        dropped_leaks: True when the leaked images were removed from val/test.
        skipped: (path, reason) of unreadable files left out (``skip_bad``).
    """

    root: Path
    format: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    paths: list[str]
    leaks: list[Leak] = field(default_factory=list)
    dropped_leaks: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (n, C, H, W) uint8, labels (n,)) of one split."""
        m = self.splits == split
        return self.images[m], self.labels[m]

    def split_paths(self, split: str) -> list[str]:
        """Relative paths of one split, in the order of :meth:`subset`."""
        return [p for p, s in zip(self.paths, self.splits) if s == split]

    def counts(self) -> dict[str, int]:
        """Images per split."""
        return {s: int((self.splits == s).sum()) for s in ("train", "val", "test")}

    def norm_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) of the training images, in [0, 1] units."""
        return channel_stats(self.subset("train")[0])


def prepare(
    root: str | Path,
    *,
    size: Sequence[int],
    channels: int = 1,
    format: str = "auto",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    splits_csv: Path | None = None,
    drop_leaks: bool = False,
    skip_bad: bool = False,
    train_fraction: float = 1.0,
    progress: bool = True,
) -> SplitData:
    """Read, split and decode a data set.

    If ``splits_csv`` exists it is read back (the run's split, reused); otherwise the split is made
    (deterministic, stratified, or the folder's own) and written there.

    Args:
        root: data folder (any layout :func:`defectlite.data.readers.read_dataset` knows).
        size: (H, W) input size in pixels.
        channels: 1 (grey) or 3 (RGB).
        format: ``auto``, ``folder`` or ``neu``.
        ratios: train/val/test fractions for folders that are not pre-split.
        seed: split seed.
        splits_csv: the run's split file (read if present, else written).
        drop_leaks: remove val/test images byte-identical to a training image.
        skip_bad: leave unreadable images out (listed in ``skipped``) instead of failing.
        train_fraction: keep only this stratified share of the training split (seeded by ``seed``;
            ``splits.csv`` still lists the full split).

    Raises:
        DataError: see the readers, :func:`defectlite.data.cache.decode_images` and
            :func:`defectlite.data.splits.read_splits_csv`.
    """
    return prepare_index(
        read_dataset(root, format),
        size=size,
        channels=channels,
        ratios=ratios,
        seed=seed,
        splits_csv=splits_csv,
        drop_leaks=drop_leaks,
        skip_bad=skip_bad,
        train_fraction=train_fraction,
        progress=progress,
    )


def prepare_index(
    index: DatasetIndex,
    *,
    size: Sequence[int],
    channels: int = 1,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    splits_csv: Path | None = None,
    drop_leaks: bool = False,
    skip_bad: bool = False,
    train_fraction: float = 1.0,
    progress: bool = True,
) -> SplitData:
    """:func:`prepare` on an index already read: split (or read back ``splits_csv``), decode, find leaks.

    Shared with detection, which passes each image's dominant box class as its label
    (:func:`defectlite.data.det_dataset.prepare_detection`). Arguments and errors: see :func:`prepare`.
    """
    if splits_csv is not None and splits_csv.is_file():
        samples, _ = read_splits_csv(splits_csv, index.root, index.classes)
        split_of = [s.split for s in samples]
    else:
        samples, split_of = index.samples, None
    decoded = decode_images([s.path for s in samples], size, channels, skip_bad=skip_bad, progress=progress)
    kept = [samples[i] for i in decoded.kept]
    if split_of is None:
        kept_index = DatasetIndex(index.root, index.format, index.classes, kept)
        split_of = assign_splits(kept_index, ratios, seed)
        if splits_csv is not None:
            write_splits_csv(splits_csv, kept_index, split_of, decoded.digests)
    else:
        split_of = [split_of[i] for i in decoded.kept]
    paths = [s.path.relative_to(index.root).as_posix() for s in kept]
    leaks = find_leaks(paths, split_of, decoded.digests)
    if leaks:
        log.warning("%d val/test image(s) are byte-identical to images of an earlier split", len(leaks))
    keep = np.array(subsample_train([s.label for s in kept], split_of, train_fraction, seed))
    if drop_leaks and leaks:
        leaked = {leak.path for leak in leaks}
        keep &= np.array([p not in leaked for p in paths])
    return SplitData(
        root=index.root,
        format=index.format,
        classes=index.classes,
        images=decoded.images[keep],
        labels=np.array([s.label for s in kept], dtype=np.int64)[keep],
        splits=np.array(split_of)[keep],
        paths=[p for p, k in zip(paths, keep) if k],
        leaks=leaks,
        dropped_leaks=bool(drop_leaks and leaks),
        skipped=decoded.skipped,
    )


class ArrayDataset(Dataset):
    """uint8 images in memory with an optional per-sample augmentation.

    Items: (image uint8 tensor (C, H, W), label int). Normalisation happens per batch, in the loop,
    with :func:`defectlite.data.transforms.normalize`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]
